"""Random: uniformly random image tokens at FastV's stage, seeded per sample. The floor to beat."""

from __future__ import annotations

import torch

from harness.budget import check_budget
from harness.methods.base import Selection, Stage, StageContext
from harness.methods.fastv import fastv_keep


class Random:
    """Keep a uniformly random subset of image tokens after layer K-1 (same schedule as FastV).

    Args:
        budget: average retained image tokens over all layers.
        K: the first pruned layer.
        positions: "original" (default) or "compact" (renumbered, as SparseVLM/AdaptInfer do).
    """

    name = "random"
    query_rows = None

    def __init__(self, budget: int, K: int = 2, positions: str = "original"):
        self.budget = budget
        self.K = K
        self.positions = positions

    def schedule(self, num_layers: int, num_image_tokens: int) -> list[Stage]:
        budget = check_budget(self.budget, num_image_tokens)
        return [Stage(self.K - 1, fastv_keep(budget, num_layers, num_image_tokens, self.K, self.name))]

    def select(self, ctx: StageContext) -> Selection:
        start, end = ctx.image_span
        perm = torch.randperm(end - start, generator=ctx.generator)
        return Selection(keep=torch.sort(perm[: ctx.stage.keep]).values)
