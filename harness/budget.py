"""Budgets: validation, per-layer image-token counts, realized averages and analytic prefill FLOPs.

The budget B is the *realized* mean over all L decoder layers of the image tokens entering each
layer during prefill (docs/methods.md, "Budgets and their accounting").
"""

from __future__ import annotations

import math

from harness.methods.base import Stage


def check_budget(budget: object, num_image_tokens: int) -> int:
    """Return the budget as an int, or raise a ValueError naming the bad value and the allowed range."""
    if isinstance(budget, bool) or not isinstance(budget, int):
        if isinstance(budget, float) and budget.is_integer():
            budget = int(budget)
        else:
            raise ValueError(f"budget={budget!r} is not an integer (allowed: 1..{num_image_tokens})")
    if not 1 <= budget <= num_image_tokens:
        raise ValueError(
            f"budget={budget} is outside the {num_image_tokens} image tokens of this model "
            f"(allowed: 1..{num_image_tokens})"
        )
    return budget


def vision_per_layer(stages: list[Stage], num_layers: int, num_image_tokens: int) -> list[int]:
    """Image-derived tokens (kept + merged) entering each layer under a schedule."""
    counts, current = [], num_image_tokens
    count_at = {s.enters: s.count for s in stages}
    for layer in range(num_layers):
        current = count_at.get(layer, current)
        counts.append(current)
    return counts


def realized_budget(stages: list[Stage], num_layers: int, num_image_tokens: int) -> float:
    """Mean over all layers of the image tokens entering each layer."""
    return sum(vision_per_layer(stages, num_layers, num_image_tokens)) / num_layers


def paper_budget(stages: list[Stage], num_layers: int, num_image_tokens: int) -> float:
    """The accounting of the SparseVLM / AdaptInfer code: a stage layer is counted with the reduced count.

    Their code computes layer s on the full set but appends the kept count for layer s itself
    (docs/methods.md, "Budgets and their accounting").
    """
    shifted = [Stage(s.layer, s.keep, s.merged, before=True) for s in stages]  # count layer s itself
    return sum(vision_per_layer(shifted, num_layers, num_image_tokens)) / num_layers


def paper_tokens(
    accounting: str | None, stages: list[Stage], budget: int, num_layers: int, num_image_tokens: int
) -> float | None:
    """The image tokens a paper reports for its own schedule, by the method's declared `paper_accounting`.

    "stage_layer_reduced": `paper_budget` (SparseVLM, AdaptInfer); "label": the budget label itself (DART's
    `max_num_trunction`); None: no such figure (the realized one is the only count).
    """
    if accounting == "stage_layer_reduced":
        return paper_budget(stages, num_layers, num_image_tokens)
    if accounting == "label":
        return float(budget)
    return None


def check_schedule(
    stages: list[Stage], budget: int, num_layers: int, num_image_tokens: int, method: str, check_budget: bool = True
) -> None:
    """Raise if a schedule is malformed or (unless `check_budget=False`, for published schedules) misses its
    budget by more than one token."""
    layers = [s.enters for s in stages]
    if layers != sorted(set(layers)) or any(not 1 <= s.enters < num_layers for s in stages):
        raise ValueError(f"{method}: stages entering layers {layers} must be increasing and within 1..{num_layers - 1}")
    counts = [s.count for s in stages]
    if any(s.keep < 0 or s.merged < 0 for s in stages) or any(b > a for a, b in zip([num_image_tokens, *counts], counts)):
        raise ValueError(f"{method}: token counts {counts} must not increase and stay within 0..{num_image_tokens}")
    realized = realized_budget(stages, num_layers, num_image_tokens)
    if check_budget and abs(realized - budget) > 1:
        raise ValueError(f"{method}: schedule {counts} entering layers {layers} realizes {realized:.1f}, not budget={budget}")


def layer_flops(n: int, hidden: int, intermediate: int) -> float:
    """Prefill FLOPs of one decoder layer with n tokens: projections, attention, SwiGLU MLP.

    See docs/methods.md, "Latency, memory and FLOPs".
    """
    return 2.0 * (4 * n * hidden**2 + 2 * n**2 * hidden + 3 * n * hidden * intermediate)


def prefill_flops(tokens_per_layer: list[int], hidden: int, intermediate: int) -> float:
    """LLM prefill FLOPs summed over layers, each with its own sequence length."""
    return sum(layer_flops(n, hidden, intermediate) for n in tokens_per_layer)


def scaled_schedule(
    method: str,
    budget: int,
    layers: list[int],
    counts: list[int],
    num_layers: int,
    num_image_tokens: int,
    merged=lambda current, keep: 0,
    before: bool = False,
) -> list[Stage]:
    """Keep the stage layers and the ratios between published counts; scale them to realize `budget` (+-1).

    Args:
        method: name for error messages.
        budget: the target realized mean of image tokens per layer.
        layers: stage layers; counts: published kept counts at those stages (the ratios to keep).
        merged: merged tokens a stage adds, as a function of (tokens before, kept) — SparseVLM's recycling.
        before: stages act before their layer (PDrop).

    Raises:
        ValueError: if no scale reaches the budget within one token.
    """

    beyond = [layer for layer in layers if not 0 <= layer < num_layers]
    if beyond:
        raise ValueError(
            f"{method}: layer {beyond[0]} is beyond the model's {num_layers} layers (allowed stage layers: 1..{num_layers - 1})"
        )

    def build(alpha: float) -> list[Stage]:
        stages, current = [], num_image_tokens
        for layer, count in zip(layers, counts):
            keep = min(current, max(0, round(alpha * count)))
            extra = merged(current, keep) if keep < current else 0
            if keep + extra > current:  # merging cannot grow the set
                keep, extra = current, 0
            stages.append(Stage(layer, keep, extra, before))
            current = keep + extra
        return stages

    def realized(alpha: float) -> float:
        return realized_budget(build(alpha), num_layers, num_image_tokens)

    lo, hi = 0.0, 1.0
    while realized(hi) < budget and hi < 1e6:
        hi *= 2
    for _ in range(60):  # realized(alpha) is non-decreasing in alpha
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if realized(mid) < budget else (lo, mid)
    best = min((lo, hi), key=lambda a: abs(realized(a) - budget))
    if abs(realized(best) - budget) > 1:
        raise ValueError(
            f"budget={budget} is unreachable for {method} with stages at layers {layers} on {num_layers} layers "
            f"(allowed: {math.ceil(realized(0.0) - 1)}..{num_image_tokens})"
        )
    return build(best)
