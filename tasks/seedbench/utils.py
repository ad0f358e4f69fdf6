"""lmms-eval hooks of the SEED-Bench image task (tasks/seedbench/seedbench_img.yaml, lmms-eval 0.7.3).

The prompt is LLaVA-1.5's; scoring is `harness.scoring.seedbench` (LLaVA's convert_seed_for_submission.py:
the answer letter exactly). `process_results` returns the sample's score fields (the dict that also goes
into samples.jsonl) under every metric key, through `Scorer.fields`: a failed sample (response
`FAILED_RESPONSE`) scores 0; the aggregations return percentages (0-100).

lmms-eval loads this file by path once per `!function` reference; it imports only the harness's
pure scoring modules.
"""

import datasets
from PIL import Image

from harness.hooks import LETTER_ANSWER, open_image
from harness.scoring import seedbench


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
