"""Parallel local jobs under CPU contention: N `run.py` jobs at once vs one alone, per OpenMP setting.

    python -m harness.parallel                      # 2 jobs, limit=10, writes docs/bench/parallel.{json,md}
    python -m harness.parallel --jobs 4 --limit 20 --settings passive-1,passive-all

Each job is the default run (`python run.py method=vanilla limit=L logger=none`, embedded model and
suite) in its own temporary run dir. For every OpenMP setting it times one job alone, then N jobs
started together, and reports the wall time per job and the throughput (samples per second over all
jobs) beside the single job's. Settings (`OMP_NUM_THREADS` / `OMP_WAIT_POLICY` in each job's
environment, read when torch loads):

    active-all    all cores per job, threads spin at barriers (what libgomp does by default for a while)
    passive-all   all cores per job, threads sleep at barriers (run.py's default)
    passive-1     one thread per job, sleeping (a job of hydra/launcher=local: cpus_per_task=1)

Measure alone on a quiet machine: any other load changes every number.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.results import write_report

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {
    "active-all": {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": str(os.cpu_count() or 1)},
    "passive-all": {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(os.cpu_count() or 1)},
    "passive-1": {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"},
}
TASKS = 5  # the default suite's tasks: a job runs TASKS * limit samples


def run_jobs(n: int, env: dict, limit: int, work: Path) -> list[float]:
    """Start n default runs at once; return each one's wall time in seconds."""
    procs, started = [], time.perf_counter()
    for i in range(n):
        run_dir = work / f"job{i}-{time.monotonic_ns()}"
        cmd = [sys.executable, str(ROOT / "run.py"), "method=vanilla", f"limit={limit}", "logger=none",
               f"hydra.run.dir={run_dir}"]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))
    times = []
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"a job failed (exit {proc.returncode}): {err.strip().splitlines()[-1:]}")
        times.append(time.perf_counter() - started)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.parallel", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="jobs started together (default 2)")
    parser.add_argument("--limit", type=int, default=10, help="samples per task and job (default 10)")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma list of {', '.join(SETTINGS)}")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench", help="where parallel.{json,md} go")
    args = parser.parse_args(argv)
    names = [s for s in args.settings.split(",") if s]
    unknown = [s for s in names if s not in SETTINGS]
    if unknown or args.jobs < 1 or args.limit < 1:
        parser.error(f"--settings {unknown} not known (allowed: {', '.join(SETTINGS)}); --jobs and --limit must be >= 1")

    samples = TASKS * args.limit
    work = Path(tempfile.mkdtemp(prefix="prunebench-parallel-"))
    rows = []
    try:
        run_jobs(1, SETTINGS["passive-1"], 1, work)  # datasets materialised, files in the page cache
        for name in names:
            alone = run_jobs(1, SETTINGS[name], args.limit, work)[0]
            together = run_jobs(args.jobs, SETTINGS[name], args.limit, work)
            rows.append({
                "setting": name, **SETTINGS[name], "alone_s": alone, "parallel_s": together,
                "alone_samples_per_s": samples / alone,
                "parallel_samples_per_s": args.jobs * samples / max(together),
            })
            print(f"{name}: alone {alone:.1f} s, {args.jobs} at once {max(together):.1f} s", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    report = {"jobs": args.jobs, "limit": args.limit, "samples_per_job": samples, "cpus": os.cpu_count(), "rows": rows}
    command = "`python -m harness.parallel " + " ".join(argv if argv is not None else sys.argv[1:]) + "`"
    lines = [f"# {args.jobs} parallel default runs vs one alone ({samples} samples per job, {os.cpu_count()} CPUs)", "",
             command, "",
             "| setting | OMP_NUM_THREADS | OMP_WAIT_POLICY | one job alone (s) | each of N at once (s) | "
             "throughput alone / N at once (samples/s) |", "| --- | ---: | --- | ---: | ---: | ---: |"]
    for row in rows:
        lines.append(f"| {row['setting']} | {row['OMP_NUM_THREADS']} | {row['OMP_WAIT_POLICY']} | {row['alone_s']:.1f} | "
                     + " / ".join(f"{t:.1f}" for t in row["parallel_s"])
                     + f" | {row['alone_samples_per_s']:.2f} / {row['parallel_samples_per_s']:.2f} |")
    write_report(args.out, "parallel", report, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
