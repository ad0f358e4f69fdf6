"""Budgets: validation, per-layer image-token counts, realized averages and analytic prefill FLOPs.

The budget B is the *realized* mean over all L decoder layers of the image tokens entering each
layer during prefill (METHODS.md, "measured, not claimed").
"""

from __future__ import annotations

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
    """Image tokens entering each layer under a schedule (no merged tokens)."""
    counts, current = [], num_image_tokens
    keep_at = {s.layer + 1: s.keep for s in stages}
    for layer in range(num_layers):
        current = keep_at.get(layer, current)
        counts.append(current)
    return counts


def realized_budget(stages: list[Stage], num_layers: int, num_image_tokens: int) -> float:
    """Mean over all layers of the image tokens entering each layer."""
    return sum(vision_per_layer(stages, num_layers, num_image_tokens)) / num_layers


def paper_budget(stages: list[Stage], num_layers: int, num_image_tokens: int) -> float:
    """The accounting of the SparseVLM / AdaptInfer code: a stage layer is counted with the reduced count.

    Their code computes layer s on the full set but appends the kept count for layer s itself
    (METHODS.md, "The published tables undercount").
    """
    counts = vision_per_layer([Stage(s.layer - 1, s.keep) for s in stages], num_layers, num_image_tokens)
    return sum(counts) / num_layers


def check_schedule(stages: list[Stage], budget: int, num_layers: int, num_image_tokens: int, method: str) -> None:
    """Raise if a schedule is malformed or misses its budget by more than one token."""
    layers = [s.layer for s in stages]
    if layers != sorted(set(layers)) or any(not 0 <= s.layer < num_layers - 1 for s in stages):
        raise ValueError(f"{method}: stage layers {layers} must be increasing and within 0..{num_layers - 2}")
    keeps = [s.keep for s in stages]
    if any(k < 0 for k in keeps) or any(b > a for a, b in zip([num_image_tokens, *keeps], keeps)):
        raise ValueError(f"{method}: kept counts {keeps} must not increase and stay within 0..{num_image_tokens}")
    realized = realized_budget(stages, num_layers, num_image_tokens)
    if abs(realized - budget) > 1:
        raise ValueError(f"{method}: schedule {keeps} at layers {layers} realizes {realized:.1f}, not budget={budget}")


def layer_flops(n: int, hidden: int, intermediate: int) -> float:
    """Prefill FLOPs of one decoder layer with n tokens: projections, attention, SwiGLU MLP (METHODS.md)."""
    return 2.0 * (4 * n * hidden**2 + 2 * n**2 * hidden + 3 * n * hidden * intermediate)


def prefill_flops(tokens_per_layer: list[int], hidden: int, intermediate: int) -> float:
    """LLM prefill FLOPs summed over layers, each with its own sequence length."""
    return sum(layer_flops(n, hidden, intermediate) for n in tokens_per_layer)
