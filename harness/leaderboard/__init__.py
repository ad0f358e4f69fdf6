"""Leaderboard: every results.json below a runs dir -> one table per model + task suite (+ plots).

    python -m harness.leaderboard runs/multirun/paper_table-20261201-120000
    python -m harness.leaderboard runs/ --format latex --out docs/table.tex --plot docs/paper
    python -m harness.leaderboard runs/ --subset difficult --bootstrap 0

One row per (method, budget); vanilla first, then budget descending and method name, blind last.
Columns: each benchmark's headline score (with the paired bootstrap 95% CI of its difference to
vanilla), Avg (mean over the benchmarks present of score / vanilla score x 100), accuracy on the
"difficult" samples, the realized image tokens, prefill latency and speedup vs vanilla, and the
FLOPs reduction. A LLaVA-1.5-7B vanilla run is printed beside the published numbers (PUBLISHED),
with a warning for a gap over 1.5 points.

A row's scores and prefill ms are its own run's (its results.json: the samples it ran; a run with a limit is
marked). Δ, Avg and speedup compare it with vanilla on the samples both ran (harness.leaderboard.pairing):
paired by (task, doc_id), both scores recomputed there with the benchmark's aggregation, a failed sample a
wrong answer; "(n=N)" says when that is fewer samples than one of the two ran, and runs that cannot be
paired get a dash and the reason under the table. Of several runs of one method and budget, the row uses
runs.CHOICE_RULE (never the newest), stated under the table.

Which run is the reference (vanilla), which ignore the budget (vanilla, blind) and which defines the
difficult subset (pool) is what each method declares (harness.methods.base.FACTS), as recorded in
results.json `method_facts`; a new baseline needs no edit here.

Per-sample scores are the score fields each sample got when it was evaluated (samples.jsonl
`scores`, from harness.scoring, the same functions behind the reported metrics), so a resampled
score is computed exactly like the reported one. Older samples without them are scored again by
their task's `process_results` (tasks/<benchmark>/utils.py, loaded by file path).

Modules, in the order of the data: benchmarks (the columns, from the records of harness/benchmarks.py), runs (results.json, samples.jsonl, method facts,
the choice among duplicates), scores (per-sample scores), bootstrap (paired CIs), pairing (a row and the
reference on the samples both ran), table (rows, Avg, speedup, difficult subset), formats (Markdown, LaTeX,
CSV), plots, cli.
"""

from __future__ import annotations

from harness.leaderboard.benchmarks import (
    BENCHMARKS,
    PUBLISHED,
    PUBLISHED_MODEL,
    PUBLISHED_TOLERANCE,
    Column,
    Published,
)
from harness.leaderboard.bootstrap import (
    CI_LEVEL,
    PairedBootstrap,
    Stratum,
    layout,
    replicate_scores,
    resample_indices,
)
from harness.leaderboard.cli import main
from harness.leaderboard.formats import to_csv, to_latex, to_markdown
from harness.leaderboard.pairing import (
    Paired,
    average,
    pair_latency,
    pair_scores,
    point_score,
    same_samples,
)
from harness.leaderboard.plots import plot
from harness.leaderboard.runs import (
    CHOICE_RULE,
    Notes,
    Run,
    choice_key,
    find_runs,
    read_samples,
    sort_key,
)
from harness.leaderboard.scores import (
    failed_unit,
    fill_failed,
    score_sample,
    score_unit,
    scored_samples,
    task_config,
    task_function,
    task_module,
    task_yaml,
)
from harness.leaderboard.table import Row, Table, build_table, build_tables

__all__ = [
    "BENCHMARKS", "CHOICE_RULE", "CI_LEVEL", "PUBLISHED", "PUBLISHED_MODEL", "PUBLISHED_TOLERANCE", "Column", "Notes",
    "Paired", "PairedBootstrap", "Published", "Row", "Run", "Stratum", "Table", "average", "build_table", "build_tables",
    "choice_key", "failed_unit", "fill_failed", "find_runs", "layout", "main", "pair_latency", "pair_scores", "plot",
    "point_score", "read_samples", "replicate_scores", "resample_indices", "same_samples", "score_sample", "score_unit",
    "scored_samples", "sort_key", "task_config", "task_function", "task_module", "task_yaml", "to_csv", "to_latex", "to_markdown",
]
