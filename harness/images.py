"""Image helpers shared by the lmms-eval task hooks in tasks/ (real, new-benchmark and embedded families)."""

from __future__ import annotations

import io

import datasets
from PIL import Image


def lazy_images(dataset: datasets.Dataset) -> datasets.Dataset:
    """Keep images encoded in the docs (`process_docs`): lmms-eval iterates every doc again when it
    scores, and an undecodable image must fail only the sample that reads it (in `doc_to_visual`)."""
    return dataset.cast_column("image", datasets.Image(decode=False))


def open_image(value) -> Image.Image:
    """An RGB PIL image from a decoded image or an encoded `{"bytes", "path"}` dict."""
    if isinstance(value, dict):
        value = Image.open(io.BytesIO(value["bytes"])) if value.get("bytes") else Image.open(value["path"])
    return value.convert("RGB")
