"""Prompts and lmms-eval hooks for the GQA, MME and POPE tasks (lmms-eval 0.7.3).

Prompts follow lmms-eval's own tasks; scoring is `harness.scoring` (one rule per benchmark, as the
official tools, shared with the embedded shapes tasks). `process_results` returns the sample's
score fields (the same dict that goes into samples.jsonl) under every metric key, through
`Scorer.fields`: a failed sample (response `FAILED_RESPONSE`) scores 0; each metric's aggregation
turns the list into a percentage (0-100).

lmms-eval loads this file by path once per `!function` reference; it imports only the harness's
pure scoring modules.
"""

import os
from functools import lru_cache

import datasets
from PIL import Image

from harness.images import lazy_images, open_image  # noqa: F401 - lazy_images is a `!function` hook
from harness.scoring import gqa, mme, pope

POST_PROMPT = "\nAnswer the question using a single word or phrase."


def _prompt(question: str, kwargs: dict | None) -> str:
    """`pre_prompt + question + post_prompt` from the task's lmms_eval_specific_kwargs."""
    kwargs = kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{question}{kwargs.get('post_prompt', POST_PROMPT)}"


def doc_to_visual(doc: dict) -> list[Image.Image]:
    """The doc's own image (MME, POPE)."""
    return [open_image(doc["image"])]


# ---------------------------------------------------------------- GQA (testdev-balanced)

GQA_HUB = "lmms-lab/GQA"
GQA_IMAGES_CONFIG = "testdev_balanced_images"
GQA_SPLIT = "testdev"


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


def gqa_process_results(doc: dict, results: list[str]) -> dict[str, dict]:
    """The sample's score fields (harness.scoring.gqa: LLaVA's rule) under `exact_match`."""
    return {"exact_match": gqa.SCORER.fields(doc, results[0])}


def gqa_aggregate_exact_match(records: list[dict]) -> float:
    """% exact matches."""
    return gqa.accuracy(records)


# ---------------------------------------------------------------- MME

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


# ---------------------------------------------------------------- POPE (adversarial / popular / random)

def pope_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """`<question>\\nAnswer the question using a single word or phrase.`"""
    return _prompt(doc["question"].strip(), lmms_eval_specific_kwargs)


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
