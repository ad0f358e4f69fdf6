"""Runs below a runs dir: each results.json, what its method declares, and the choice among duplicates."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.leaderboard.benchmarks import Benchmark
from harness.results import load_records

# A method declares its role (harness.methods.base.FACTS) and results.json records it in `method_facts`:
#   reference            Avg, speedup and the CIs are relative to its run (vanilla)
#   ignores_budget       one row outside the budgets (vanilla first, the others last: blind)
#   difficult_reference  "difficult" samples: the reference right and this method at the same budget wrong (pool)
# A results.json written before methods declared them falls back to these names:
LEGACY_FACTS = {
    "vanilla": {"reference": True, "ignores_budget": True},
    "blind": {"ignores_budget": True},
    "pool": {"difficult_reference": True},
}
DEFAULT_NAMES = {"reference": "vanilla", "difficult_reference": "pool"}  # in the legend of a table without that run


class Notes:
    """Messages for stderr, each printed once."""

    def __init__(self):
        self.lines: list[str] = []

    def add(self, line: str) -> None:
        if line not in self.lines:
            self.lines.append(line)



@dataclass
class Run:
    """One run dir: its results.json and (lazily) its per-sample scores."""

    path: Path
    results: dict
    scored: dict = field(default_factory=dict)  # benchmark name -> {(task, doc_id): scored sample} | None
    _records: dict | None = None

    @property
    def method(self) -> str:
        return self.results["method"]

    def fact(self, key: str) -> bool:
        """What the run's method declared (results.json `method_facts`), else the legacy default of its name."""
        facts = self.results.get("method_facts") or {}
        if key in facts:
            return bool(facts[key])
        return LEGACY_FACTS.get(self.method, {}).get(key, False)

    @property
    def budget(self) -> int | None:
        return None if self.fact("ignores_budget") else self.results.get("budget")

    def tokens(self) -> float | None:
        """Realized mean image tokens per layer; for a method that ignores the budget and lacks the figure, the
        count it always keeps (its recorded budget: vanilla 576, blind 0)."""
        value = self.get("tokens", "avg_vision_tokens")
        if value is None and self.fact("ignores_budget"):
            return _number(self.results.get("budget"))
        return value

    @property
    def suite(self) -> tuple[str, ...]:
        names = ((self.results.get("config") or {}).get("tasks") or {}).get("names")
        return tuple(names) if names else tuple(sorted(self.results.get("tasks", {})))

    def score(self, bench: Benchmark) -> float | None:
        """The headline score: mean of the metric over the benchmark's tasks present in this run."""
        values = [_number(self.results.get("tasks", {}).get(task, {}).get("metrics", {}).get(bench.metric))
                  for task in bench.tasks]
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else None

    def get(self, *keys):
        value = self.results
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return _number(value)

    def n_samples(self, tasks: tuple[str, ...] | None = None) -> tuple[int, int]:
        """(samples, failed samples) over the run's tasks (groups left out), or over `tasks`."""
        entries = self.results.get("tasks", {})
        names = [t for t in (tasks or entries) if t in entries and "subtasks" not in entries[t]]
        if tasks is None:  # results.json without group markers: a task whose name prefixes others is a group
            names = [t for t in names if not any(o.startswith(t + "_") for o in names)]
        return (sum(int(entries[t].get("n") or 0) for t in names), sum(int(entries[t].get("n_failed") or 0) for t in names))

    def samples(self) -> dict[tuple[str, int], dict]:
        """samples.jsonl as {(task, doc_id): record} (empty when the file is missing)."""
        if self._records is None:
            self._records = load_records(self.path / "samples.jsonl")[0]
        return self._records


def find_runs(root: Path, notes: Notes) -> list[Run]:
    """Every run below `root` with a readable results.json (newest `finished_at` per method/budget/model/suite)."""
    newest: dict[tuple, list[Run]] = defaultdict(list)
    for path in sorted(root.rglob("results.json")):
        if any(part.startswith(".") for part in path.relative_to(root).parts[:-1]):
            continue  # .submitit, hidden temp dirs
        try:
            results = json.loads(path.read_text())
            run = Run(path.parent, results)
            key = (run.results["model"], run.suite, run.method, run.budget)
        except (OSError, ValueError, KeyError, TypeError) as err:
            notes.add(f"skipped {path}: not a readable results.json ({type(err).__name__}: {err})")
            continue
        newest[key].append(run)
    runs = []
    for (model, _, method, budget), group in newest.items():
        group.sort(key=completeness)  # a run with a limit or fewer samples never shadows a complete one
        chosen, newest_run = group[-1], max(group, key=lambda r: str(r.results.get("finished_at") or ""))
        if len(group) > 1:
            why = f" ({method} ignores the budget)" if chosen.fact("ignores_budget") else ""
            where = "budget " + str(budget) if budget is not None else "any budget"
            rule = "the newest" if chosen is newest_run else "the most complete (no limit, most samples), not the newest"
            notes.add(f"{len(group)} runs of {method} at {where} for {model}{why}; using {rule}, "
                      f"{chosen.path} ({_extent(chosen)}, finished {chosen.results.get('finished_at')}); ignoring "
                      + ", ".join(f"{r.path} ({_extent(r)})" for r in group[:-1]))
        runs.append(chosen)
    return runs


def completeness(run: Run) -> tuple:
    """Sort key: runs without a limit, then more samples, then newer."""
    return (run.results.get("limit") is None, run.n_samples()[0], str(run.results.get("finished_at") or ""))


def _extent(run: Run) -> str:
    n, failed = run.n_samples()
    limit = run.results.get("limit")
    return f"{n} samples" + (f", limit={limit}" if limit is not None else "") + (f", {failed} failed" if failed else "")


def sort_key(run: Run) -> tuple:
    """The reference (vanilla) first, then budget descending, then method name; other budget-free rows (blind) last."""
    if run.fact("reference"):
        return (0, 0, run.method)
    if run.fact("ignores_budget"):
        return (2, 0, run.method)
    return (1, -(run.budget or 0), run.method)


def role_name(runs: list[Run], key: str) -> str:
    """The method of the runs that declare `key` ("reference", "difficult_reference"), else its default name."""
    names = sorted({run.method for run in runs if run.fact(key)})
    return " / ".join(names) if names else DEFAULT_NAMES[key]



def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)
