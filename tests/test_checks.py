"""A run checks the whole config before any weight loads: the budget against the model's layers and image
tokens (read from its config alone), the method's options, the tasks and their data locations."""

from __future__ import annotations

import pytest
from helpers import ROOT, compose_job, run_cli

import harness.model
from harness import runner
from harness.checks import check_method
from harness.model import model_shape, read_config

BIG = ["model=llava_1_5_7b", "tasks=paper", "logger=none"]


@pytest.fixture
def no_weights(monkeypatch, tmp_path):
    """Any weight load fails the test; generated data goes under tmp_path."""
    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the config was checked")

    monkeypatch.setattr(harness.model, "load_llava", refuse)
    monkeypatch.setattr(harness.model.LlavaForConditionalGeneration, "from_pretrained", refuse)
    monkeypatch.setenv("PRUNEBENCH_CACHE", str(tmp_path / "cache"))


def test_the_7b_shape_is_read_from_the_committed_config_without_the_hub():
    assert model_shape(read_config(pretrained="llava-hf/llava-1.5-7b-hf")) == (32, 576)
    assert model_shape(read_config(config="tiny", num_layers=8)) == (8, 576)
    assert read_config(pretrained=str(ROOT / "no" / "such" / "dir")) is None  # the load names it


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method=fastv", "budget=700"], r"budget=700 is outside the 576 image tokens of this model \(allowed: 1\.\.576\)"),
        (["method=fastv", "budget=20"], r"budget=20 is unreachable for fastv"),
        (["method=adaptinfer", "method.layers=[1,10,40]"], r"layer 40 is beyond the model's 32 layers"),
        (["method=sparsevlm", "method.schedule=paper", "budget=100"], r"budget=100 has no published SparseVLM"),
        (["method=dart", "method.schedule=paper", "budget=576"], r"schedule=paper keeps 580 image tokens"),
        (["method=pool", "budget=7"], r"budget=7"),
        (["method=fastv", "method.positions=bogus"], r"method\.positions='bogus' is not allowed \(allowed: original, compact\)"),
        (["method=fastv", "tasks.names=[gqa,nope]"], r"task 'nope' is not in"),
        (["method=fastv", "tasks.data.gqa=/no/such/gqa"], r"'/no/such/gqa' is not a directory"),
    ],
)
def test_a_bad_config_on_the_7b_model_fails_before_any_weight_loads(overrides, message, no_weights, tmp_path):
    cfg = compose_job([*BIG, *overrides])
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        runner.run(cfg, tmp_path / "run")


def test_a_budget_error_comes_before_the_run_dir_and_the_tasks(no_weights, tmp_path, monkeypatch):
    import harness.tasks

    monkeypatch.setattr(harness.tasks, "task_manager", lambda *a, **k: pytest.fail("tasks were loaded first"))
    cfg = compose_job([*BIG, "method=fastv", "budget=700"])
    with pytest.raises(ValueError, match="budget=700"):
        runner.run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_check_method_returns_the_method_the_engine_gets():
    method = check_method(compose_job([*BIG, "method=vanilla", "budget=64"]))
    assert method.name == "vanilla" and method.budget == 64  # checking leaves it as configured
    assert method.schedule(32, 576).budget == 576  # the engine's decision: the whole image block
    method = check_method(compose_job(["model=tiny_random", "model.load.num_layers=8", "method=fastv", "budget=200"]))
    assert method.budget == 200
    with pytest.raises(ValueError, match=r"budget=100 is unreachable for fastv with K=2 on 8 layers"):  # fine on 32
        check_method(compose_job(["model=tiny_random", "model.load.num_layers=8", "method=fastv", "budget=100"]))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["method=fastv", "budget=700"], "error: budget=700 is outside the 576 image tokens of this model (allowed: 1..576)"),
        (["method=fastv", "method.positions=bogus"], "error: method.positions='bogus' is not allowed (allowed: original, compact)"),
    ],
)
def test_run_py_on_the_7b_model_is_one_line_and_exit_2_without_the_hub(args, message, tmp_path):
    proc = run_cli([*BIG, *args, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path / "cache",
                   env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert [line for line in proc.stderr.splitlines() if line.startswith("error: ")] == [message]
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()
