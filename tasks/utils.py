"""Prompts, answer parsers and metrics for the GQA, MME and POPE tasks (lmms-eval 0.7.3 hooks).

Prompts follow lmms-eval's own tasks, scoring follows the LLaVA-1.5 evaluation scripts, and every
metric is a percentage (0-100). The pure helpers (`gqa_normalize`, `mme_parse`, `mme_scores`,
`pope_parse`, `pope_metrics`) are what the tests check by hand.

lmms-eval loads this file once per `!function` reference (by file path, not as a package), so it
imports nothing from the harness.
"""

import io
import os
import string
from collections import defaultdict
from functools import lru_cache

import datasets
from PIL import Image

POST_PROMPT = "\nAnswer the question using a single word or phrase."


def _prompt(question: str, kwargs: dict | None) -> str:
    """`pre_prompt + question + post_prompt` from the task's lmms_eval_specific_kwargs."""
    kwargs = kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{question}{kwargs.get('post_prompt', POST_PROMPT)}"


def lazy_images(dataset: datasets.Dataset) -> datasets.Dataset:
    """Keep images encoded in the docs (`process_docs`): lmms-eval iterates every doc again when it
    scores, and an undecodable image must fail only the sample that reads it (in `doc_to_visual`)."""
    return dataset.cast_column("image", datasets.Image(decode=False))


def open_image(value) -> Image.Image:
    """An RGB PIL image from a decoded image or an encoded `{"bytes", "path"}` dict."""
    if isinstance(value, dict):
        value = Image.open(io.BytesIO(value["bytes"])) if value.get("bytes") else Image.open(value["path"])
    return value.convert("RGB")


def doc_to_visual(doc: dict) -> list[Image.Image]:
    """The doc's own image (MME, POPE)."""
    return [open_image(doc["image"])]


# ---------------------------------------------------------------- GQA (testdev-balanced)

GQA_HUB = "lmms-lab/GQA"
GQA_IMAGES_CONFIG = "testdev_balanced_images"
GQA_SPLIT = "testdev"
ARTICLES = {"a", "an", "the"}
_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


@lru_cache(maxsize=2)
def gqa_images(data: str) -> tuple[datasets.Dataset, dict[str, int]]:
    """GQA's image table and its row index by image id.

    Args:
        data: The GQA data location. A hub id reads config `testdev_balanced_images`; a local
            directory reads `<data>/testdev_balanced_images` (saved with `save_to_disk`).

    Returns:
        (images dataset with columns id, image; {image id: row}).
    """
    if os.path.isdir(data):
        images = datasets.load_from_disk(os.path.join(data, GQA_IMAGES_CONFIG))[GQA_SPLIT]
    else:
        images = datasets.load_dataset(data, GQA_IMAGES_CONFIG, split=GQA_SPLIT)
    return images, {image_id: row for row, image_id in enumerate(images["id"])}


