"""Runs below a runs dir: each results.json, what its method declares, and the choice among duplicates."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.leaderboard.benchmarks import Column

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
# Among runs of one model, suite, method and budget, the row uses the first by `choice_key`:
CHOICE_RULE = ("most samples, then no limit, then fewest failed samples, then batch size 1 (latency is timed at "
               "batch 1), then the first run dir in path order")


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
    others: list[Run] = field(default_factory=list)  # equivalent runs this one was chosen over (CHOICE_RULE)
    damaged: str | None = None  # what was wrong with samples.jsonl (unreadable, or lines that are no record)
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
    def batch_size(self) -> int:
        """The run's batch size (config `batch_size`, else `throughput.batch_size`; 1 when neither says)."""
        value = (self.results.get("config") or {}).get("batch_size") or self.get("throughput", "batch_size")
        return int(value or 1)

    @property
    def partial(self) -> bool:
        """A run with a `limit`: only the first samples of each task ran."""
        return self.results.get("limit") is not None

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

    def score(self, bench: Column) -> float | None:
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

    def samples(self, notes: Notes | None = None) -> dict[tuple[str, int], dict]:
        """samples.jsonl as {(task, doc_id): record} (empty when the file is missing or unreadable).

        A line that is not a record (damaged) is left out and `notes` names the file; a torn last line
        (a killed run) is left out silently, as a resume does.
        """
        if self._records is None:
            self._records, self.damaged = read_samples(self.path / "samples.jsonl")
        if self.damaged and notes is not None:
            notes.add(f"{self.path / 'samples.jsonl'}: {self.damaged}; the leaderboard uses the records it could read "
                      "(comparisons with the reference only on those)")
        return self._records


def read_samples(path: Path) -> tuple[dict[tuple[str, int], dict], str | None]:
    """({(task, doc_id): record}, what was damaged or None) of a samples.jsonl (missing: empty, None)."""
    try:
        lines = path.read_bytes().splitlines() if path.exists() else []
    except OSError as err:
        return {}, f"unreadable ({type(err).__name__}: {err})"
    records, bad = {}, 0
    for i, line in enumerate(lines):
        try:
            record = json.loads(line.decode(errors="replace"))
            records[(record["task"], record["doc_id"])] = record
        except (ValueError, KeyError, TypeError) as err:
            bad += not (i == len(lines) - 1 and isinstance(err, json.JSONDecodeError))  # a torn last line: no damage
    return records, (f"{bad} damaged line(s) skipped" if bad else None)


def find_runs(root: Path, notes: Notes) -> list[Run]:
    """Every run below `root` with a readable results.json, one per model/suite/method/budget (`choice_key`).

    A results.json that cannot be read (damaged, not a run's) is skipped with a note naming it.
    """
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for path in sorted(root.rglob("results.json")):
        if any(part.startswith(".") for part in path.relative_to(root).parts[:-1]):
            continue  # .submitit, hidden temp dirs
        try:
            results = json.loads(path.read_text())
            run = Run(path.parent, results)
            key = (run.results["model"], run.suite, run.method, run.budget)
            if not isinstance(results.get("tasks", {}), dict):
                raise TypeError(f"tasks is a {type(results['tasks']).__name__}, not a mapping")
            choice_key(run)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            notes.add(f"skipped {path}: damaged or not a run's results.json ({type(err).__name__}: {err})")
            continue
        groups[key].append(run)
    runs = []
    for (model, _, method, budget), group in groups.items():
        chosen, *others = sorted(group, key=choice_key)
        chosen.others = others
        if others:
            why = f" ({method} ignores the budget)" if chosen.fact("ignores_budget") else ""
            where = "budget " + str(budget) if budget is not None else "any budget"
            notes.add(f"{len(group)} runs of {method} at {where} for {model}{why}; using {chosen.path} ({extent(chosen)}); "
                      "ignoring " + ", ".join(f"{r.path} ({extent(r)})" for r in others) + f" (rule: {CHOICE_RULE})")
        runs.append(chosen)
    return runs


def choice_key(run: Run) -> tuple:
    """Sort key among equivalent runs, the one used first: see CHOICE_RULE (never the time a run finished)."""
    n, failed = run.n_samples()
    return (-n, run.partial, failed, run.batch_size != 1, str(run.path))


def extent(run: Run) -> str:
    """ "380 samples, limit=12, 3 failed, batch 8" (the parts that apply)."""
    n, failed = run.n_samples()
    limit = run.results.get("limit")
    return (f"{n} samples" + (f", limit={limit}" if limit is not None else "") + (f", {failed} failed" if failed else "")
            + (f", batch {run.batch_size}" if run.batch_size != 1 else ""))


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
