"""The leaderboard's columns (one per benchmark) and the published vanilla LLaVA-1.5-7B numbers, read from
the benchmark records (harness/benchmarks.py), in their order."""

from __future__ import annotations

from harness.benchmarks import BENCHMARKS as RECORDS
from harness.benchmarks import Column, Published

BENCHMARKS: tuple[Column, ...] = tuple(column for record in RECORDS for column in record.leaderboard)
PUBLISHED: tuple[Published, ...] = tuple(number for record in RECORDS for number in record.published)
PUBLISHED_MODEL = "llava_1_5_7b"  # conf/model/llava_1_5_7b.yaml; only its vanilla row is compared
PUBLISHED_TOLERANCE = 1.5         # points (of 100); a larger gap is warned about

__all__ = ["BENCHMARKS", "PUBLISHED", "PUBLISHED_MODEL", "PUBLISHED_TOLERANCE", "Column", "Published"]