def gqa_doc_to_visual(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> list[Image.Image]:
    """The question's image, looked up by `imageId` in the images of `lmms_eval_specific_kwargs["data"]`."""
    images, row_of = gqa_images((lmms_eval_specific_kwargs or {}).get("data", GQA_HUB))
    return [images[row_of[doc["imageId"]]]["image"].convert("RGB")]


def gqa_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """`<question>\\nAnswer the question using a single word or phrase.`"""
    return _prompt(doc["question"], lmms_eval_specific_kwargs)


def gqa_normalize(text: str) -> str:
    """Lower-case, drop punctuation and the articles a/an/the, collapse spaces ("The Red." -> "red")."""
    words = text.lower().translate(_NO_PUNCTUATION).split()
    return " ".join(word for word in words if word not in ARTICLES)


def gqa_process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """Exact match (0 or 100) of the normalised response and answer."""
    return {"exact_match": 100.0 * (gqa_normalize(results[0]) == gqa_normalize(doc["answer"]))}


# ---------------------------------------------------------------- MME

MME_PERCEPTION = (
    "existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR",
)
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
MME_HUB_SUFFIX = " Please answer yes or no."


def mme_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """The hub question with its " Please answer yes or no." replaced by the post prompt (as lmms-eval)."""
    question = doc["question"].strip()
    kwargs = lmms_eval_specific_kwargs or {}
    if kwargs.get("pre_prompt") or kwargs.get("post_prompt"):
        question = question.replace(MME_HUB_SUFFIX, "")
    return f"{kwargs.get('pre_prompt', '')}{question}{kwargs.get('post_prompt', '')}"


def mme_parse(response: str) -> str:
    """lmms-eval's MME parser: "yes", "no" or "other".

    Lower-cased, stripped, dots removed; exactly "yes"/"no" (or "y"/"n"), else "yes"/"no" within
    the first four characters ("yes" first), else "other" (always wrong).
    """
    text = response.lower().strip().replace(".", "")
    if text in ("yes", "no"):
        return text
    if len(text) == 1:
        return {"y": "yes", "n": "no"}.get(text, "other")
    if "yes" in text[:4]:
        return "yes"
    if "no" in text[:4]:
        return "no"
    return "other"


def mme_scores(records: list[dict]) -> dict:
    """MME scores from per-question records.

    Args:
        records: Dicts with `question_id` (the image: two questions share it), `category`, `correct`.

    Returns:
        {"categories": {category: {"acc", "acc_plus", "score"}}, "perception", "cognition", "total"}:
        acc = % questions correct, acc_plus = % images with all their questions correct,
        score = acc + acc_plus; perception / cognition = sums of the category scores present.
    """
    by_image = defaultdict(lambda: defaultdict(list))  # category -> question_id -> [correct]
    for record in records:
        by_image[record["category"]][record["question_id"]].append(bool(record["correct"]))
    categories = {}
    for category, images in by_image.items():
        answers = [c for image in images.values() for c in image]
        acc = 100.0 * sum(answers) / len(answers)
        acc_plus = 100.0 * sum(all(image) for image in images.values()) / len(images)
        categories[category] = {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus}
    perception = sum(c["score"] for name, c in categories.items() if name in MME_PERCEPTION)
    cognition = sum(c["score"] for name, c in categories.items() if name in MME_COGNITION)
    return {"categories": categories, "perception": perception, "cognition": cognition, "total": perception + cognition}


def mme_process_results(doc: dict, results: list[str]) -> dict[str, dict]:
    """One record per question, under the three summary metrics and the question's category metric."""
    category = doc["category"]
    if category not in MME_PERCEPTION + MME_COGNITION:
        raise ValueError(f"MME category {category!r} is unknown (allowed: {MME_PERCEPTION + MME_COGNITION})")
    correct = mme_parse(results[0]) == doc["answer"].lower().strip().replace(".", "")
    record = {"question_id": doc["question_id"], "category": category, "correct": correct}
    return {"mme_perception": record, "mme_cognition": record, "mme_total": record, f"mme_{category}": record}


def mme_aggregate_perception(records: list[dict]) -> float:
    """Sum of the perception category scores (max 2000)."""
    return mme_scores(records)["perception"]


def mme_aggregate_cognition(records: list[dict]) -> float:
    """Sum of the cognition category scores (max 800)."""
    return mme_scores(records)["cognition"]


def mme_aggregate_total(records: list[dict]) -> float:
    """Perception + cognition."""
    return mme_scores(records)["total"]


def mme_aggregate_category(records: list[dict]) -> float:
    """Score (acc + acc+) of the one category these records belong to."""
    (category, scores), *rest = mme_scores(records)["categories"].items()
    if rest:
        raise ValueError(f"expected records of one MME category, got {[category] + [name for name, _ in rest]}")
    return scores["score"]


# ---------------------------------------------------------------- POPE (adversarial / popular / random)

def pope_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """`<question>\\nAnswer the question using a single word or phrase.`"""
    return _prompt(doc["question"].strip(), lmms_eval_specific_kwargs)


def pope_parse(response: str) -> str:
    """LLaVA's POPE rule (llava/eval/eval_pope.py): "yes" or "no".

    Keep the text before the first ".", drop commas, split on spaces; "no" if a word is
    "no", "No" or "not", otherwise "yes".
    """
    first_sentence = response.split(".")[0].replace(",", "")
    words = first_sentence.split(" ")
    return "no" if ("no" in words or "No" in words or "not" in words) else "yes"


def pope_metrics(preds: list[str], labels: list[str]) -> dict[str, float]:
    """POPE metrics with "yes" as the positive class, as percentages.

    Args:
        preds: Parsed predictions, "yes" or "no".
        labels: Ground truth, "yes" or "no".

    Returns:
        {"accuracy", "precision", "recall", "f1", "yes_ratio"}; yes_ratio is the share of
        predictions that are "yes". An undefined ratio (no positives) is 0.
    """
    pairs = list(zip(preds, labels, strict=True))
    tp = sum(p == "yes" and l == "yes" for p, l in pairs)
    fp = sum(p == "yes" and l == "no" for p, l in pairs)
    tn = sum(p == "no" and l == "no" for p, l in pairs)
    fn = sum(p == "no" and l == "yes" for p, l in pairs)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": 100.0 * (tp + tn) / len(pairs),
        "precision": 100.0 * precision,
        "recall": 100.0 * recall,
        "f1": 100.0 * f1,
        "yes_ratio": 100.0 * (tp + fp) / len(pairs),
    }


def pope_process_results(doc: dict, results: list[str]) -> dict[str, dict]:
    """One record (parsed prediction, label) per question, under every POPE metric."""
    record = {"question_id": doc["question_id"], "pred": pope_parse(results[0]), "label": doc["answer"].lower().strip()}
    return {f"pope_{name}": record for name in ("accuracy", "precision", "recall", "f1", "yes_ratio")}


def _pope(records: list[dict]) -> dict[str, float]:
    return pope_metrics([r["pred"] for r in records], [r["label"] for r in records])


def pope_aggregate_accuracy(records: list[dict]) -> float:
    """% of predictions equal to the label."""
    return _pope(records)["accuracy"]


def pope_aggregate_precision(records: list[dict]) -> float:
    """% of "yes" predictions that are right."""
    return _pope(records)["precision"]


def pope_aggregate_recall(records: list[dict]) -> float:
    """% of "yes" labels predicted "yes"."""
    return _pope(records)["recall"]


def pope_aggregate_f1(records: list[dict]) -> float:
    """Harmonic mean of precision and recall (the headline POPE number)."""
    return _pope(records)["f1"]


def pope_aggregate_yes_ratio(records: list[dict]) -> float:
    """% of predictions that are "yes"."""
    return _pope(records)["yes_ratio"]
