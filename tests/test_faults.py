"""run.py under faults: bad input never removes the user's files, resume never mixes settings, one
process per run dir, failed samples are counted, damaged caches are rebuilt, errors are one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, error_line, run_cli

SMALL = ["model=tiny_random", "tasks=fixtures", "tasks.names=[mme]", "method=fastv", "budget=64", "limit=2",
         "max_new_tokens=2", "logger=none"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def done_run(tmp_path_factory, cache) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "fastv-64"
    proc = run_cli([*SMALL, f"hydra.run.dir={run_dir}"], cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file's bytes, but the lock file's (it holds the pid of its latest holder)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".prunebench.lock"}


@pytest.mark.slow
def test_bad_input_keeps_a_users_folder_as_it_was(cache, tmp_path):
    folder = tmp_path / "my-results"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("mine\n")
    (folder / "sub" / "data.csv").write_text("1,2\n")
    before = snapshot(folder)
    proc = run_cli(["model=tiny_random", "method=fastv", "budget=0", "logger=none", f"hydra.run.dir={folder}"], cache)
    assert proc.returncode == 2 and "budget=0" in error_line(proc)
    assert snapshot(folder) == before  # nothing removed, and nothing this run wrote is left behind
    assert sorted(os.listdir(folder)) == ["notes.txt", "sub"]


@pytest.mark.slow
def test_bad_input_with_the_working_directory_as_run_dir(cache, tmp_path):
    (tmp_path / "paper.tex").write_text("\\section{}\n")
    (tmp_path / ".git").mkdir()
    before = snapshot(tmp_path)
    proc = run_cli(["model=tiny_random", "method=fastv", "budget=abc", "logger=none", "hydra.run.dir=."], cache,
                   cwd=tmp_path)
    assert proc.returncode == 2 and "budget='abc'" in error_line(proc)
    assert snapshot(tmp_path) == before and sorted(os.listdir(tmp_path)) == [".git", "paper.tex"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,message",
    [
        (["method=fastv", "+method.bogus=1"], "method.bogus: no such option of harness.methods.fastv.FastV (allowed: budget, K"),
        (["method=adaptinfer", "method.layers=[40]"], "layer 40 is beyond the model's 32 layers"),
        (["model=llava_1_5_7b", "model.load.pretrained=/nonexistent/llava"],
         "model.load.pretrained='/nonexistent/llava' is not a directory"),
        (["tasks=fixtures", "+tasks.data.gqa=/tmp"], "tasks.data.gqa: no such option of harness.fixtures.write_fixtures"),
        (["logger=wandb", "logger.mode=bogus"], "logger.mode='bogus' is not allowed"),
        (["max_failed=-1"], "max_failed=-1 is not allowed"),
    ],
)
def test_bad_options_are_one_line_exit_2_and_no_run_dir(args, message, cache, tmp_path):
    run_dir = tmp_path / "bad"
    proc = run_cli(["model=tiny_random", "method=fastv", "logger=none", *args, f"hydra.run.dir={run_dir}"], cache)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert message in error_line(proc) and "Traceback" not in proc.stderr
    assert not run_dir.exists()


@pytest.mark.slow
def test_an_unwritable_cache_names_the_path_and_the_variable(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    run_dir = tmp_path / "run"
    proc = run_cli([*SMALL, f"hydra.run.dir={run_dir}"], blocker / "cache")
    assert proc.returncode == 2
    line = error_line(proc)
    assert str(blocker / "cache") in line and "PRUNEBENCH_CACHE" in line
    assert not run_dir.exists()


@pytest.mark.slow
def test_resume_with_other_settings_is_refused_naming_each(done_run, cache):
    before = snapshot(done_run)
    proc = run_cli([*SMALL, "max_new_tokens=1", "method.positions=compact", f"hydra.run.dir={done_run}"], cache)
    assert proc.returncode == 2
    line = error_line(proc)
    assert "max_new_tokens: 2 -> 1" in line and "method.positions: 'original' -> 'compact'" in line
    assert "hydra.run.dir=<new dir>" in line
    assert snapshot(done_run) == before  # samples, results and the recorded identity untouched


@pytest.mark.slow
def test_a_smaller_limit_does_not_replace_a_larger_runs_results(done_run, cache):
    before = snapshot(done_run)
    proc = run_cli([*[a for a in SMALL if not a.startswith("limit=")], "limit=1", f"hydra.run.dir={done_run}"], cache)
    assert proc.returncode == 2 and "limit=1 would replace the results" in error_line(proc)
    assert snapshot(done_run) == before


@pytest.mark.slow
def test_a_second_process_on_the_same_run_dir_is_refused(done_run, cache):
    from harness.rundir import RunLock

    with RunLock(done_run):  # as a live run would hold it
        proc = run_cli([*SMALL, f"hydra.run.dir={done_run}"], cache)
    assert proc.returncode == 2 and "is in use by a running process" in error_line(proc)
    assert (done_run / "samples.jsonl").exists()
    again = run_cli([*SMALL, f"hydra.run.dir={done_run}"], cache)  # the lock died with its holder
    assert again.returncode == 0, again.stderr[-3000:]
    lines = (done_run / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 2  # nothing computed twice


@pytest.mark.slow
def test_rerunning_the_same_command_resumes_the_default_run_dir(cache, tmp_path):
    first = run_cli(SMALL, cache, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    (run_dir,) = [p.parent for p in tmp_path.rglob("results.json")]
    assert run_dir == tmp_path / "runs" / "tiny_random" / "fixtures" / "fastv-64+max_new_tokens=2,tasks.names=[mme]"
    second = run_cli([*[a for a in SMALL if not a.startswith("limit=")], "limit=3"], cache, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    records = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert sorted(r["doc_id"] for r in records) == [0, 1, 2]  # two resumed, one new
    assert "mme_total=" in second.stdout and "failed samples: 0 of 3" in second.stdout
    assert "results:" in (run_dir / "run.log").read_text()


@pytest.mark.slow
def test_failed_samples_are_counted_and_max_failed_fails_the_run(cache, tmp_path):
    from datasets import DatasetDict

    from harness.fixtures import POPE_FEATURES, POPE_SPLITS, pope_rows, to_dataset

    splits = {}
    for split in POPE_SPLITS:
        rows = pope_rows(split)
        rows[1]["image"] = {"bytes": b"definitely not a PNG", "path": None}
        splits[split] = to_dataset(rows, POPE_FEATURES)
    DatasetDict(splits).save_to_disk(tmp_path / "pope")
    common = ["model=tiny_random", "tasks=paper", "tasks.names=[pope_random]", f"tasks.data.pope={tmp_path / 'pope'}",
              "method=fastv", "budget=64", "limit=3", "max_new_tokens=2", "logger=none"]
    lenient = run_cli([*common, "max_failed=1", f"hydra.run.dir={tmp_path / 'a'}"], cache)
    assert lenient.returncode == 0, lenient.stderr[-3000:]
    assert "1 FAILED" in lenient.stdout and "failed samples: 1 of 3" in lenient.stdout
    strict = run_cli([*common, "max_failed=0.2", f"hydra.run.dir={tmp_path / 'b'}"], cache)
    assert strict.returncode == 3
    assert "1 of 3 samples failed, more than max_failed=0.2" in error_line(strict)
    assert json.loads((tmp_path / "b" / "results.json").read_text())["tasks"]["pope_random"]["n_failed"] == 1


@pytest.mark.slow
def test_a_damaged_generated_dataset_is_rebuilt_and_a_given_one_is_named(cache, tmp_path):
    from harness.fixtures import write_fixtures

    data = write_fixtures(tmp_path / "fixtures")
    (arrow,) = (data["mme"] / "test").glob("*.arrow")
    arrow.write_bytes(arrow.read_bytes()[:200])  # a truncated file
    proc = run_cli([*SMALL, f"tasks.data.out_dir={tmp_path / 'fixtures'}", f"hydra.run.dir={tmp_path / 'run'}"], cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"the generated dataset {data['mme']} is damaged" in proc.stderr and "RetryError" not in proc.stderr

    given = tmp_path / "given-mme"
    write_fixtures(tmp_path / "copy")
    os.rename(tmp_path / "copy" / "mme", given)
    (arrow,) = (given / "test").glob("*.arrow")
    arrow.unlink()  # a deleted file
    proc = run_cli(["model=tiny_random", "tasks=paper", "tasks.names=[mme]", f"tasks.data.mme={given}", "method=fastv",
                    "budget=64", "limit=2", "logger=none", f"hydra.run.dir={tmp_path / 'run2'}"], cache)
    assert proc.returncode == 2
    assert f"tasks.data.mme={str(given)!r} cannot be read" in error_line(proc) and "Traceback" not in proc.stderr
    assert given.is_dir()  # never removed: the user's data


@pytest.mark.parametrize("config", ["bench", "overhead"])
def test_benchmark_commands_make_no_run_dir_of_their_own(config, tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config, overrides=[f"out={tmp_path}"], return_hydra_config=True)
    assert cfg.hydra.run.dir == str(tmp_path)


@pytest.mark.slow
def test_each_local_launcher_job_gets_its_threads_and_a_passive_wait_policy_before_torch_loads(cache, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    env.update(PRUNEBENCH_CACHE=str(cache), PYTHONPATH=str(ROOT))
    sweep = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "run.py", "-m", "hydra/launcher=local", *SMALL,
                           f"hydra.sweep.dir={sweep}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (results,) = [json.loads(p.read_text()) for p in sweep.rglob("results.json")]
    assert results["latency_ms"]["threads"] == 1 and results["latency_ms"]["omp_wait_policy"] == "PASSIVE"


def test_a_full_disk_or_read_only_run_dir_is_one_line():
    import errno

    from hydra.errors import InstantiationException

    from harness.checks import explain

    full = OSError(errno.ENOSPC, "No space left on device", "/runs/x/samples.jsonl")
    assert explain(full).startswith("cannot write /runs/x/samples.jsonl: No space left on device; free some space")
    read_only = OSError(errno.EROFS, "Read-only file system", "/runs/x/run.json")
    assert "cannot write /runs/x/run.json: Read-only file system" in explain(read_only)
    wrapped = InstantiationException("Error in call to target")
    wrapped.__cause__ = ValueError("budget=9 is unreachable")
    assert explain(wrapped) == "budget=9 is unreachable"
    assert explain(RuntimeError("a bug")) is None  # a bug keeps its traceback
