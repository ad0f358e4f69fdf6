"""Random: uniformly random image tokens, seeded per sample. The floor to beat.

Two stages to draw at: `stage: fastv` (default) keeps a random subset after layer K-1 with FastV's
schedule; `stage: prellm` keeps a random B of the V projected image features before the language model
(every layer sees B tokens at contiguous positions), the random counterpart of VisionZip and pool.
"""

from __future__ import annotations

import torch

from harness.budget import check_budget
from harness.methods.base import PreLLMContext, Selection, StageContext, check_choice
from harness.methods.fastv import fastv_keep
from harness.schedule import Schedule, Stage


class Random:
    """Keep a uniformly random subset of image tokens (after layer K-1 as FastV, or before the LLM).

    Args:
        budget: average retained image tokens over all layers.
        K: the first pruned layer (`stage=fastv`).
        positions: "original" (default) or "compact" (renumbered, as SparseVLM/AdaptInfer do); `stage=fastv`.
        stage: "fastv" (FastV's schedule, in the LLM) or "prellm" (before the LLM, all layers see B tokens).
    """

    name = "random"
    query_rows = None
    needs_vision_attention = False

    def __init__(self, budget: int, K: int = 2, positions: str = "original", stage: str = "fastv"):
        self.budget = budget
        self.K = K
        self.positions = check_choice("method.positions", positions, ("original", "compact"))
        self.stage = check_choice("method.stage", stage, ("fastv", "prellm"))
        self.pre_llm = self.stage == "prellm"  # per instance: the engine reads it to pick its path

    def schedule(self, num_layers: int, num_image_tokens: int) -> Schedule:
        budget = check_budget(self.budget, num_image_tokens)
        if self.pre_llm:
            return Schedule([], budget)
        return Schedule([Stage(self.K - 1, fastv_keep(budget, num_layers, num_image_tokens, self.K, self.name))], budget)

    def select(self, ctx: StageContext) -> Selection:
        start, end = ctx.image_span
        perm = torch.randperm(end - start, generator=ctx.generator)
        return Selection(keep=torch.sort(perm[: ctx.stage.keep]).values)

    def reduce(self, ctx: PreLLMContext) -> Selection:
        perm = torch.randperm(ctx.features.shape[0], generator=ctx.generator)  # [V]
        return Selection(keep=torch.sort(perm[: ctx.budget]).values.to(ctx.features.device))
