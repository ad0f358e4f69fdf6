"""lmms-eval hooks of the VQAv2 tasks (tasks/vqav2/vqav2_{val,testdev}.yaml, lmms-eval 0.7.3).

The prompt is LLaVA-1.5's; scoring is `harness.scoring.vqa` (GT-Vision-Lab's vqaEval.py on LLaVA's
normalised answer; test-dev is scored by the evaluation server). `process_results` returns the sample's
score fields (the dict that also goes into samples.jsonl) through `Scorer.fields`: a failed sample
(response `FAILED_RESPONSE`) scores 0; the aggregation returns a percentage (0-100).

lmms-eval loads this file by path once per `!function` reference; it imports only the harness's
pure scoring modules.
"""

from harness.hooks import SHORT_ANSWER
from harness.hooks import doc_image_if_any as doc_to_visual  # noqa: F401 - `!function` hooks
from harness.hooks import lazy_images  # noqa: F401
from harness.scoring import vqa


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
