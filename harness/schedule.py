"""Stages and schedule arithmetic: plain integers, no torch, nothing else from harness.

A stage `(layer, keep)` takes its scores from decoder layer `layer` and hands `keep` image tokens (+ `merged`
ones) to layer `layer + 1`. A schedule's *realized* budget is the mean over all L decoder layers of the image
tokens entering each layer during prefill (docs/methods.md, "Budgets and their accounting").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Stage:
    """Scores from decoder layer `layer`; `keep` original image tokens (+ `merged` ones) enter layer `layer + 1`.

    With `before=True` (PDrop) the scores come from layer `layer`'s own projections of its input and the
    kept set already enters layer `layer` itself.
    """

    layer: int
    keep: int
    merged: int = 0
    before: bool = False

    @property
    def enters(self) -> int:
        """The first layer that sees the kept set."""
        return self.layer if self.before else self.layer + 1

    @property
    def count(self) -> int:
        """Image-derived tokens after the stage (kept + merged)."""
        return self.keep + self.merged


@dataclass(frozen=True)
class Schedule:
    """What a method decides for one model layout (`schedule(num_layers, num_image_tokens)` returns it).

    Attributes:
        stages: the in-LLM stages, in order (empty for a pre-LLM method or no pruning).
        budget: the validated budget the run records (vanilla: the whole image block; blind: 0). A pre-LLM
            method's `reduce` returns this many image tokens.
        facts: counts the method derived from the budget, for the record (PDrop: `ratio`; VisionZip: `split`;
            pool: `grid`).
    """

    stages: list[Stage]
    budget: int
    facts: dict[str, object] = field(default_factory=dict)


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


def bisect(realized: Callable[[float], float], target: float, upper_on_tie: bool = False, steps: int = 60) -> float:
    """The scale x >= 0 whose `realized(x)` is closest to `target`, for a non-decreasing `realized`.

    Starts from [0, 1], doubles the upper end (up to 1e6) while it realizes less than the target, then
    halves [lo, hi] `steps` times keeping `realized(lo) < target <= realized(hi)`. Returns 0 if
    `realized(0)` already reaches the target, else the closer of the final lo and hi. When both are
    equally far, lo (below the target) or, with `upper_on_tie`, hi: scaled schedules take lo, PDrop's
    ratio hi, and either choice is part of every schedule those methods have recorded. The caller
    checks whether the result is close enough.
    """
    lo, hi = 0.0, 1.0
    if realized(lo) >= target:
        return lo
    while realized(hi) < target and hi < 1e6:
        hi *= 2
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if realized(mid) < target else (lo, mid)
    return min((hi, lo) if upper_on_tie else (lo, hi), key=lambda x: abs(realized(x) - target))


def scaled_schedule(
    method: str,
    budget: int,
    layers: list[int],
    counts: list[int],
    num_layers: int,
    num_image_tokens: int,
    merged: Callable[[int, int], int] = lambda current, keep: 0,
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

    def realized(alpha: float) -> float:  # non-decreasing in alpha
        return realized_budget(build(alpha), num_layers, num_image_tokens)

    best = bisect(realized, budget)
    if abs(realized(best) - budget) > 1:
        raise ValueError(
            f"budget={budget} is unreachable for {method} with stages at layers {layers} on {num_layers} layers "
            f"(allowed: {math.ceil(realized(0.0) - 1)}..{num_image_tokens})"
        )
    return build(best)
