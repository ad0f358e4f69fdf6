"""The SLURM launcher's defaults (conf/hydra/launcher/slurm.yaml) checked against the sbatch script they produce.

No cluster needed: a stand-in `sbatch` first on PATH keeps the script submitit hands it and refuses the job
(and a stand-in `srun`, which submitit looks for before it submits: these tests pass on a machine without Slurm).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def sbatch_script(tmp_path: Path, *overrides: str) -> str:
    """The sbatch script of a 9-job sweep through hydra/launcher=slurm (nothing is run)."""
    bin_dir, captured = tmp_path / "bin", tmp_path / "submission.sh"
    bin_dir.mkdir(parents=True)
    fake = bin_dir / "sbatch"
    fake.write_text(f'#!/bin/sh\ncp "$1" {captured}\necho "sbatch: error: refused by the test" >&2\nexit 1\n')
    fake.chmod(0o755)
    srun = bin_dir / "srun"  # submitit refuses to submit where `srun` is not on PATH; it is never run here
    srun.write_text("#!/bin/sh\necho 'srun: not run by the test' >&2\nexit 1\n")
    srun.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(
        [sys.executable, "run.py", "-m", "hydra/launcher=slurm", "method=fastv", "budget=8,16,24,32,40,48,56,64,72",
         "logger=none", f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0 and "refused by the test" in proc.stderr + proc.stdout, proc.stderr[-3000:]
    return captured.read_text()


def directives(script: str) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(.*))?$", script, re.M))


def setup_lines(script: str) -> list[str]:
    block = script.split("# setup\n", 1)[1].split("\n\n", 1)[0]
    return block.splitlines()


@pytest.mark.slow
def test_sbatch_script_from_the_defaults(tmp_path):
    script = sbatch_script(tmp_path)
    sbatch = directives(script)
    assert "partition" not in sbatch and "account" not in sbatch and "qos" not in sbatch  # null: the cluster default
    assert sbatch["gpus-per-node"] == "1"
    assert sbatch["cpus-per-task"] == "8"
    assert sbatch["mem"] == "64GB"
    assert sbatch["time"] == "360"                      # minutes
    assert sbatch["array"] == "0-8%8"                   # 9 jobs, at most 8 at once
    assert sbatch["signal"] == "USR2@120"               # submitit's requeue signal, 2 min before the limit
    assert sbatch["job-name"] == "prunebench"
    assert sbatch["nodes"] == "1" and sbatch["ntasks-per-node"] == "1"
    assert sbatch["open-mode"] == "append"              # a requeued job appends to the same logs
    out = sbatch["output"]
    assert out.startswith(str(tmp_path / "sweep" / ".submitit")) and out.endswith("%A_%a_0_log.out")


def test_setup_lines_set_threads_from_the_job_cpus_and_the_offline_flags(tmp_path):
    lines = setup_lines(sbatch_script(tmp_path, "hydra.launcher.cpus_per_task=3", "hydra.launcher.partition=gpu"))
    assert directives(sbatch_script(tmp_path / "again", "hydra.launcher.partition=gpu"))["partition"] == "gpu"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "HF_", "TRANSFORMERS_"))}
    env["SLURM_CPUS_PER_TASK"] = "3"                    # what Slurm sets in a job with --cpus-per-task=3
    shown = subprocess.run(["bash", "-c", "\n".join([*lines, "env"])], env=env, capture_output=True, text=True,
                           check=True).stdout
    values = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
    assert values["OMP_NUM_THREADS"] == "3"
    assert values["HF_HUB_OFFLINE"] == values["HF_DATASETS_OFFLINE"] == values["TRANSFORMERS_OFFLINE"] == "1"
