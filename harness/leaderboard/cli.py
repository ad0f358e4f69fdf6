"""python -m harness.leaderboard RUNS_DIR [--format ...] [--out FILE] [--plot PREFIX] [--subset difficult]."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import harness.leaderboard as package
from harness.leaderboard.formats import to_csv, to_latex, to_markdown
from harness.leaderboard.plots import plot
from harness.leaderboard.runs import Notes, find_runs
from harness.leaderboard.table import build_tables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.leaderboard", description=package.__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, help="a runs dir; every results.json below it is read (multirun dirs too)")
    parser.add_argument("--format", choices=("markdown", "latex", "csv"), default="markdown")
    parser.add_argument("--out", type=Path, help="write the table here instead of stdout")
    parser.add_argument("--plot", metavar="PREFIX", help="also write PREFIX_budget.png and PREFIX_latency.png")
    parser.add_argument("--subset", choices=("difficult",),
                        help="score only the samples the reference (vanilla) answers correctly and the "
                             "difficult-subset reference (pool) at the same budget does not")
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="B",
                        help="paired bootstrap resamples for the CIs (0: no CIs)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples")
    args = parser.parse_args(argv)
    if args.bootstrap < 0:
        parser.error(f"--bootstrap={args.bootstrap} is not allowed (allowed: 0 or a positive number of resamples)")
    if not args.runs.is_dir():
        print(f"error: runs dir {args.runs} is not a directory", file=sys.stderr)
        return 2
    problem = _out_problem(args.out)
    if problem:
        print(f"error: --out {args.out} {problem} (allowed: a file path, e.g. --out docs/table.md; "
              "missing parent dirs are created)", file=sys.stderr)
        return 2

    notes = Notes()
    runs = find_runs(args.runs, notes)
    if not runs:
        for line in notes.lines:
            print(f"note: {line}", file=sys.stderr)
        print(f"error: no results.json below {args.runs}", file=sys.stderr)
        return 2
    tables = build_tables(runs, args.subset, args.bootstrap, args.seed, notes)
    render = {"markdown": to_markdown, "latex": to_latex, "csv": to_csv}[args.format]
    text = render(tables, 0 if args.subset else args.bootstrap)
    for line in notes.lines:
        print(f"note: {line}", file=sys.stderr)
    if args.out:
        try:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text)
        except OSError as err:
            print(f"error: --out {args.out} cannot be written ({type(err).__name__}: {err.strerror or err})",
                  file=sys.stderr)
            return 2
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    if args.plot:
        for table in tables:
            if not any(r.avg is not None for r in table.rows) and table.benchmarks:
                print(f"note: {table.title}: no Avg (run method=vanilla first), so the plots show "
                      f"{table.benchmarks[0].name} instead", file=sys.stderr)
        for path in plot(tables, args.plot):
            print(f"wrote {path}", file=sys.stderr)
    return 0


def _out_problem(out: Path | None) -> str | None:
    """Why `--out` cannot be the table's file (a directory, or below a file), else None."""
    if out is None:
        return None
    if out.is_dir():
        return "is a directory"
    parent = next((p for p in out.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        return f"is below {parent}, which is a file"
    return None
