"""The cluster path on a real Slurm: array jobs, a time limit with requeue and resume, a failed job, scancel.

Marked `slurm`: `pytest` leaves these out; `pytest -m slurm` runs them (and .ci/run does). They need a Slurm
cluster on this machine: `sudo scripts/slurm_local.sh start` brings one up (the session fixture does it when
run as root with the packages installed, and stops it again afterwards).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.rundir import LOCK_NAME

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "slurm_local.sh"
pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# each job: 1 CPU (OMP_NUM_THREADS=1 through the launcher's setup lines), no GPU, 2 GB
RESOURCES = ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
             "hydra.launcher.mem_gb=2", "logger=none"]
TINY = ["model=tiny_random", "tasks=fixtures", "tasks.names=[gqa,pope_random]", "limit=2", "max_new_tokens=2"]
# the default embedded model on the shapes suite, 20 samples per task: 100 samples, ~20 s of work on one CPU thread
LONG = ["method=fastv", "budget=64", "limit=20"]
RUN = "tiny_llava_shapes/shapes/fastv-64"             # the run dir of LONG under a sweep dir
EVERY = 10                                           # samples an attempt writes before the test interrupts it
SAME = ("task", "doc_id", "target", "response", "n_new_tokens", "vision_per_layer", "error")


def cluster_up() -> bool:
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and any(s.strip("*~#") in ("idle", "mix", "alloc") for s in out.stdout.split())


@pytest.fixture(scope="session")
def cluster():
    """A responding Slurm cluster; started with scripts/slurm_local.sh (and stopped after) when there is none."""
    started = False
    if not cluster_up():
        if os.geteuid() != 0 or shutil.which("slurmctld", path=os.environ["PATH"] + ":/usr/sbin") is None:
            pytest.fail("no Slurm cluster answers `sinfo` here. These tests run against a real one: "
                        "apt-get install -y slurm-wlm slurmdbd munge mariadb-server && sudo scripts/slurm_local.sh start "
                        "(or run `pytest` without -m slurm to leave them out)", pytrace=False)
        proc = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0 and cluster_up(), proc.stdout + proc.stderr
        started = True
    yield
    if started:
        subprocess.run([str(SCRIPT), "stop"], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Environment of the submitting command (Slurm jobs inherit it): one dataset cache for the module."""
    cache = tmp_path_factory.mktemp("cache")
    return {**os.environ, "PRUNEBENCH_CACHE": str(cache), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "OMP_WAIT_POLICY": "PASSIVE", "HYDRA_FULL_ERROR": "1"}


