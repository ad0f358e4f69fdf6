"""Check that batched runs answer exactly as batch 1: one sweep of every method at two batch sizes, compared.

    python -m harness.batch_check                      # every method, the full embedded suite, batch 1 vs 8
    python -m harness.batch_check --limit 8 --methods fastv,adaptinfer --batch-size 16

Runs `python run.py -m method=<all> batch_size=1,<N> ...` (warm-up and the batch-1 latency pass off, so
every sample of the batched runs is batched) and compares every sample's record field by field, timing
fields aside. Writes `<out>.json` and `<out>.md`; exits 1 if any record differs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from harness.methods import method_names
from harness.results import write_report
from harness.rundir import default_run_name

ROOT = Path(__file__).parents[1]
TIMING_FIELDS = ("prefill_ms", "decode_ms", "e2e_ms", "scoring_ms", "warmup", "batch")


def batch_methods() -> list[str]:
    """Every method with a config (CDPruner runs with the random tiny text tower on the embedded model)."""
    return method_names()


def _records(run_dir: Path) -> dict[tuple[str, int], dict]:
    lines = (run_dir / "samples.jsonl").read_text().splitlines()
    return {(r["task"], r["doc_id"]): r for r in map(json.loads, lines)}


def compare_runs(one: Path, many: Path) -> dict:
    """Field-by-field differences between the records of two run dirs (timing fields aside)."""
    a, b = _records(one), _records(many)
    differences = [f"{key}: missing in {many.name}" for key in a if key not in b]
    differences += [f"{key}: missing in {one.name}" for key in b if key not in a]
    for key in sorted(set(a) & set(b), key=str):
        fields = (set(a[key]) | set(b[key])) - set(TIMING_FIELDS)
        differences += [f"{key} {f}: {a[key].get(f)!r} != {b[key].get(f)!r}"
                        for f in sorted(fields) if a[key].get(f) != b[key].get(f)]
    failed = sum(r["error"] is not None for r in b.values())
    return {"n": len(a), "failed": failed, "differences": differences}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default=",".join(batch_methods()))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=int, default=None, help="samples per task (default: all)")
    parser.add_argument("--budget", type=int, default=64)
    parser.add_argument("--tasks", default=None, help="comma-separated task names of the suite (default: all)")
    parser.add_argument("--sweep-dir", default="runs/batch_check")
    parser.add_argument("--out", default="docs/bench/batch_equivalence")
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(method_names()))
    if unknown or args.batch_size < 2:
        parser.error(f"--methods {unknown} unknown (allowed: {', '.join(method_names())})" if unknown
                     else f"--batch-size {args.batch_size}: compare batch 1 with a batch size of 2 or more")
    sweep = Path(args.sweep_dir).resolve()
    command = [sys.executable, "run.py", "-m", f"method={','.join(methods)}", f"budget={args.budget}",
               f"batch_size=1,{args.batch_size}", "warmup=0", "latency_samples=0", "logger=none",
               "model.text_encoder=tiny", f"hydra.sweep.dir={sweep}"]
    if args.limit:
        command.append(f"limit={args.limit}")
    if args.tasks:
        command.append(f"tasks.names=[{args.tasks}]")
    print(" ".join(command[1:]), flush=True)
    subprocess.run(command, cwd=ROOT, env=os.environ, check=True)
    runs = sweep / "tiny_llava_shapes" / "shapes"
    report = {"batch_size": args.batch_size, "budget": args.budget, "limit": args.limit, "methods": {}}
    for method in methods:
        one, many = (runs / default_run_name(method, args.budget, size) for size in (1, args.batch_size))
        report["methods"][method] = compare_runs(one, many)
        thr = [json.loads((d / "results.json").read_text())["throughput"] for d in (one, many)]
        report["methods"][method]["samples_per_s"] = [t["samples_per_s"] for t in thr]
    def rate(value) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    rows = [f"| {m} | {r['n']} | {r['failed']} | {len(r['differences'])} | "
            f"{rate(r['samples_per_s'][0])} | {rate(r['samples_per_s'][1])} |" for m, r in report["methods"].items()]
    markdown = "\n".join([
        f"# Batch {args.batch_size} vs batch 1 on the embedded suite (budget {args.budget}"
        f"{f', limit {args.limit}' if args.limit else ''})", "",
        f"`python -m harness.batch_check --batch-size {args.batch_size}"
        f"{f' --limit {args.limit}' if args.limit else ''}`: every sample's record compared field by field "
        "(timings aside). Samples/s: wall time of `generate` in this sweep, an equivalence check, not a timing "
        "benchmark (docs/bench/throughput.md is measured alone).", "",
        f"| method | samples | failed | records that differ | samples/s batch 1 | samples/s batch {args.batch_size} |",
        "|---|---|---|---|---|---|", *rows, "",
    ])
    write_report(Path(args.out).parent, Path(args.out).name, report, markdown)
    return 1 if any(r["differences"] for r in report["methods"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
