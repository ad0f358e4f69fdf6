"""Relative numbers on the same samples: a row and the reference both scored, and timed, on the samples both ran.

A run's own cells (its benchmark scores, prefill ms) are its results.json: its own samples. Everything that
compares it with the reference (Avg, Δ, speedup) comes from the samples both runs ran, paired by
(task, doc_id) in samples.jsonl: both benchmark scores are recomputed there from the stored per-sample score
fields with the benchmark's aggregation (harness.leaderboard.bootstrap), and the speedup is the ratio of the
mean prefill times over the samples both timed. When both runs ran the same samples these are their own
numbers. Without per-sample records, two runs count as the same samples only when neither has a limit and
results.json gives every task the same number of samples; otherwise there is no comparison (a dash and the
reason under the table).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harness.leaderboard.benchmarks import Column
from harness.leaderboard.bootstrap import layout, replicate_scores
from harness.leaderboard.runs import Run


@dataclass(frozen=True)
class Paired:
    """A row and the reference on the samples both ran.

    Attributes:
        mine: The row's value there (a benchmark score, or its mean prefill ms); None without a comparison.
        reference: The reference's value there.
        n: Paired samples (0 when known only from results.json counts).
        whole: The paired samples are all of both runs' samples, so the values are their own numbers.
        refused: Why the two cannot be compared; None when they are, or when one has nothing to compare.
    """

    mine: float | None = None
    reference: float | None = None
    n: int = 0
    whole: bool = True
    refused: str | None = None

    @property
    def ratio(self) -> float | None:
        """mine / reference (None without both, or with a reference of 0)."""
        return self.mine / self.reference if self.mine is not None and self.reference else None


def point_score(bench: Column, scored: dict, keys: set) -> float:
    """The benchmark score of one run's scored samples restricted to `keys` (the benchmark's aggregation)."""
    return replicate_scores(bench, layout(bench, scored, keys), scored, 0, 0)[0]


def same_samples(run: Run, reference: Run, tasks: tuple[str, ...] | None = None) -> bool:
    """Without per-sample records: the same run, or no limit in either and the same number of samples in every task."""
    if run is reference:
        return True
    if run.partial or reference.partial:
        return False
    mine, theirs = run.results.get("tasks", {}), reference.results.get("tasks", {})
    names = tasks or sorted(set(mine) | set(theirs))
    return all((t in mine) == (t in theirs) and (mine.get(t) or {}).get("n") == (theirs.get(t) or {}).get("n")
               for t in names)


def pair_scores(bench: Column, run: Run, reference: Run, mine: dict | None, theirs: dict | None) -> Paired:
    """`bench` scores of `run` and `reference` on the samples both ran (`mine`, `theirs`: their scored samples)."""
    if mine and theirs:
        keys = mine.keys() & theirs.keys()
        if not keys:
            return Paired(refused=f"no {bench.name} sample in common with {reference.method}")
        return Paired(point_score(bench, mine, keys), point_score(bench, theirs, keys), len(keys),
                      mine.keys() == theirs.keys())
    own, ref = run.score(bench), reference.score(bench)
    if own is None or ref is None:
        return Paired()  # nothing to compare: left out of Avg
    if same_samples(run, reference, bench.tasks):
        return Paired(own, ref)
    return Paired(refused=f"{bench.name} has no per-sample scores in samples.jsonl of "
                          f"{run.path if not mine else reference.path} to pair the two, and they ran different "
                          f"samples ({_counts(run, bench.tasks)} vs {_counts(reference, bench.tasks)})")


def timed(run: Run) -> dict[tuple[str, int], float]:
    """Prefill ms of the samples timed at batch 1 (no error, not warm-up), as results.json's latency counts them."""
    return {key: float(r["prefill_ms"]) for key, r in run.samples().items()
            if r.get("error") is None and not r.get("warmup") and isinstance(r.get("prefill_ms"), (int, float))}


def pair_latency(run: Run, reference: Run) -> Paired:
    """Mean prefill ms of `run` and `reference` on the samples both timed."""
    mine, theirs = timed(run), timed(reference)
    if mine and theirs:
        keys = mine.keys() & theirs.keys()
        if not keys:
            return Paired(refused=f"no sample timed in both it and {reference.method}")
        return Paired(float(np.mean([mine[k] for k in keys])), float(np.mean([theirs[k] for k in keys])), len(keys),
                      mine.keys() == theirs.keys())
    own, ref = run.get("latency_ms", "prefill", "mean"), reference.get("latency_ms", "prefill", "mean")
    if own is None or ref is None:
        return Paired()
    if same_samples(run, reference):
        return Paired(own, ref)
    return Paired(refused=f"no per-sample prefill times to pair it with {reference.method}, and they ran different "
                          f"samples ({_counts(run)} vs {_counts(reference)})")


def average(pairs: list[Paired]) -> tuple[float | None, Paired]:
    """Avg = mean of 100 x mine / reference over the benchmarks compared, and what it rests on.

    Returns:
        (Avg or None, Paired(n = paired samples summed over the benchmarks, whole, refused: the first
        benchmark that could not be compared: then there is no Avg)).
    """
    refused = next((p.refused for p in pairs if p.refused), None)
    ratios = [p.ratio for p in pairs if p.ratio is not None]
    if refused or not ratios:
        return None, Paired(refused=refused)
    used = [p for p in pairs if p.ratio is not None]
    return 100.0 * float(np.mean(ratios)), Paired(n=sum(p.n for p in used), whole=all(p.whole for p in used))


def _counts(run: Run, tasks: tuple[str, ...] | None = None) -> str:
    n = run.n_samples(tasks)[0]
    return f"{n} samples" + (f", limit={run.results['limit']}" if run.partial else "")
