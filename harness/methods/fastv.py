"""FastV: keep the image tokens the last prompt token attends to most, after layer K-1.

Chen et al., "An Image is Worth 1/2 Tokens After Layer 2", ECCV 2024. This is the KV-cache variant:
pruning happens once in prefill; the cache of layers >= K holds only the kept tokens. As in the official
code (which decodes through HF's Llama), a generated token takes the global next position at every
layer (`decode_positions=global`).
"""

from __future__ import annotations

from harness.budget import check_budget
from harness.methods.base import (
    DECODE_POSITIONS,
    Selection,
    StageContext,
    check_choice,
    top_k_in_order,
)
from harness.schedule import Schedule, Stage


def fastv_keep(budget: int, num_layers: int, num_image_tokens: int, k_layer: int, method: str = "fastv") -> int:
    """Image tokens kept after layer K-1 so that the mean over all layers is the budget.

    `k = round((L*B - K*V) / (L - K))`: 166 / 98 / 30 for 192 / 128 / 64 on LLaVA-1.5-7B.
    """
    if not 1 <= k_layer < num_layers:
        raise ValueError(f"{method}: K={k_layer} must be within 1..{num_layers - 1}")
    keep = round((num_layers * budget - k_layer * num_image_tokens) / (num_layers - k_layer))
    lowest = -(-k_layer * num_image_tokens // num_layers)  # ceil(K*V / L)
    if keep < 0:
        raise ValueError(
            f"budget={budget} is unreachable for {method} with K={k_layer} on {num_layers} layers: its "
            f"{k_layer} unpruned layers alone average {k_layer * num_image_tokens / num_layers:.1f} image tokens "
            f"(allowed: {lowest}..{num_image_tokens})"
        )
    return keep


class FastV:
    """FastV (ECCV 2024): last-row attention at layer K-1, mean over heads, top-k, original positions.

    Args:
        budget: average retained image tokens over all layers.
        K: the first pruned layer (scores come from layer K-1).
        positions: "original" (official) or "compact" (kept tokens renumbered).
        decode_positions: "global" (official: HF's next position) or "per_layer" (each layer's cache length).
    """

    name = "fastv"
    query_rows = "last"
    positions = "original"

    def __init__(self, budget: int, K: int = 2, positions: str = "original", decode_positions: str = "global"):
        self.budget = budget
        self.K = K
        self.positions = check_choice("method.positions", positions, ("original", "compact"))
        self.decode_positions = check_choice("method.decode_positions", decode_positions, DECODE_POSITIONS)

    def schedule(self, num_layers: int, num_image_tokens: int) -> Schedule:
        budget = check_budget(self.budget, num_image_tokens)
        return Schedule([Stage(self.K - 1, fastv_keep(budget, num_layers, num_image_tokens, self.K, self.name))], budget)

    def select(self, ctx: StageContext) -> Selection:
        start, end = ctx.image_span
        scores = ctx.attn[:, -1, start:end].mean(0)  # [H, 1, N] -> [V] mean over heads
        return Selection(keep=top_k_in_order(scores, ctx.stage.keep))
