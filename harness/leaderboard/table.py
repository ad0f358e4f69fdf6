"""One table per (model, task suite): rows, scores, CIs against the reference, the difficult subset, Avg, speedup."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from harness.leaderboard.benchmarks import (
    BENCHMARKS,
    PUBLISHED,
    PUBLISHED_MODEL,
    PUBLISHED_TOLERANCE,
    Column,
)
from harness.leaderboard.bootstrap import PairedBootstrap
from harness.leaderboard.pairing import Paired, average, pair_latency, pair_scores
from harness.leaderboard.runs import Notes, Run, role_name, sort_key
from harness.leaderboard.scores import fill_failed, scored_samples


@dataclass
class Row:
    run: Run
    scores: dict[str, float | None]                                  # benchmark -> score (the run's own samples)
    ci: dict[str, tuple[float, float, float] | None]                  # benchmark -> (diff, low, high) vs the reference
    difficult: dict[str, tuple[float, int] | None]                   # benchmark or "all" -> (accuracy, n)
    avg: float | None = None
    speedup: float | None = None
    paired: dict[str, Paired] = field(default_factory=dict)          # benchmark -> both scores on the shared samples
    avg_basis: Paired = field(default_factory=Paired)                 # the samples Avg rests on (n, whole)
    latency: Paired = field(default_factory=Paired)                   # both prefill means on the samples both timed


@dataclass
class Table:
    model: str
    suite: tuple[str, ...]
    benchmarks: list[Column]
    rows: list[Row]
    subset: str | None
    reference_name: str = "vanilla"           # the method the rows are compared with
    difficult_name: str = "pool"              # the method whose wrong answers define the difficult subset
    not_significant: list[str] = field(default_factory=list)  # "budget 64, GQA: fastv ~ random"
    published: list[str] = field(default_factory=list)        # vanilla vs the published LLaVA-1.5-7B numbers
    not_compared: list[str] = field(default_factory=list)     # "fastv 64: Avg —: <why>" (a dash in the table)

    @property
    def title(self) -> str:
        return f"{self.model} — {', '.join(self.suite)}" + (" — difficult subset" if self.subset else "")

    @property
    def has_paper_tokens(self) -> bool:
        return any(r.run.get("tokens", "avg_vision_tokens_paper") is not None for r in self.rows)


def build_tables(runs: list[Run], subset: str | None, replicates: int, seed: int, notes: Notes) -> list[Table]:
    """One table per (model, task suite), rows sorted; `subset="difficult"` scores only the difficult samples."""
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        groups[(run.results["model"], run.suite)].append(run)
    bootstrap = PairedBootstrap(replicates if not subset else 0, seed)
    if subset and replicates:
        notes.add("--subset difficult: scores are accuracies on the subset; no bootstrap CIs")
    return [build_table(model, suite, sorted(group, key=sort_key), subset, bootstrap, notes)
            for (model, suite), group in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1]))]


def build_table(model: str, suite: tuple[str, ...], runs: list[Run], subset: str | None, bootstrap: PairedBootstrap,
                notes: Notes) -> Table:
    where = f"{model} / {', '.join(suite)}"
    present = {task for run in runs for task in run.results.get("tasks", {})}
    benchmarks = [b for b in BENCHMARKS if present.intersection(b.tasks)]
    if not benchmarks:
        notes.add(f"{where}: no known benchmark among tasks {sorted(present)} (add its record to BENCHMARKS in harness/benchmarks.py)")
    reference_name, difficult_name = role_name(runs, "reference"), role_name(runs, "difficult_reference")
    vanilla = next((r for r in runs if r.fact("reference")), None)  # the reference run
    if vanilla is None:
        notes.add(f"{where}: no {reference_name} run, so Avg, speedup, the CIs and the difficult subset are shown as —")

    def scored(run: Run, bench: Column):
        return scored_samples(run, bench, notes)

    per_sample = vanilla is not None or bootstrap.replicates > 0 or any(r.fact("difficult_reference") for r in runs)
    for bench in benchmarks if per_sample else []:  # failed samples: wrong answers, with their doc's fields
        left_out = fill_failed(bench, [scored(run, bench) for run in runs])
        if left_out:
            notes.add(f"{where}: {len(left_out)} failed {bench.name} sample(s) that no run answered are left out of "
                      f"the per-sample comparisons (e.g. {left_out[0]})")

    difficult_sets = difficult_subsets(runs, vanilla, benchmarks, scored, notes, where)
    unbudgeted = [r.method for r in runs if r.budget is None]
    if len(difficult_sets) > 1 and unbudgeted:
        notes.add(f"{where}: {difficult_name} ran at several budgets, so the difficult cells of "
                  f"{' and '.join(unbudgeted)} (no budget of their own) are —")
    rows = []
    for run in runs:
        ci, difficult = {}, {}
        for bench in benchmarks:
            ci[bench.name] = None
            if vanilla is not None and run is not vanilla and bootstrap.replicates > 0:
                a, b = scored(run, bench), scored(vanilla, bench)
                if a is not None and b is not None:
                    ci[bench.name] = bootstrap.difference(bench, a, b)
        budget = run.budget if run.budget is not None else _single_budget(difficult_sets)
        keys = difficult_sets.get(budget)
        if keys is not None:
            correct = {}
            for bench in benchmarks:
                mine = scored(run, bench) or {}
                bench_keys = [k for k in keys if k[0] in bench.tasks and k in mine]
                difficult[bench.name] = _accuracy([mine[k]["correct"] for k in bench_keys])
                correct.update({k: mine[k]["correct"] for k in bench_keys})
            difficult["all"] = _accuracy(list(correct.values()))
        if subset:
            scores = {b.name: (difficult.get(b.name) or (None, 0))[0] for b in benchmarks}
        else:
            scores = {b.name: run.score(b) for b in benchmarks}
        rows.append(Row(run, scores, ci, difficult))

    not_compared = []
    if vanilla is not None:
        reference = next(r for r in rows if r.run is vanilla)
        for row in rows:
            compare(row, reference, benchmarks, subset, scored, not_compared, notes, where)

    table = Table(model, suite, benchmarks, rows, subset, reference_name, difficult_name, not_compared=not_compared)
    table.published = published_comparison(model, vanilla, notes, where)
    if bootstrap.replicates > 0:
        table.not_significant = not_significant_pairs(runs, benchmarks, scored, bootstrap)
    return table


def compare(row: Row, reference: Row, benchmarks: list[Column], subset: str | None, scored, not_compared: list[str],
            notes: Notes, where: str) -> None:
    """The row's Avg and speedup against the reference row, on the samples both ran (harness.leaderboard.pairing).

    With `subset`, Avg is the ratio of the difficult-subset accuracies (the reference is right on every
    difficult sample, so the ratio is on the row's own difficult samples).
    """
    run, name = row.run, f"{row.run.method}" + (f" {row.run.budget}" if row.run.budget is not None else "")
    if subset:
        row.paired = {b.name: Paired(row.scores[b.name], reference.scores[b.name]) for b in benchmarks}
    else:
        row.paired = {b.name: pair_scores(b, run, reference.run, scored(run, b), scored(reference.run, b))
                      for b in benchmarks}
    row.avg, row.avg_basis = average(list(row.paired.values()))
    zero = [b for b, p in row.paired.items() if p.mine is not None and p.reference == 0]
    if zero:
        notes.add(f"{where}: Avg of {name} leaves out {', '.join(zero)} ({reference.run.method} scores 0 there"
                  + (")" if subset or all(row.paired[b].whole for b in zero) else " on the samples both ran)"))
    if row.avg_basis.refused:
        not_compared.append(f"{name}: Avg —: {row.avg_basis.refused}")
    row.latency = pair_latency(run, reference.run)
    row.speedup = (row.latency.reference / row.latency.mine) if row.latency.mine and row.latency.reference else None
    if row.latency.refused:
        not_compared.append(f"{name}: speedup —: {row.latency.refused}")


def published_comparison(model: str, vanilla: Run | None, notes: Notes, where: str) -> list[str]:
    """Lines "GQA: 61.2 vs published 62.0 (−0.8 points; source)" for a LLaVA-1.5-7B vanilla run; a gap
    over PUBLISHED_TOLERANCE points (of 100) also goes to the notes as a warning."""
    if model != PUBLISHED_MODEL or vanilla is None:
        return []
    lines = []
    for ref in PUBLISHED:
        measured = vanilla.get("tasks", ref.task, "metrics", ref.metric)
        if measured is None:
            continue
        gap = (measured - ref.value) * 100.0 / ref.scale
        label = ref.bench if ref.metric != "mme_perception" else "MME P"
        lines.append(f"{label}: {measured:.1f} vs published {ref.value:.1f} ({gap:+.1f} points; {ref.source})")
        if abs(gap) > PUBLISHED_TOLERANCE:
            notes.add(f"warning: {where}: vanilla {label} {measured:.1f} differs from the published {ref.value:.1f} by "
                      f"{gap:+.1f} points (more than {PUBLISHED_TOLERANCE}); check the prompt, split, OCR tokens and scorer")
    return lines


def difficult_subsets(runs, vanilla, benchmarks, scored, notes, where) -> dict[int, set]:
    """budget -> the sample keys the reference run (`vanilla`) answers correctly and the difficult-subset
    reference (pool) at that budget answers wrongly."""
    reference = role_name(runs, "difficult_reference")
    pools = {r.budget: r for r in runs if r.fact("difficult_reference")}
    if vanilla is None:
        return {}
    if not pools:
        notes.add(f"{where}: no {reference} run, so the difficult subset ({role_name(runs, 'reference')} right, "
                  f"{reference} wrong) is —")
        return {}
    subsets = {}
    for budget, pool in pools.items():
        keys = set()
        for bench in benchmarks:
            v, p = scored(vanilla, bench), scored(pool, bench)
            if v is None or p is None:
                continue
            keys |= {k for k in v.keys() & p.keys() if v[k]["correct"] and not p[k]["correct"]}
        subsets[budget] = keys
    missing = sorted({r.budget for r in runs if r.budget is not None} - set(subsets))
    if missing:
        notes.add(f"{where}: no {reference} run at budget {', '.join(map(str, missing))}, so the difficult subset there is —")
    return subsets


def _single_budget(subsets: dict) -> int | None:
    """Rows without a budget (vanilla, blind): their difficult cell uses the one difficult set, if there is one."""
    return next(iter(subsets)) if len(subsets) == 1 else None


def not_significant_pairs(runs, benchmarks, scored, bootstrap) -> list[str]:
    """Pairs of methods at the same budget whose paired difference's CI contains 0, per benchmark."""
    by_budget = defaultdict(list)
    for run in runs:
        if run.budget is not None:
            by_budget[run.budget].append(run)
    pairs = []
    for budget in sorted(by_budget, reverse=True):
        group = sorted(by_budget[budget], key=lambda r: r.method)
        for bench in benchmarks:
            same = []
            for i, a in enumerate(group):
                for b in group[i + 1:]:
                    sa, sb = scored(a, bench), scored(b, bench)
                    result = bootstrap.difference(bench, sa, sb) if sa and sb else None
                    if result is not None and result[1] <= 0 <= result[2]:
                        same.append(f"{a.method} ~ {b.method}")
            if same:
                pairs.append(f"budget {budget}, {bench.name}: {'; '.join(same)}")
    return pairs


def _accuracy(correct: list[bool]) -> tuple[float | None, int]:
    """(% correct, n); an empty subset is (None, 0)."""
    return (100.0 * sum(correct) / len(correct) if correct else None, len(correct))