@pytest.fixture(scope="module")
def reference(env, tmp_path_factory):
    """Samples of an uninterrupted local run of LONG (no Slurm), keyed by (task, doc_id)."""
    run_dir = tmp_path_factory.mktemp("reference")
    proc = subprocess.run([sys.executable, "run.py", *LONG, "logger=none", f"hydra.run.dir={run_dir}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = samples(run_dir)
    return {(r["task"], r["doc_id"]): {k: r[k] for k in SAME} for r in lines}


def samples(run_dir: Path) -> list[dict]:
    """Every line of run_dir/samples.jsonl (duplicates included)."""
    path = run_dir / "samples.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def count_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


class Submission:
    """`run.py -m` through the SLURM launcher, running in the background (it waits for its jobs).

    Its console goes to a file: a pipe nobody reads while the test watches the job could fill up and block it.
    """

    def __init__(self, sweep: Path, env: dict, overrides: tuple[str, ...]):
        self.sweep = sweep
        self.console = sweep.parent / f"console-{len(list(sweep.parent.glob('console-*')))}.txt"
        with self.console.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "run.py", "-m", *RESOURCES, *overrides, f"hydra.sweep.dir={sweep}"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
            )

    def wait(self, timeout: float) -> tuple[int, str]:
        """Exit status and console of the submitting command."""
        return self.proc.wait(timeout=timeout), self.console.read_text()


@pytest.fixture
def submit(env):
    """submit(sweep, *overrides) -> Submission. Afterwards: submitters still running are stopped, jobs cancelled."""
    started: list[Submission] = []

    def start(sweep: Path, *overrides: str) -> Submission:
        started.append(Submission(sweep, env, overrides))
        return started[-1]

    yield start
    for run in started:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()
        for script in (run.sweep / ".submitit").glob("*/*_submission.sh"):
            subprocess.run(["scancel", script.parent.name.split("_")[0]], capture_output=True)


def array_id(sweep: Path, timeout: float = 600) -> str:
    """The Slurm id of the sweep (an array, or a plain job for a one-job sweep), from submitit's folder."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        ids = [p.parent.name for p in (sweep / ".submitit").glob("*/*_submission.sh")]
        if ids:
            return ids[0]
        time.sleep(0.5)
    raise AssertionError(f"no job submitted under {sweep / '.submitit'} within {timeout}s")


def job_state(job: str) -> tuple[str, int] | None:
    """(state, number of requeues so far) of a job, from the controller; None once it has left it."""
    proc = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True)
    fields = dict(f.split("=", 1) for f in proc.stdout.split() if "=" in f)
    return (fields["JobState"], int(fields["Restarts"])) if proc.returncode == 0 and "JobState" in fields else None


def wait_until(condition, what: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.2)


def squeue_state(job: str) -> str | None:
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout.split()
    return out[0] if out else None


def process_state(pid: int) -> str | None:
    """State letter of a process of this machine (R, S, T, Z, ...); None once it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None if fields[0] in ("Z", "X") else fields[0]


def wait_gone(job: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while squeue_state(job) and time.time() < deadline:
        time.sleep(1)
    assert squeue_state(job) is None, f"job {job} still queued after {timeout}s"


def sacct(job: str) -> list[dict]:
    """Accounting records of every attempt of a job (requeued ones included)."""
    fields = "JobID,State,Submit,Start,End,Elapsed,ExitCode"
    out = subprocess.run(["sacct", "-D", "-X", "-n", "-P", "-j", job, "-o", fields],
                         capture_output=True, text=True, check=True).stdout
    return [dict(zip(fields.split(","), line.split("|"))) for line in out.splitlines()]


def test_array_of_two_jobs(cluster, submit, tmp_path):
    sweep = tmp_path / "sweep"
    code, out = submit(sweep, "method=vanilla,fastv", "budget=64", *TINY).wait(timeout=900)
    assert code == 0, out[-3000:]
    found = sorted(p.parent.relative_to(sweep).as_posix() for p in sweep.rglob("results.json"))
    assert found == ["tiny_random/fixtures/fastv-64", "tiny_random/fixtures/vanilla"]
    job = array_id(sweep)
    script = (sweep / ".submitit" / job / f"{job}_submission.sh").read_text()
    assert "#SBATCH --array=0-1%2" in script and "#SBATCH --cpus-per-task=1" in script
    wait_gone(job, 60)                                  # results are in; the jobs may still be completing
    assert [r["State"] for r in sacct(job)] == ["COMPLETED", "COMPLETED"]
    assert "sacct error" not in out                     # job states come from accounting


def test_failed_job_shows_its_error_and_the_others_finish(cluster, submit, tmp_path):
    sweep = tmp_path / "sweep"
    code, out = submit(sweep, "method=fastv", "budget=700,64", *TINY).wait(timeout=900)  # job 0: 700 > 576 tokens
    job = array_id(sweep)
    assert code != 0
    assert "budget=700" in out and "FAILED" in out, out[-3000:]        # the job's own error, in this console
    assert "budget=700" in (sweep / ".submitit" / f"{job}_0" / f"{job}_0_0_log.err").read_text()
    wait_gone(job, 300)
    assert (sweep / "tiny_random/fixtures/fastv-64/results.json").exists()
    assert not (sweep / "tiny_random/fixtures/fastv-700").exists()    # a bad-input run leaves no run dir
    assert [r["State"] for r in sacct(job)] == ["FAILED", "COMPLETED"]


def test_time_limit_requeues_and_resumes(cluster, submit, reference, tmp_path):
    """A job at its time limit is requeued (max_num_timeout) into the same run dir and resumes; twice.

    At the limit Slurm sends USR2 `signal_delay_s` before it (`#SBATCH --signal=USR2@<s>`, to the job's srun
    step, where submitit's handler runs). The test sends that same signal itself (`scancel --signal=USR2`) once
    the current attempt has written EVERY samples, so each attempt is cut mid-run whatever the machine's speed (a
    real 1-minute limit would cut it after an unknown number of samples, or never on a fast machine). With
    timeout_min <= 10 submitit counts every USR2 as a time-out: it requeues the job and uses up one of
    max_num_timeout (2 here: both requeues are needed and allowed). The real limit, 10 min per attempt with its
    USR2 30-60 s before, only matters on a machine that stalls for minutes.
    """
    sweep = tmp_path / "sweep"
    run_dir = sweep / RUN
    start = time.time()
    run = submit(sweep, *LONG, "hydra.launcher.timeout_min=10", "hydra.launcher.signal_delay_s=30",
                 "hydra.launcher.max_num_timeout=2")
    job = array_id(sweep)                                # one job: not an array
    assert "#SBATCH --signal=USR2@30" in (sweep / ".submitit" / job / f"{job}_submission.sh").read_text()

    def now() -> int:
        return round(time.time() - start)

    timeline = [(0, "submitted", 0)]                     # (s since submission, event, lines in samples.jsonl)
    at_requeue, attempt_start, signalled, last = [], 0, 0, None
    while run.proc.poll() is None:
        assert time.time() - start < 3 * 660, timeline   # three attempts, each within its 10-min limit
        state, n = job_state(job), count_lines(run_dir / "samples.jsonl")
        if state != last and state is not None:
            timeline.append((now(), f"{state[0]} (attempt {state[1] + 1})", n))
            if state[1] > len(at_requeue):              # requeued: the attempt before is over, its samples are in
                at_requeue.append((run_dir / "samples.jsonl").read_text())
            if state[0] == "RUNNING":
                attempt_start = n
        last = state
        if state == ("RUNNING", signalled) and signalled < 2 and n >= attempt_start + EVERY:
            subprocess.run(["scancel", "--signal=USR2", job], check=True)
            signalled += 1
            timeline.append((now(), "USR2 sent (as at the time limit)", n))
        time.sleep(0.5)
    code, out = run.wait(timeout=60)
    final = (run_dir / "samples.jsonl").read_text()
    timeline.append((now(), "submitter exited", count_lines(run_dir / "samples.jsonl")))
    print("\ntimeline (s since submission, event, lines in samples.jsonl):", *timeline, sep="\n  ")
    assert code == 0, out[-3000:]
    wait_gone(job, 120)
    attempts = sacct(job)
    print("attempts (sacct -D):", *attempts, sep="\n  ")

    assert [a["State"] for a in attempts] == ["REQUEUED", "REQUEUED", "COMPLETED"], attempts
    log = (sweep / ".submitit" / job / f"{job}_0_log.out").read_text()
    assert f"Requeued job {job} (1 remaining timeouts)" in log and f"Requeued job {job} (0 remaining timeouts)" in log
    counts = [len(text.splitlines()) for text in at_requeue]
    print(f"samples at each requeue: {counts}; at the end: {len(final.splitlines())} (uninterrupted: {len(reference)})")
    assert len(counts) == 2 and EVERY <= counts[0] < counts[1] < len(reference), counts  # cut mid-run, twice
    assert all(final.startswith(text) for text in at_requeue)          # what was done is kept as it was
    lines = [json.loads(line) for line in final.splitlines()]
    keys = [(r["task"], r["doc_id"]) for r in lines]
    assert len(keys) == len(set(keys)) == len(reference)                 # none lost, none duplicated
    assert {k: {f: r[f] for f in SAME} for k, r in zip(keys, lines)} == reference
    results = json.loads((run_dir / "results.json").read_text())
    assert sum(task["n"] for task in results["tasks"].values()) == len(reference)


def test_cancelled_job_resumes_when_rerun(cluster, submit, reference, tmp_path):
    """scancel mid-run, then the same command with the same sweep dir: the run resumes from its samples.jsonl.

    The job is suspended before `scancel`, so it stops where it is: a running job gets SIGTERM, which submitit
    ignores, and goes on until Slurm's SIGKILL KillWait seconds later, far enough to finish on a fast machine.
    """
    sweep = tmp_path / "sweep"
    run_dir = sweep / RUN
    run = submit(sweep, *LONG)
    job = array_id(sweep)
    wait_until(lambda: count_lines(run_dir / "samples.jsonl") >= EVERY, f"{EVERY} samples written", 900)
    pid = int((run_dir / LOCK_NAME).read_text())                          # the run's process (this machine)
    subprocess.run(["scontrol", "suspend", job], check=True)
    # scancel only once the stop has reached the process: a kill racing the suspend can leave it stopped for good
    wait_until(lambda: process_state(pid) in ("T", None), f"process {pid} of job {job} stopped", 60)
    subprocess.run(["scancel", job], check=True)
    code, out = run.wait(timeout=600)                                   # the submitter does not hang
    assert code != 0 and "CANCELLED" in out, out[-3000:]
    wait_gone(job, 120)
    # the job leaves squeue before its processes are gone; until then the run dir's lock refuses a rerun
    wait_until(lambda: process_state(pid) is None, f"process {pid} of the cancelled job gone", 120)
    assert [a["State"].split()[0] for a in sacct(job)] == ["CANCELLED"]           # "CANCELLED by <uid>"
    before = (run_dir / "samples.jsonl").read_text()
    assert EVERY <= len(before.splitlines()) < len(reference) and not (run_dir / "results.json").exists()

    code, out = submit(sweep, *LONG).wait(timeout=900)                 # the same sweep dir: resume
    assert code == 0, out[-3000:]
    after = (run_dir / "samples.jsonl").read_text()
    print(f"\nsamples when cancelled: {len(before.splitlines())}; after the rerun: {len(after.splitlines())}")
    assert after.startswith(before)                                     # what was done is kept as it was
    lines = [json.loads(line) for line in after.splitlines()]
    keys = [(r["task"], r["doc_id"]) for r in lines]
    assert len(keys) == len(set(keys)) == len(reference)                 # none lost, none duplicated
    assert {k: {f: r[f] for f in SAME} for k, r in zip(keys, lines)} == reference
