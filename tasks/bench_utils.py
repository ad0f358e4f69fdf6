"""Prompts and lmms-eval hooks for MMBench, ScienceQA-IMG, TextVQA, VQAv2 and SEED-Bench.

Prompts are LLaVA-1.5's evaluation prompts; scoring is `harness.scoring` (one rule per
benchmark, as the tools that published LLaVA-1.5 numbers come from). `process_results` returns the
sample's score fields (the dict that also goes into samples.jsonl) under every metric key, through
`Scorer.fields`: a failed sample (response `FAILED_RESPONSE`) scores 0; the aggregations return
percentages (0-100).

lmms-eval loads this file by path once per `!function` reference; it imports only the harness's
pure scoring modules.
"""


import datasets
from PIL import Image

from harness.images import lazy_images, open_image  # noqa: F401 - lazy_images is a `!function` hook
from harness.scoring import mmbench, scienceqa, seedbench, vqa

SHORT_ANSWER = "\nAnswer the question using a single word or phrase."
LETTER_ANSWER = "\nAnswer with the option's letter from the given choices directly."


def doc_to_visual(doc: dict) -> list[Image.Image]:
    """The doc's image (none for a text-only doc)."""
    return [] if doc.get("image") is None else [open_image(doc["image"])]


# ---------------------------------------------------------------- MMBench (EN / CN dev)

def mmbench_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """LLaVA's prompt: hint, question, "A. ..." lines, then the letter instruction in the doc's language."""
    return mmbench.prompt(doc, (lmms_eval_specific_kwargs or {}).get("lang", "en"))


def mmbench_process_results(doc: dict, results: list[str]) -> dict[str, dict]:
    record = mmbench.SCORER.fields(doc, results[0])
    return {"circular_accuracy": record, "single_accuracy": record}


def mmbench_aggregate_circular(records: list[dict]) -> float:
    """CircularEval: % of questions right in every rotation of their options."""
    return mmbench.circular_accuracy(records)


def mmbench_aggregate_single(records: list[dict]) -> float:
    """% of the original (unrotated) questions right."""
    return mmbench.single_accuracy(records)


# ---------------------------------------------------------------- ScienceQA-IMG

def scienceqa_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """`Context: <hint>\\n` (when there is one), the question, "A. ..." lines, the letter instruction."""
    context = f"Context: {doc['hint']}\n" if doc.get("hint") else ""
    choices = "\n".join(f"{letter}. {choice}" for letter, choice in zip(scienceqa.LETTERS, doc["choices"]))
    post = (lmms_eval_specific_kwargs or {}).get("post_prompt", LETTER_ANSWER)
    return f"{context}{doc['question']}\n{choices}{post}"


def scienceqa_doc_to_target(doc: dict) -> str:
    return scienceqa.LETTERS[int(doc["answer"])]


def scienceqa_process_results(doc: dict, results: list[str]) -> dict[str, dict]:
    return {"accuracy": scienceqa.SCORER.fields(doc, results[0])}


def scienceqa_aggregate_accuracy(records: list[dict]) -> float:
    return scienceqa.accuracy(records)


# ---------------------------------------------------------------- TextVQA (val) and VQAv2 (val, test-dev)

def textvqa_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """`<question>[\\nReference OCR token: t1, t2, ...]\\nAnswer the question using a single word or phrase.`

    The OCR line is LLaVA-1.5's setting (`ocr: true`, the default of tasks/textvqa_val.yaml); a
    question without OCR tokens gets no line.
    """
    kwargs = lmms_eval_specific_kwargs or {}
    ocr = kwargs.get("ocr", True)
    if ocr not in (True, False):
        raise ValueError(f"textvqa ocr={ocr!r} is not allowed (allowed: true, false)")
    tokens = doc.get("ocr_tokens") or []
    ocr_line = f"\nReference OCR token: {', '.join(tokens)}" if ocr and tokens else ""
    return f"{doc['question']}{ocr_line}{kwargs.get('post_prompt', SHORT_ANSWER)}"


def textvqa_process_results(doc: dict, results: list[str]) -> dict[str, dict]:
    return {"vqa_accuracy": vqa.TEXTVQA_SCORER.fields(doc, results[0])}


def vqav2_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """`<question>\\nAnswer the question using a single word or phrase.`"""
    return f"{doc['question']}{(lmms_eval_specific_kwargs or {}).get('post_prompt', SHORT_ANSWER)}"


def vqav2_process_results(doc: dict, results: list[str]) -> dict[str, dict]:
    return {"vqa_accuracy": vqa.VQAV2_SCORER.fields(doc, results[0])}


def vqav2_testdev_process_results(doc: dict, results: list[str]) -> dict[str, dict]:
    return {"submitted": vqa.VQAV2_SCORER.fields(doc, results[0])}


def vqa_aggregate_accuracy(records: list[dict]) -> float:
    """Mean VQA accuracy, %."""
    return vqa.accuracy(records)


def vqa_aggregate_submitted(records: list[dict]) -> float:
    """Number of answered questions (test-dev is scored by the evaluation server)."""
    return float(len(records))


# ---------------------------------------------------------------- SEED-Bench (image questions)

def seedbench_image_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """Only the image questions (`data_type == "image"`), images left encoded."""
    dataset = dataset.filter(lambda kind: kind == "image", input_columns=["data_type"])
    return dataset.cast_column("image", datasets.Sequence(datasets.Image(decode=False)))


def seedbench_doc_to_visual(doc: dict) -> list[Image.Image]:
    """The question's (first) image."""
    return [open_image(doc["image"][0])]


def seedbench_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """LLaVA's prompt: the question, "A. ..." to "D. ..." lines, the letter instruction."""
    choices = "\n".join(f"{letter}. {doc['choice_' + letter.lower()]}" for letter in "ABCD")
    return f"{doc['question']}\n{choices}{LETTER_ANSWER}"


def seedbench_process_results(doc: dict, results: list[str]) -> dict[str, dict]:
    record = seedbench.SCORER.fields(doc, results[0])
    return {"seed_image": record, **{f"seed_{name}": record for name in seedbench.QUESTION_TYPES.values()}}


def seedbench_aggregate_image(records: list[dict]) -> float:
    """% correct over all image questions."""
    return seedbench.accuracy(records)


def _seed_type(name: str):
    def aggregate(records: list[dict]) -> float:
        return seedbench.accuracy(records, name)

    aggregate.__doc__ = f"% correct on the {name} questions (NaN when none was evaluated)."
    return aggregate


for _name in seedbench.QUESTION_TYPES.values():
    globals()[f"seedbench_aggregate_{_name}"] = _seed_type(_name)
