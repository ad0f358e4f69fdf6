"""lmms-eval hooks of the MMBench tasks (tasks/mmbench/mmbench_{en,cn}_dev.yaml, lmms-eval 0.7.3).

The prompt is LLaVA-1.5's (`harness.scoring.mmbench.prompt`); scoring is `harness.scoring.mmbench`
(VLMEvalKit's rule-based matching, CircularEval). `process_results` returns the sample's score fields
(the dict that also goes into samples.jsonl) under every metric key, through `Scorer.fields`: a failed
sample (response `FAILED_RESPONSE`) scores 0; the aggregations return percentages (0-100).

lmms-eval loads this file by path once per `!function` reference; it imports only the harness's
pure scoring modules.
"""

from harness.hooks import doc_image_if_any as doc_to_visual  # noqa: F401 - `!function` hooks
from harness.hooks import lazy_images  # noqa: F401
from harness.scoring import mmbench


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
