"""lmms-eval hooks for the embedded shapes tasks: shapes_pope_*, shapes_gqa, shapes_mme.

The parsing and metric helpers at the top are pure functions (no lmms-eval import) so the real
GQA/MME/POPE tasks can share them. Every metric is a percentage (0-100). `process_results`
returns one per-sample record under each metric key; each metric's aggregation function turns the
list of records into the split's value. Records carry `score` (1.0 correct, 0.0 wrong), the field
lmms-eval reads for its CLT standard error.

Prompts must match `harness.shapes.data.prompt` (the embedded model was trained on them; a test
checks it). This file does not import `harness` because lmms-eval loads it by file path.
"""

import io
import re
from collections import defaultdict

from PIL import Image

SHORT_ANSWER_PROMPT = "\nAnswer the question using a single word or phrase."
POPE_METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio")
MME_CATEGORIES = ("existence", "count", "position", "color")


# ---- pure helpers ----------------------------------------------------------------------------
def pope_parse(response: str) -> str:
    """LLaVA's POPE rule (llava/eval/eval_pope.py): "no" if the first sentence says no/No/not.

    Keep the text before the first ".", drop commas, split on spaces; the answer is "no" if the
    words contain "no", "No" or "not", else "yes".
    """
    text = response.split(".")[0].replace(",", "")
    words = text.split(" ")
    return "no" if ("no" in words or "No" in words or "not" in words) else "yes"


def pope_metrics(predictions: list[str], targets: list[str]) -> dict[str, float]:
    """POPE metrics with "yes" as the positive class, in percent.

    Args:
        predictions: parsed predictions, "yes"/"no".
        targets: ground truth, "yes"/"no".

    Returns:
        accuracy, precision, recall, f1, yes_ratio (share of "yes" predictions); a ratio with a
        zero denominator is 0.
    """
    pairs = list(zip(predictions, targets))
    tp = sum(p == "yes" and t == "yes" for p, t in pairs)
    fp = sum(p == "yes" and t == "no" for p, t in pairs)
    fn = sum(p == "no" and t == "yes" for p, t in pairs)
    correct = sum(p == t for p, t in pairs)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    n = len(pairs)
    return {
        "accuracy": 100.0 * correct / n if n else 0.0,
        "precision": 100.0 * precision,
        "recall": 100.0 * recall,
        "f1": 100.0 * f1,
        "yes_ratio": 100.0 * sum(p == "yes" for p in predictions) / n if n else 0.0,
    }


def gqa_normalize(text: str) -> str:
    """Lower-case, drop punctuation and the articles a/an/the, squeeze spaces: "The Red." -> "red"."""
    text = re.sub(r"[^\w\s]", " ", text.lower())
    return " ".join(word for word in text.split() if word not in ("a", "an", "the"))


def mme_parse(response: str) -> str:
    """lmms-eval's MME parser (from Otter): "yes", "no" or "other"."""
    answer = response.lower().strip().replace(".", "")
    if answer in ("yes", "no"):
        return answer
    if len(answer) == 1:
        return {"y": "yes", "n": "no"}.get(answer, "other")
    prefix = answer[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


def mme_category_scores(records: list[dict]) -> dict[str, dict[str, float]]:
    """MME acc, acc+ and score per category.

    Args:
        records: dicts with question_id (the image), category and score (1.0 correct).

    Returns:
        category -> {"acc": % questions correct, "acc_plus": % images with every question
        correct, "score": acc + acc_plus}.
    """
    by_category: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        by_category[record["category"]][record["question_id"]].append(record["score"])
    result = {}
    for category, images in by_category.items():
        scores = [s for image_scores in images.values() for s in image_scores]
        acc = 100.0 * sum(scores) / len(scores)
        acc_plus = 100.0 * sum(all(s == 1.0 for s in image_scores) for image_scores in images.values()) / len(images)
        result[category] = {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus}
    return result


# ---- shared hooks ----------------------------------------------------------------------------
def lazy_images(dataset):
    """Keep images encoded in the docs (`process_docs`): lmms-eval iterates every doc again when it
    scores, and an undecodable image must fail only the sample that reads it (in `doc_to_visual`)."""
    import datasets

    return dataset.cast_column("image", datasets.Image(decode=False))


def doc_to_visual(doc: dict) -> list:
    """The image as RGB, from a decoded image or an encoded `{"bytes", "path"}` dict."""
    image = doc["image"]
    if isinstance(image, dict):
        image = Image.open(io.BytesIO(image["bytes"])) if image.get("bytes") else Image.open(image["path"])
    return [image.convert("RGB")]


def short_answer_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """pope and gqa prompt: the question + "\\nAnswer the question using a single word or phrase."."""
    return doc["question"].strip() + SHORT_ANSWER_PROMPT


def mme_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """mme prompt: the question as stored (it ends with "Please answer yes or no.")."""
    return doc["question"].strip()


# ---- pope ------------------------------------------------------------------------------------
def pope_process_results(doc: dict, results: list[str]) -> dict[str, dict]:
    prediction = pope_parse(results[0])
    target = doc["answer"].lower().strip()
    record = {
        "question_id": doc["question_id"],
        "prediction": prediction,
        "target": target,
        "score": float(prediction == target),
    }
    return {metric: record for metric in POPE_METRICS}


def _pope(records: list[dict], metric: str) -> float:
    return pope_metrics([r["prediction"] for r in records], [r["target"] for r in records])[metric]


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
    correct = gqa_normalize(results[0]) == gqa_normalize(doc["answer"])
    return {"exact_match": {"question_id": doc["id"], "score": float(correct)}}


def gqa_exact_match(records: list[dict]) -> float:
    return 100.0 * sum(r["score"] for r in records) / len(records) if records else 0.0


# ---- mme -------------------------------------------------------------------------------------
def mme_process_results(doc: dict, results: list[str]) -> dict[str, dict]:
    target = doc["answer"].lower().strip().replace(".", "")
    record = {
        "question_id": doc["question_id"],
        "category": doc["category"],
        "score": float(mme_parse(results[0]) == target),
    }
    return {metric: record for metric in ("total",) + MME_CATEGORIES}


def mme_total(records: list[dict]) -> float:
    """Sum of the category scores present (max 200 per category, 800 for all four)."""
    return sum(scores["score"] for scores in mme_category_scores(records).values())


def _mme_category(records: list[dict], category: str) -> float:
    """A category's score; NaN if no record of that category was evaluated (e.g. under limit)."""
    scores = mme_category_scores(records)
    return scores[category]["score"] if category in scores else float("nan")


def mme_existence(records: list[dict]) -> float:
    return _mme_category(records, "existence")


def mme_count(records: list[dict]) -> float:
    return _mme_category(records, "count")


def mme_position(records: list[dict]) -> float:
    return _mme_category(records, "position")


def mme_color(records: list[dict]) -> float:
    return _mme_category(records, "color")
