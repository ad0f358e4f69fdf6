"""No pruning: the reference for accuracy ratios and speedups."""

from __future__ import annotations

from harness.methods.base import Selection, StageContext
from harness.schedule import Schedule


class Vanilla:
    """Every image token enters every layer; the recorded budget is the full image block."""

    name = "vanilla"
    query_rows = None
    positions = "original"
    reference = True  # the row every other row is compared with
    ignores_budget = True

    def __init__(self, budget: int | None = None):
        self.budget = budget  # ignored: vanilla always keeps all image tokens

    def schedule(self, num_layers: int, num_image_tokens: int) -> Schedule:
        return Schedule([], num_image_tokens)

    def select(self, ctx: StageContext) -> Selection:
        raise RuntimeError("vanilla has no stages")
