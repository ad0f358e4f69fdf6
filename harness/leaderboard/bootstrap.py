"""Paired bootstrap of score differences between runs scored on the same samples (vectorised over resamples)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from harness.leaderboard.benchmarks import Column
from harness.scoring.mme import QUESTIONS_PER_IMAGE as MME_QUESTIONS_PER_IMAGE

CI_LEVEL = 95.0
MAX_DRAWS_PER_CHUNK = 2_000_000  # bootstrap replicates are drawn in chunks of about this many indices


def resample_indices(sizes: list[int], replicates: int, seed: int):
    """Bootstrap draws, chunk by chunk: yields one [rows, n] index array per stratum of size n.

    The same (sizes, replicates, seed) always give the same draws, so two runs scored on the same
    samples share their resamples (that is what makes the bootstrap paired).
    """
    rng = np.random.default_rng(seed)
    chunk = max(1, MAX_DRAWS_PER_CHUNK // max(1, sum(sizes)))
    for start in range(0, replicates, chunk):
        rows = min(chunk, replicates - start)
        yield [rng.integers(0, n, size=(rows, n)) for n in sizes]


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    """[rows, n] draws -> [rows, n] how often each unit was drawn."""
    rows = idx.shape[0]
    flat = (idx + n * np.arange(rows)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(np.float64)


@dataclass
class Stratum:
    """Units resampled together: samples of a task, or (MME) the images of one category of a task."""

    task: str
    units: list[list[tuple[str, int]]]  # each unit = the sample keys it holds (one, or an image's questions)


def layout(bench: Column, scored: dict, keys: set) -> list[Stratum]:
    """Strata and units over the paired sample keys (deterministic order)."""
    strata = []
    for task in bench.tasks:
        mine = sorted(k for k in keys if k[0] == task)
        if not mine:
            continue
        if bench.kind == "circular":  # a unit = every rotation of one question whose original was evaluated
            groups: dict = defaultdict(list)
            for key in mine:
                groups[scored[key]["group"]].append(key)
            originals = sorted(g for g, unit in groups.items() if any(not scored[k].get("copy") for k in unit))
            strata.append(Stratum(task, [groups[g] for g in originals]))
            continue
        if bench.kind != "mme":
            strata.append(Stratum(task, [[k] for k in mine]))
            continue
        images: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
        for key in mine:
            images[scored[key]["category"]][scored[key]["image"]].append(key)
        for category in sorted(images):
            strata.append(Stratum(task, [images[category][image] for image in sorted(images[category])]))
    return strata


def replicate_scores(bench: Column, strata: list[Stratum], scored: dict, replicates: int, seed: int) -> tuple[float, np.ndarray]:
    """The benchmark score of one run on the paired samples, and on each of `replicates` resamples.

    Vectorised: each stratum's resamples are counts [B, n] of its units; a score is a linear
    function of the counts per stratum (sums of correct / TP / FP / FN / all-correct images).
    """
    arrays = []
    for stratum in strata:
        units = [[scored[k] for k in unit] for unit in stratum.units]
        arrays.append({
            "correct": np.array([sum(s.get("score", s["correct"]) for s in unit) for unit in units], dtype=np.float64),
            "questions": np.array([len(unit) for unit in units], dtype=np.float64),
            "all_correct": np.array([all(s["correct"] for s in unit) for unit in units], dtype=np.float64),
            "whole": np.array([len(unit) == MME_QUESTIONS_PER_IMAGE for unit in units], dtype=np.float64),
            "tp": np.array([sum(s.get("pred_yes", False) and s.get("label_yes", False) for s in u) for u in units], dtype=np.float64),
            "fp": np.array([sum(s.get("pred_yes", False) and not s.get("label_yes", False) for s in u) for u in units], dtype=np.float64),
            "fn": np.array([sum(not s.get("pred_yes", False) and s.get("label_yes", False) for s in u) for u in units], dtype=np.float64),
        })

    def score(counts: list[np.ndarray]) -> np.ndarray:  # counts: per stratum [B, n] -> [B]
        per_task: dict[str, list[np.ndarray]] = defaultdict(list)
        for stratum, c, a in zip(strata, counts, arrays):
            if bench.kind == "accuracy":
                value = 100.0 * (c @ a["correct"]) / c.sum(1)
            elif bench.kind == "f1":
                tp, fp, fn = c @ a["tp"], c @ a["fp"], c @ a["fn"]
                denominator = 2 * tp + fp + fn
                value = np.where(denominator > 0, 200.0 * tp / np.maximum(denominator, 1e-300), 0.0)
            elif bench.kind == "circular":  # % of questions with every rotation right
                value = 100.0 * (c @ a["all_correct"]) / c.sum(1)
            elif bench.kind == "mme":  # category score = acc (questions) + acc+ (images all correct)
                whole = c @ a["whole"]  # acc+ over images with both questions evaluated, as harness.scoring.mme
                acc_plus = np.where(whole > 0, 100.0 * (c @ (a["all_correct"] * a["whole"])) / np.maximum(whole, 1), 0.0)
                value = 100.0 * (c @ a["correct"]) / (c @ a["questions"]) + acc_plus
            else:
                raise ValueError(f"benchmark kind {bench.kind!r} is unknown (allowed: accuracy, f1, mme, circular)")
            per_task[stratum.task].append(value)
        totals = [np.sum(values, axis=0) if bench.kind == "mme" else values[0] for values in per_task.values()]
        return np.mean(totals, axis=0)  # splits: mean over the tasks present

    point = float(score([np.ones((1, len(s.units))) for s in strata])[0])
    sizes = [len(s.units) for s in strata]
    draws = [score([_counts(idx, n) for idx, n in zip(chunk, sizes)]) for chunk in resample_indices(sizes, replicates, seed)]
    return point, np.concatenate(draws) if draws else np.zeros(0)


class PairedBootstrap:
    """Paired bootstrap of score differences between runs scored on the same samples.

    Args:
        replicates: number of resamples B (0: off).
        seed: seed of the resamples (shared by every comparison: common random numbers).
    """

    def __init__(self, replicates: int, seed: int):
        self.replicates, self.seed = replicates, seed
        self._cache: dict[tuple, tuple[float, np.ndarray]] = {}

    def difference(self, bench: Column, scored_a: dict, scored_b: dict) -> tuple[float, float, float] | None:
        """(a − b on the paired samples, CI low, CI high), pairing samples by (task, doc_id)."""
        keys = set(scored_a) & set(scored_b)
        if not keys or self.replicates <= 0:
            return None
        strata = layout(bench, scored_a, keys)
        signature = (bench.name, tuple(tuple(map(tuple, s.units)) for s in strata))
        point_a, draws_a = self._scores(bench, strata, scored_a, signature)
        point_b, draws_b = self._scores(bench, strata, scored_b, signature)
        low, high = np.percentile(draws_a - draws_b, [(100 - CI_LEVEL) / 2, 100 - (100 - CI_LEVEL) / 2])
        return point_a - point_b, float(low), float(high)

    def _scores(self, bench, strata, scored, signature):
        key = (id(scored), signature)
        if key not in self._cache:
            self._cache[key] = replicate_scores(bench, strata, scored, self.replicates, self.seed)
        return self._cache[key]
