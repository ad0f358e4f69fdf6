"""The run dir under concurrency and faults: names that never collide, a refused process that touches
nothing, resume that never empties samples.jsonl, options that run as given, secrets never written,
a complete run left as it is, config typos as one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, error_line, run_cli, start_cli

SMALL = ["model=tiny_random", "tasks=fixtures", "tasks.names=[mme]", "method=fastv", "budget=64", "limit=2",
         "max_new_tokens=2", "logger=none"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def test_run_names_hold_what_makes_runs_differ(monkeypatch):
    from harness.rundir import SWEPT_ENV, run_name

    fastv, vanilla = "harness.methods.fastv.FastV", "harness.methods.vanilla.Vanilla"
    assert run_name(fastv, "fastv", 64, 1, []) == "fastv-64"
    assert run_name(fastv, "fastv", 64, 8, ["limit=5", "logger=none"]) == "fastv-64-b8"  # limit: a resume extends
    assert run_name(fastv, "fastv", 64, 1, ["seed=1", "method.K=4"]) == "fastv-64+method.K=4,seed=1"
    assert run_name(fastv, "fastv", 64, 1, ["seed=0", "method.positions=original"]) == "fastv-64"  # at their defaults
    assert run_name(vanilla, "vanilla", 192, 1, []) == run_name(vanilla, "vanilla", 64, 1, ["budget=64"]) == "vanilla"
    assert run_name(fastv, "fastv", 64, 1, ["tasks.data.gqa=/data/gqa"]) == "fastv-64+tasks.data.gqa=_data_gqa"
    monkeypatch.setenv(SWEPT_ENV, "budget,limit,method")  # -m limit=2,3 method=... budget=...
    sweep = run_name(fastv, "fastv", 64, 1, ["limit=2", "seed=3", "+experiment=core_table"], "RunMode.MULTIRUN")
    assert sweep == "fastv-64+limit=2"  # a job of a sweep names what the sweep varies, whatever it is
    assert run_name(vanilla, "vanilla", 64, 1, ["budget=64"], "RunMode.MULTIRUN") == "vanilla-64"  # budget swept
    long = run_name(fastv, "fastv", 64, 1, [f"model.prompt={'x' * 200}"])
    assert len(long) < 100 and long != run_name(fastv, "fastv", 64, 1, [f"model.prompt={'y' * 200}"])


@pytest.mark.slow
def test_a_sweep_over_seeds_gives_each_job_its_own_dir(cache, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", "hydra/launcher=local", *SMALL, "method=random", "seed=0,1", f"hydra.sweep.dir={sweep}"],
                   cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {p.parent.name: json.loads(p.read_text()) for p in sweep.rglob("results.json")}
    assert len(results) == 2, sorted(results)
    assert sorted(r["seed"] for r in results.values()) == [0, 1]


@pytest.mark.slow
def test_two_runs_started_together_on_a_new_dir_lose_nothing(cache, tmp_path):
    run_dir = tmp_path / "runs" / "same"
    procs = [start_cli([*SMALL, f"hydra.run.dir={run_dir}"], cache) for _ in range(2)]
    outs = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in outs)
    assert codes in ([0, 0], [0, 2]), outs  # the second is refused by the lock, or finds the run complete
    for code, err in outs:
        if code == 2:
            assert "is in use by a running process" in err, err[-2000:]
    assert json.loads((run_dir / "results.json").read_text())["tasks"]["mme"]["n"] == 2
    assert (run_dir / ".hydra" / "overrides.yaml").is_file() and (run_dir / "run.json").is_file()
    assert len((run_dir / "samples.jsonl").read_text().splitlines()) == 2


@pytest.mark.slow
def test_a_refused_process_removes_nothing_of_the_holder(cache, tmp_path):
    from harness.rundir import RunLock

    run_dir = tmp_path / "held"
    with RunLock(run_dir):  # a live run that has only just taken its new dir
        (run_dir / "run.json").write_text("{}")
        proc = run_cli([*SMALL, f"hydra.run.dir={run_dir}"], cache)
        assert proc.returncode == 2 and "is in use by a running process" in error_line(proc)
        assert sorted(os.listdir(run_dir)) == [".prunebench.lock", "run.json"]


@pytest.mark.slow
def test_a_kill_while_resume_rewrites_samples_never_empties_them(tmp_path):
    path = tmp_path / "samples.jsonl"
    good = [json.dumps({"task": "mme", "doc_id": i, "response": "x" * 400}) for i in range(60_000)]
    path.write_text("\n".join(good) + "\n" + '{"task": "mme", "doc_')  # ~26 MB and a torn last line
    size = path.stat().st_size
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from harness.results import SampleLog; SampleLog({str(path)!r})"
    proc = subprocess.Popen([sys.executable, "-c", code])
    smallest, deadline = size, time.time() + 60
    while proc.poll() is None and time.time() < deadline:  # the rewrite is in progress: kill it as soon as it is seen
        smallest = min(smallest, path.stat().st_size)
        if smallest < size or any(p.name.endswith(".tmp") for p in tmp_path.iterdir()):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    lines = path.read_text().splitlines()
    assert smallest == size or len(lines) >= len(good), f"samples.jsonl shrank to {smallest} of {size} bytes in place"
    assert lines[:len(good)] == good  # the old file or the rewritten one: every complete record is there


def test_a_line_that_is_not_a_record_runs_again(tmp_path):
    from harness.results import SampleLog

    path = tmp_path / "samples.jsonl"
    path.write_text('{"task": "mme", "doc_id": 0}\n{}\n[1, 2]\n{"task": "mme", "doc_id": 1}\n')
    log = SampleLog(path)
    assert sorted(log.records) == [("mme", 0), ("mme", 1)]
    assert path.read_text() == '{"task": "mme", "doc_id": 0}\n{"task": "mme", "doc_id": 1}\n'


@pytest.mark.slow
def test_an_explicit_method_option_beats_the_model_default_and_is_what_is_recorded(cache, tmp_path):
    base = ["model=tiny_qwen2_5_vl", "tasks=fixtures", "tasks.names=[mme]", "method=fastv", "budget=128", "limit=1",
            "max_new_tokens=1", "logger=none"]
    proc = run_cli([*base, "method.K=5", f"hydra.run.dir={tmp_path / 'k5'}"], cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "k5" / "results.json").read_text())
    identity = json.loads((tmp_path / "k5" / "run.json").read_text())["identity"]
    assert results["config"]["method"]["K"] == identity["method.K"] == 5
    per_layer = results["tokens"]["vision_per_layer"]
    assert per_layer[4] > per_layer[5] and len(set(per_layer[:5])) == 1  # layers 0-4 see every token: K=5 ran
    default = run_cli([*base, f"hydra.run.dir={tmp_path / 'k2'}"], cache)  # the model config's K=2, as a default
    assert default.returncode == 0, default.stderr[-3000:]
    results = json.loads((tmp_path / "k2" / "results.json").read_text())
    assert results["config"]["method"]["K"] == 2 and results["tokens"]["vision_per_layer"][2] < per_layer[2]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny_qwen2_5_vl", "qwen2_5_vl_7b", "llava_next_7b"])
def test_an_impossible_stage_layer_is_one_line_before_any_weight_loads(model, cache, tmp_path):
    proc = run_cli([f"model={model}", "tasks=paper", "method=fastv", "method.K=40", "logger=none",
                f"hydra.run.dir={tmp_path / 'bad'}"], cache, env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2 and "K=40 must be within 1.." in error_line(proc), proc.stderr[-2000:]
    assert not (tmp_path / "bad").exists() and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_secret_environment_values_are_never_written(cache, tmp_path):
    secret = "sk-test-0123456789abcdef"
    run_dir = tmp_path / "run"
    out_dir = "${oc.env:PRUNEBENCH_TEST_TOKEN}"  # a config value that interpolates a secret
    proc = run_cli([*SMALL, f"tasks.data.out_dir={tmp_path / 'data'}/{out_dir}", f"hydra.run.dir={run_dir}"], cache,
               env={"PRUNEBENCH_TEST_TOKEN": secret, "WANDB_API_KEY": "wandb-" + secret})
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert {".hydra", "run.json", "results.json", "samples.jsonl", "run.log"} <= {p.relative_to(run_dir).parts[0] for p in files}
    leaked = [str(p) for p in files if secret.encode() in p.read_bytes()]
    assert not leaked, leaked
    assert "<redacted:PRUNEBENCH_TEST_TOKEN>" in (run_dir / "results.json").read_text()


@pytest.mark.slow
def test_a_complete_run_is_left_as_it_is(cache, tmp_path):
    run_dir = tmp_path / "done"
    assert run_cli([*SMALL, f"hydra.run.dir={run_dir}"], cache).returncode == 0
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != ".prunebench.lock"}
    again = run_cli([*SMALL, f"hydra.run.dir={run_dir}"], cache)
    assert again.returncode == 0 and "already holds this run, complete (2 samples, none failed)" in again.stdout
    assert "mme_total=" in again.stdout  # its results, printed again
    after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != ".prunebench.lock"}
    assert after["results.json"] == before["results.json"] and after["samples.jsonl"] == before["samples.jsonl"]


@pytest.mark.slow
def test_vanilla_has_one_run_dir_whatever_the_budget(cache, tmp_path):
    args = ["model=tiny_random", "tasks=fixtures", "tasks.names=[mme]", "method=vanilla", "limit=1",
            "max_new_tokens=1", "logger=none", "warmup=0"]
    first = run_cli(args, cache, cwd=tmp_path)
    second = run_cli([*args, "budget=64"], cache, cwd=tmp_path)
    assert first.returncode == second.returncode == 0, second.stderr[-3000:]
    assert "already holds this run" in second.stdout
    (run_dir,) = [p.parent for p in tmp_path.rglob("results.json")]
    assert run_dir.name == "vanilla+max_new_tokens=1,tasks.names=[mme]"  # no budget in it
    assert json.loads((run_dir / "run.json").read_text())["identity"]["budget"] is None
    pruned = run_cli([*args[:3], "method=fastv", "budget=64", *args[4:]], cache, cwd=tmp_path)
    assert pruned.returncode == 0, pruned.stderr[-3000:]
    assert "throughput (batch 1):" in pruned.stdout and "samples/s" in pruned.stdout
    assert f"speedup vs vanilla ({run_dir}): prefill" in pruned.stdout  # the vanilla run beside it


@pytest.mark.slow
@pytest.mark.parametrize(("args", "message"), [
    (["method=fastvv"], "method=fastvv: no such method 'fastvv' (allowed: adaptinfer,"),
    (["budgt=64"], "budgt=64: no such option (allowed: batch_size, budget,"),
    (["-m", "method=fastv,fastvv"], "no such method 'fastvv'"),
    (["method=fastv", "method.KK=3"], "'KK' is not an option of method=fastv (allowed: K,"),
])
def test_a_config_typo_is_one_line_and_exit_2(args, message, cache, tmp_path):
    proc = run_cli([*args, f"hydra.run.dir={tmp_path / 'bad'}"], cache, cwd=tmp_path)
    assert proc.returncode == 2 and message in error_line(proc)
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_damaged_run_files_are_named(cache, tmp_path):
    run_dir = tmp_path / "damaged"
    assert run_cli([*SMALL, f"hydra.run.dir={run_dir}"], cache).returncode == 0
    for name in ("results.json", "run.json"):
        good = (run_dir / name).read_bytes()
        (run_dir / name).write_text('{"identity": {')
        proc = run_cli([*SMALL, "limit=3", f"hydra.run.dir={run_dir}"], cache)
        assert proc.returncode == 2 and f"{run_dir / name} is damaged" in error_line(proc), proc.stderr[-2000:]
        (run_dir / name).write_bytes(good)


@pytest.mark.slow
def test_a_refused_resume_names_a_default_as_such(cache, tmp_path):
    run_dir = tmp_path / "b2"
    assert run_cli([*SMALL, "batch_size=2", f"hydra.run.dir={run_dir}"], cache).returncode == 0
    proc = run_cli([*SMALL, f"hydra.run.dir={run_dir}"], cache)
    assert proc.returncode == 2 and "batch_size 2 (now 1, the default)" in error_line(proc)


@pytest.mark.slow
def test_a_run_dir_that_is_a_file_is_one_line(cache, tmp_path):
    (tmp_path / "file").write_text("mine\n")
    proc = run_cli([*SMALL, f"hydra.run.dir={tmp_path / 'file'}"], cache)
    assert proc.returncode == 2 and "is a file, not a directory" in error_line(proc)
    assert (tmp_path / "file").read_text() == "mine\n"


@pytest.mark.slow
def test_the_guard_works_for_a_single_run(cache, tmp_path):
    proc = run_cli(["model=tiny_random", "method=fastv", "budget=600", "logger=none"], cache, cwd=tmp_path)
    assert proc.returncode == 2 and "budget=600" in error_line(proc)
    assert "RunDirGuard" not in proc.stderr and "UserWarning" not in proc.stderr
    assert not any(tmp_path.iterdir()), list(tmp_path.rglob("*"))  # not even the runs/<model>/<tasks> folders


@pytest.mark.slow
def test_help_lists_the_groups_of_run_py_only():
    proc = subprocess.run([sys.executable, "run.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    groups = proc.stdout.split("== Config ==")[0]
    assert "method: adaptinfer," in groups and "hydra/launcher: local, slurm" in groups
    assert "preset" not in groups  # the benchmark's group (python -m harness.bench)
