"""Pool: average-pool the 24x24 grid of projected image features to B tokens before the language model.

A training-free spatial-pooling baseline (no scores at all): `adaptive_avg_pool2d` of the row-major
24x24 feature grid to an h x w grid with h * w = B, fed to the LLM in row-major order. Pre-LLM: every
decoder layer sees the B pooled tokens, at contiguous positions.

Grid rule: h = the smallest divisor of B with h >= sqrt(B), w = B / h (as close to square as B allows,
h >= w): 192 -> 16x12, 128 -> 16x8, 64 -> 8x8, 576 -> 24x24 (the identity: equals vanilla). A budget
whose grid does not fit the feature grid (h > 24) or is more elongated than `max_aspect` (h / w; e.g. a
prime B > 4 gives B x 1) is a configuration error that names the nearest allowed budgets.
"""

from __future__ import annotations

import math

import torch

from harness.budget import check_budget
from harness.methods.base import PreLLMContext, Selection
from harness.schedule import Schedule

MAX_ASPECT = 4.0


def pool_grid(budget: int) -> tuple[int, int]:
    """(h, w) with h * w = budget, h the smallest divisor of budget with h >= sqrt(budget)."""
    h = next(d for d in range(math.isqrt(budget), budget + 1) if budget % d == 0 and d * d >= budget)
    return h, budget // h


def grid_fits(budget: int, side: int, max_aspect: float) -> bool:
    h, w = pool_grid(budget)
    return h <= side and h / w <= max_aspect


def check_pool_budget(budget: int, side: int, max_aspect: float = MAX_ASPECT, method: str = "pool") -> tuple[int, int]:
    """The pooling grid of a budget, or a ValueError naming the nearest budgets whose grid fits."""
    h, w = pool_grid(budget)
    if grid_fits(budget, side, max_aspect):
        return h, w
    allowed = [b for b in range(1, side * side + 1) if grid_fits(b, side, max_aspect)]
    below = max((b for b in allowed if b < budget), default=None)
    above = min((b for b in allowed if b > budget), default=None)
    nearby = ", ".join(f"{b} ({'x'.join(map(str, pool_grid(b)))})" for b in (below, above) if b is not None)
    why = f"exceeds the {side}x{side} feature grid" if h > side else f"is more elongated than {max_aspect:g}:1"
    raise ValueError(
        f"budget={budget} has no {method} grid: its closest-to-square grid {h}x{w} {why} (nearby allowed: {nearby})"
    )


class Pool:
    """Adaptive average pooling of the projected feature grid to B tokens (pre-LLM baseline).

    Args:
        budget: image tokens the language model sees (all layers); needs an h x w grid (see module doc).
        max_aspect: the most elongated grid allowed (h / w).
    """

    name = "pool"
    pre_llm = True
    difficult_reference = True  # the naive baseline: "difficult" samples are the ones it gets wrong
    needs_vision_attention = False
    needs_square_grid = True  # the image block is one side x side patch grid (LLaVA-1.5)

    def __init__(self, budget: int, max_aspect: float = MAX_ASPECT):
        self.budget = budget
        self.max_aspect = float(max_aspect)

    def schedule(self, num_layers: int, num_image_tokens: int) -> Schedule:
        budget = check_budget(self.budget, num_image_tokens)
        side = math.isqrt(num_image_tokens)
        if side * side != num_image_tokens:
            raise ValueError(f"{self.name} needs a square image grid, got {num_image_tokens} image tokens")
        return Schedule([], budget, {"grid": check_pool_budget(budget, side, self.max_aspect, self.name)})

    def reduce(self, ctx: PreLLMContext) -> Selection:
        features = ctx.features  # [V, d], row-major over the side x side patch grid
        side = math.isqrt(features.shape[0])
        h, w = pool_grid(ctx.budget)
        grid = features.T.reshape(1, -1, side, side)  # [1, d, side, side]
        pooled = torch.nn.functional.adaptive_avg_pool2d(grid, (h, w))  # [1, d, h, w]
        merged = pooled[0].flatten(1).T  # [h*w, d], row-major
        return Selection(keep=torch.zeros(0, dtype=torch.long, device=features.device), merged=merged)
