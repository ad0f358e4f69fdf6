"""lmms-eval hooks of the embedded shapes tasks (tasks/shapes/): shapes_pope_*, shapes_gqa, shapes_mme.

Scoring is the real benchmarks' (harness.scoring: LLaVA's GQA and POPE rules, MME's official
calculation.py), so the two families name and compute their metrics alike. Every metric is a
percentage (0-100). `process_results` returns the sample's score fields under each metric key
(through `Scorer.fields`: a failed sample scores 0); each metric's aggregation turns the list into
the split's value. Records carry `score` (1.0 correct, 0.0 wrong), the field lmms-eval reads for
its CLT standard error.

Prompts must match `harness.shapes.data.prompt` (the embedded model was trained on them; a test
checks it). lmms-eval loads this file by path; it imports only the harness's pure scoring modules.
"""

from harness.hooks import doc_image as doc_to_visual  # noqa: F401 - `!function` hooks
from harness.hooks import lazy_images  # noqa: F401
from harness.scoring import gqa, mme, pope

SHORT_ANSWER_PROMPT = "\nAnswer the question using a single word or phrase."
POPE_METRICS = pope.METRICS
MME_CATEGORIES = ("existence", "count", "position", "color")

# The scoring rules of the real benchmarks (harness.scoring), under the names the training script uses.
pope_parse = pope.parse
pope_metrics = pope.metrics
gqa_normalize = gqa.normalize
mme_parse = mme.parse


def mme_category_scores(records: list[dict]) -> dict[str, dict[str, float]]:
    """MME acc, acc+ and score per category (records: question_id or image, category, score)."""
    return mme.category_scores([{"image": r.get("image", r.get("question_id")), **r} for r in records])


# ---- prompts ---------------------------------------------------------------------------------
def short_answer_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """pope and gqa prompt: the question + "\\nAnswer the question using a single word or phrase."."""
    return doc["question"].strip() + SHORT_ANSWER_PROMPT


def mme_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """mme prompt: the question as stored (it ends with "Please answer yes or no.")."""
    return doc["question"].strip()


# ---- pope ------------------------------------------------------------------------------------
def pope_process_results(doc: dict, results: list[str]) -> dict[str, dict]:
    record = pope.SCORER.fields(doc, results[0])
    return {metric: record for metric in POPE_METRICS}


def _pope(records: list[dict], metric: str) -> float:
    return pope.records_metrics(records)[metric]


def pope_accuracy(records: list[dict]) -> float:
    return _pope(records, "accuracy")


def pope_precision(records: list[dict]) -> float:
    return _pope(records, "precision")


def pope_recall(records: list[dict]) -> float:
    return _pope(records, "recall")


def pope_f1(records: list[dict]) -> float:
    return _pope(records, "f1")


def pope_yes_ratio(records: list[dict]) -> float:
    return _pope(records, "yes_ratio")


# ---- gqa -------------------------------------------------------------------------------------
def gqa_process_results(doc: dict, results: list[str]) -> dict[str, dict]:
    return {"exact_match": gqa.SCORER.fields(doc, results[0])}


def gqa_exact_match(records: list[dict]) -> float:
    return gqa.accuracy(records) if records else 0.0


# ---- mme -------------------------------------------------------------------------------------
def mme_process_results(doc: dict, results: list[str]) -> dict[str, dict]:
    record = mme.SCORER.fields(doc, results[0])
    return {metric: record for metric in ("total",) + MME_CATEGORIES}


def mme_total(records: list[dict]) -> float:
    """Sum of the category scores present (max 200 per category, 800 for all four)."""
    return sum(scores["score"] for scores in mme.category_scores(records).values())


def _mme_category(records: list[dict], category: str) -> float:
    """A category's score; NaN if no record of that category was evaluated (e.g. under limit)."""
    scores = mme.category_scores(records, warn=False)
    return scores[category]["score"] if category in scores else float("nan")


def mme_existence(records: list[dict]) -> float:
    return _mme_category(records, "existence")


def mme_count(records: list[dict]) -> float:
    return _mme_category(records, "count")


def mme_position(records: list[dict]) -> float:
    return _mme_category(records, "position")


def mme_color(records: list[dict]) -> float:
    return _mme_category(records, "color")
