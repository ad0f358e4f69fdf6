"""Blind: the language model never sees the image (the image block is removed before the LLM).

The floor below every pruning method: how much of a benchmark a model answers from the text alone. The
budget is ignored and recorded as 0 (as vanilla records 576). With nothing of the image
kept, the engine skips the vision tower, so blind's prefill is the text-only prefill.
"""

from __future__ import annotations

import torch

from harness.methods.base import PreLLMContext, Selection
from harness.schedule import Schedule


class Blind:
    """No image tokens at all: the prompt the LLM sees is the text around the image block."""

    name = "blind"
    pre_llm = True
    needs_vision_attention = False
    ignores_budget = True

    def __init__(self, budget: int | None = None):
        self.budget = budget  # ignored: blind always keeps no image token

    def schedule(self, num_layers: int, num_image_tokens: int) -> Schedule:
        return Schedule([], 0)

    def reduce(self, ctx: PreLLMContext) -> Selection:
        return Selection(keep=torch.zeros(0, dtype=torch.long, device=ctx.features.device))
