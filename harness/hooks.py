"""What the lmms-eval task hooks of every benchmark share (tasks/<benchmark>/utils.py): images and
LLaVA-1.5's answer-format prompts.

lmms-eval resolves `!function utils.f` to the `utils.py` beside the YAML, so each benchmark's hooks
import from here what they share instead of from each other.
"""

from __future__ import annotations

import io

import datasets
from PIL import Image

SHORT_ANSWER = "\nAnswer the question using a single word or phrase."
LETTER_ANSWER = "\nAnswer with the option's letter from the given choices directly."


def lazy_images(dataset: datasets.Dataset) -> datasets.Dataset:
    """Keep images encoded in the docs (`process_docs`): lmms-eval iterates every doc again when it
    scores, and an undecodable image must fail only the sample that reads it (in `doc_to_visual`)."""
    return dataset.cast_column("image", datasets.Image(decode=False))


def open_image(value) -> Image.Image:
    """An RGB PIL image from a decoded image or an encoded `{"bytes", "path"}` dict."""
    if isinstance(value, dict):
        value = Image.open(io.BytesIO(value["bytes"])) if value.get("bytes") else Image.open(value["path"])
    return value.convert("RGB")


def doc_image(doc: dict) -> list[Image.Image]:
    """The doc's own image (MME, POPE, the shapes tasks); a doc without one fails its sample."""
    return [open_image(doc["image"])]


def doc_image_if_any(doc: dict) -> list[Image.Image]:
    """The doc's image, none for a text-only doc (MMBench, ScienceQA, TextVQA, VQAv2)."""
    return [] if doc.get("image") is None else [open_image(doc["image"])]


def prompt(question: str, kwargs: dict | None) -> str:
    """`pre_prompt + question + post_prompt` from a task's lmms_eval_specific_kwargs (post: SHORT_ANSWER)."""
    kwargs = kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{question}{kwargs.get('post_prompt', SHORT_ANSWER)}"
