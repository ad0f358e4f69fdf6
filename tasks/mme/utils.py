"""lmms-eval hooks of the MME task (tasks/mme/mme.yaml, lmms-eval 0.7.3).

The prompt follows lmms-eval's own task; scoring is `harness.scoring.mme` (the official calculation.py,
shared with the embedded shapes_mme). `process_results` returns the sample's score fields (the dict that
also goes into samples.jsonl) under every metric key, through `Scorer.fields`: a failed sample (response
`FAILED_RESPONSE`) scores 0.

lmms-eval loads this file by path once per `!function` reference; it imports only the harness's
pure scoring modules.
"""

from harness.hooks import doc_image as doc_to_visual  # noqa: F401 - `!function` hooks
from harness.hooks import lazy_images  # noqa: F401
from harness.scoring import mme

MME_HUB_SUFFIX = " Please answer yes or no."
MME_CATEGORIES = mme.PERCEPTION + mme.COGNITION


def mme_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """The hub question with its " Please answer yes or no." replaced by the post prompt (as lmms-eval)."""
    question = doc["question"].strip()
    kwargs = lmms_eval_specific_kwargs or {}
    if kwargs.get("pre_prompt") or kwargs.get("post_prompt"):
        question = question.replace(MME_HUB_SUFFIX, "")
    return f"{kwargs.get('pre_prompt', '')}{question}{kwargs.get('post_prompt', '')}"


def mme_process_results(doc: dict, results: list[str]) -> dict[str, dict]:
    """The score fields (harness.scoring.mme: the official calculation.py) under the summary metrics
    and the question's category metric."""
    if doc["category"] not in MME_CATEGORIES:
        raise ValueError(f"MME category {doc['category']!r} is unknown (allowed: {MME_CATEGORIES})")
    record = mme.SCORER.fields(doc, results[0])
    return {"mme_perception": record, "mme_cognition": record, "mme_total": record, f"mme_{doc['category']}": record}


def mme_aggregate_perception(records: list[dict]) -> float:
    """Sum of the perception category scores (max 2000)."""
    return mme.totals(records)["perception"]


def mme_aggregate_cognition(records: list[dict]) -> float:
    """Sum of the cognition category scores (max 800)."""
    return mme.totals(records)["cognition"]


def mme_aggregate_total(records: list[dict]) -> float:
    """Perception + cognition."""
    return mme.totals(records)["total"]


def mme_aggregate_category(records: list[dict]) -> float:
    """Score (acc + acc+) of the one category these records belong to."""
    (category, scores), *rest = mme.category_scores(records, warn=False).items()
    if rest:
        raise ValueError(f"expected records of one MME category, got {[category] + [name for name, _ in rest]}")
    return scores["score"]
