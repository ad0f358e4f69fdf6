"""lmms-eval hooks of the GQA task (tasks/gqa/gqa.yaml, lmms-eval 0.7.3).

The prompt follows lmms-eval's own task; scoring is `harness.scoring.gqa` (LLaVA's rule, shared with the
embedded shapes_gqa). `process_results` returns the sample's score fields (the dict that also goes into
samples.jsonl) through `Scorer.fields`: a failed sample (response `FAILED_RESPONSE`) scores 0; the
aggregation turns the list into a percentage (0-100).

lmms-eval loads this file by path once per `!function` reference; it imports only the harness's
pure scoring modules.
"""

import os
from functools import lru_cache

import datasets
from PIL import Image

from harness.hooks import prompt
from harness.scoring import gqa

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
    return prompt(doc["question"], lmms_eval_specific_kwargs)


def gqa_process_results(doc: dict, results: list[str]) -> dict[str, dict]:
    """The sample's score fields (harness.scoring.gqa: LLaVA's rule) under `exact_match`."""
    return {"exact_match": gqa.SCORER.fields(doc, results[0])}


def gqa_aggregate_exact_match(records: list[dict]) -> float:
    """% exact matches."""
    return gqa.accuracy(records)
