"""lmms-eval hooks of the POPE tasks (tasks/pope/pope_{adversarial,popular,random}.yaml, lmms-eval 0.7.3).

The prompt follows lmms-eval's own task; scoring is `harness.scoring.pope` (LLaVA's eval_pope.py, shared
with the embedded shapes_pope_*). `process_results` returns the sample's score fields (the dict that also
goes into samples.jsonl) under every metric key, through `Scorer.fields`: a failed sample (response
`FAILED_RESPONSE`) is wrong; each metric's aggregation turns the list into a percentage (0-100).

lmms-eval loads this file by path once per `!function` reference; it imports only the harness's
pure scoring modules.
"""

from harness.hooks import doc_image as doc_to_visual  # noqa: F401 - `!function` hooks
from harness.hooks import lazy_images, prompt  # noqa: F401
from harness.scoring import pope


def pope_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """`<question>\\nAnswer the question using a single word or phrase.`"""
    return prompt(doc["question"].strip(), lmms_eval_specific_kwargs)


def pope_process_results(doc: dict, results: list[str]) -> dict[str, dict]:
    """The score fields (harness.scoring.pope: LLaVA's eval_pope.py) under every POPE metric."""
    record = pope.SCORER.fields(doc, results[0])
    return {f"pope_{name}": record for name in pope.METRICS}


def pope_aggregate_accuracy(records: list[dict]) -> float:
    """% of predictions equal to the label."""
    return pope.records_metrics(records)["accuracy"]


def pope_aggregate_precision(records: list[dict]) -> float:
    """% of "yes" predictions that are right."""
    return pope.records_metrics(records)["precision"]


def pope_aggregate_recall(records: list[dict]) -> float:
    """% of "yes" labels predicted "yes"."""
    return pope.records_metrics(records)["recall"]


def pope_aggregate_f1(records: list[dict]) -> float:
    """Harmonic mean of precision and recall (the headline POPE number)."""
    return pope.records_metrics(records)["f1"]


def pope_aggregate_yes_ratio(records: list[dict]) -> float:
    """% of predictions that are "yes"."""
    return pope.records_metrics(records)["yes_ratio"]
