"""lmms-eval hooks of the ScienceQA-IMG task (tasks/scienceqa/scienceqa_img.yaml, lmms-eval 0.7.3).

The prompt is LLaVA-1.5's; scoring is `harness.scoring.scienceqa` (LLaVA main's eval_science_qa.py).
`process_results` returns the sample's score fields (the dict that also goes into samples.jsonl) through
`Scorer.fields`: a failed sample (response `FAILED_RESPONSE`) scores 0; the aggregation returns a
percentage (0-100).

lmms-eval loads this file by path once per `!function` reference; it imports only the harness's
pure scoring modules.
"""

from harness.hooks import LETTER_ANSWER
from harness.hooks import doc_image_if_any as doc_to_visual  # noqa: F401 - `!function` hooks
from harness.hooks import lazy_images  # noqa: F401
from harness.scoring import scienceqa


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
