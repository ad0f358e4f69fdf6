"""Budget and schedule validation: one clear error for a budget or schedule a model cannot run.

The budget B is the *realized* mean over all L decoder layers of the image tokens entering each
layer during prefill (docs/methods.md, "Budgets and their accounting"); the arithmetic is in
`harness/schedule.py`.
"""

from __future__ import annotations

from harness.schedule import Stage, realized_budget


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
