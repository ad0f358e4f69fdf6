"""PyramidDrop: drop image tokens in stages, scored by the last prompt token just before a stage layer.

Xing et al., "PyramidDrop: Accelerating Your Large Vision-Language Models via Pyramid Visual Redundancy
Reduction", CVPR 2025 (code: Cooperx521/PyramidDrop, `llava/model/modeling_llama_pdrop.py`).

Before each stage layer s the official code applies layer s's own `input_layernorm`, `q_proj`, `k_proj`
and RoPE to the layer's *input*, takes the softmax attention of the last instruction token (at inference:
the last prompt token, index `prompt_len + image_tokens - 1`) over the current sequence, averages over
heads, keeps the top `int(V * ratio_i)` image tokens in original order, and only then runs layer s: the
stage layer already sees the reduced set (`Stage(..., before=True)` in the engine). Counts follow a
geometric schedule `keep_i = V * lam**(i + 1)` (576 -> 288/144/72 for lam = 0.5).

Positions: the official code renumbers the remaining tokens contiguously after each stage
(`position_ids[i, :cur_len] = arange(cur_len)`; in decode it subtracts the dropped counts), so
`positions: compact` is the default; `original` keeps the RoPE positions of the kept tokens. In decode the
engine gives the new token the global next position (docs/methods.md, "Positions"); the official code instead
subtracts the dropped counts at each stage layer. Counts are rounded (`round`); the official code truncates
(`int`), which is the same for ratio 0.5.
"""

from __future__ import annotations

import math

from harness.budget import check_budget
from harness.methods.base import Selection, StageContext, check_choice, top_k_in_order
from harness.schedule import Schedule, Stage, bisect, realized_budget

PAPER_LAYERS = [8, 16, 24]  # official scripts: --layer_list '[8,16,24]' --image_token_ratio_list "[0.5,0.25,0.125]"
PAPER_RATIO = 0.5
MATCHED_LAYERS = [2, 8, 16]  # the paper's matched-budget setting for LLaVA-1.5-7B (192 / 128 / 64 tokens)


def geometric_stages(layers: list[int], ratio: float, num_image_tokens: int) -> list[Stage]:
    """Stages before `layers` keeping `round(V * ratio**(i + 1))` image tokens at stage i."""
    return [Stage(layer, round(num_image_tokens * ratio ** (i + 1)), before=True) for i, layer in enumerate(layers)]


def solve_ratio(budget: int, layers: list[int], num_layers: int, num_image_tokens: int,
                method: str = "pdrop") -> float:
    """The keep ratio lam whose geometric schedule realizes `budget` (+-1), by bisection on lam in [0, 1] (`bisect`).

    The realized budget is non-decreasing in lam: from `layers[0] * V / L` (everything dropped at the first
    stage) to V (lam = 1).

    Raises:
        ValueError: if the budget is below what the layers before the first stage alone average.
    """

    def realized(ratio: float) -> float:
        return realized_budget(geometric_stages(layers, ratio, num_image_tokens), num_layers, num_image_tokens)

    best = bisect(realized, budget, upper_on_tie=True)  # realized(1) = V: the search stays within [0, 1]
    if abs(realized(best) - budget) > 1:
        lowest = realized(0.0)
        raise ValueError(
            f"budget={budget} is unreachable for {method} with stages before layers {layers} on {num_layers} layers: "
            f"the {layers[0]} layers before the first stage alone average {lowest:.1f} image tokens "
            f"(allowed: {math.ceil(lowest - 1)}..{num_image_tokens})"
        )
    return best


class PDrop:
    """PyramidDrop (CVPR 2025): last-prompt-token attention from each stage layer's own q/k on its input.

    Args:
        budget: average retained image tokens over all layers.
        schedule: "matched" (stages before `layers`, default 2/8/16, with the keep ratio solved so the realized
            budget is `budget` +-1) or "paper" (stages before 8/16/24 with ratio 0.5: 288/144/72, which
            realizes 270 tokens on 32 layers; `budget` must then be 270).
        positions: "compact" (the official code renumbers after each stage) or "original".
        layers: stage layers (the kept set enters these layers); default by schedule.
        ratio: the keep ratio of `schedule=paper` (ignored when matched; the one used is `facts["ratio"]`).
    """

    name = "pdrop"
    query_rows = "last"

    def __init__(self, budget: int, schedule: str = "matched", positions: str = "compact",
                 layers: list[int] | None = None, ratio: float = PAPER_RATIO):
        self.budget = budget
        self.schedule_kind = check_choice("method.schedule", schedule, ("matched", "paper"))
        self.positions = check_choice("method.positions", positions, ("original", "compact"))
        default = PAPER_LAYERS if schedule == "paper" else MATCHED_LAYERS
        self.layers = list(layers) if layers is not None else default
        if not 0.0 < float(ratio) <= 1.0:
            raise ValueError(f"method.ratio={ratio!r} is not allowed (allowed: 0 < ratio <= 1)")
        self.ratio = float(ratio)

    def schedule(self, num_layers: int, num_image_tokens: int) -> Schedule:
        budget = check_budget(self.budget, num_image_tokens)
        if self.schedule_kind == "matched":
            ratio = solve_ratio(budget, self.layers, num_layers, num_image_tokens, self.name)
            return Schedule(geometric_stages(self.layers, ratio, num_image_tokens), budget, {"ratio": ratio})
        stages = geometric_stages(self.layers, self.ratio, num_image_tokens)
        realized = realized_budget(stages, num_layers, num_image_tokens)
        if abs(realized - budget) > 1:  # the paper setting has one budget: say it rather than mislabel the run
            raise ValueError(
                f"budget={budget} does not match {self.name} schedule=paper (ratio {self.ratio} before layers "
                f"{self.layers}: {[s.keep for s in stages]}), which realizes {realized:.1f} image tokens on "
                f"{num_layers} layers (allowed: budget={round(realized)}, or schedule=matched)"
            )
        return Schedule(stages, budget, {"ratio": self.ratio})

    def select(self, ctx: StageContext) -> Selection:
        start, end = ctx.image_span
        scores = ctx.attn[:, -1, start:end].mean(0)  # [H, 1, N] -> [V_current]: last prompt token, mean over heads
        return Selection(keep=top_k_in_order(scores, ctx.stage.keep))
