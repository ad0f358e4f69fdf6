"""run.py end to end on the tiny random model and the fixture datasets: contracts, resume, bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import run_cli, start_cli

FIXTURE_RUN = ["model=tiny_random", "tasks=fixtures", "method=fastv", "budget=64", "limit=4",
               "max_new_tokens=12", "logger=none"]
N_SAMPLES = 4 + 4 + 3 * 4  # gqa, mme, pope_{adversarial,popular,random} with limit=4


def kill_after(proc: subprocess.Popen, samples: Path, n: int) -> None:
    """SIGKILL a running `run.py` once its samples.jsonl holds `n` lines (it must not have finished by then)."""
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if samples.exists() and len(samples.read_text().splitlines()) >= n:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, cache) -> Path:
    """One uninterrupted run, shared by the contract and resume tests."""
    run_dir = tmp_path_factory.mktemp("runs") / "fastv-64"
    proc = run_cli([*FIXTURE_RUN, f"hydra.run.dir={run_dir}"], cache, threads=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


@pytest.mark.slow
def test_results_and_samples_follow_the_contract(full_run):
    results = json.loads((full_run / "results.json").read_text())
    for key in ("schema", "method", "budget", "model", "seed", "limit", "tasks", "tokens", "latency_ms", "flops",
                "memory", "config", "versions", "git_commit", "started_at", "finished_at"):
        assert key in results, key
    assert (results["method"], results["budget"], results["model"], results["limit"]) == ("fastv", 64, "tiny_random", 4)
    assert set(results["tasks"]) >= {"gqa", "mme", "pope", "pope_adversarial", "pope_popular", "pope_random"}
    assert results["tasks"]["gqa"]["n"] == 4 and results["tasks"]["pope"]["n"] == 12
    assert "mme_total" in results["tasks"]["mme"]["metrics"] and "pope_f1" in results["tasks"]["pope"]["metrics"]
    assert (results["tasks"]["gqa"]["scorer"], results["tasks"]["mme"]["scorer"], results["tasks"]["pope"]["scorer"]) == (
        "llava_gqa_eval", "mme_calculation", "llava_eval_pope")
    tokens = results["tokens"]
    assert len(tokens["vision_per_layer"]) == 32 and abs(tokens["avg_vision_tokens"] - 64) <= 1
    latency = results["latency_ms"]
    assert latency["timer"] == "perf_counter" and latency["n_timed"] == N_SAMPLES - 3  # warm-up excluded
    for part in ("prefill", "decode_per_token", "e2e"):
        assert set(latency[part]) == {"mean", "p50", "p90"} and latency[part]["mean"] > 0
    assert latency["prefill"]["mean"] < latency["e2e"]["mean"]
    assert 0 < results["flops"]["prefill_tflops"] < results["flops"]["vanilla_prefill_tflops"]
    assert 0.5 < results["flops"]["reduction"] < 1
    assert results["memory"]["peak_bytes"] > 0 and results["memory"]["kv_cache_bytes"] > 0
    assert results["versions"]["transformers"].startswith("5.")

    lines = (full_run / "samples.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == N_SAMPLES
    for record in records:
        for key in ("task", "doc_id", "target", "response", "prefill_ms", "decode_ms", "n_new_tokens",
                    "vision_per_layer", "error"):
            assert key in record, key
        assert record["error"] is None and record["vision_per_layer"][2] == 30  # FastV keeps 30 after layer 1
        assert 1 <= record["n_new_tokens"] <= 12
        assert 0.0 <= record["scores"]["score"] <= 1.0  # the sample's score fields, written as it was evaluated


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_results(full_run, cache, tmp_path):
    run_dir = tmp_path / "resumed"
    samples = run_dir / "samples.jsonl"
    kill_after(start_cli([*FIXTURE_RUN, f"hydra.run.dir={run_dir}"], cache, threads=2, capture=False), samples, 6)
    done_before = len(samples.read_text().splitlines())
    assert 6 <= done_before < N_SAMPLES
    assert not (run_dir / "results.json").exists()

    again = run_cli([*FIXTURE_RUN, f"hydra.run.dir={run_dir}"], cache, threads=2)
    assert again.returncode == 0, again.stderr[-3000:]
    records = [json.loads(line) for line in samples.read_text().splitlines()]
    keys = [(r["task"], r["doc_id"]) for r in records]
    assert len(keys) == len(set(keys)) == N_SAMPLES  # nothing lost, nothing duplicated
    resumed = json.loads((run_dir / "results.json").read_text())
    reference = json.loads((full_run / "results.json").read_text())
    assert {t: v["metrics"] for t, v in resumed["tasks"].items()} == {t: v["metrics"] for t, v in reference["tasks"].items()}
    assert resumed["tokens"] == reference["tokens"]
    by_key = {(r["task"], r["doc_id"]): r["response"] for r in records}
    ref_records = [json.loads(line) for line in (full_run / "samples.jsonl").read_text().splitlines()]
    assert all(by_key[(r["task"], r["doc_id"])] == r["response"] for r in ref_records)


@pytest.mark.slow
def test_killed_batched_run_resumes_to_the_batch_1_records(full_run, cache, tmp_path):
    """A batched run killed mid-way and rerun: every record equals the uninterrupted batch-1 run's."""
    from harness.batch_check import compare_runs

    run_dir = tmp_path / "batched"
    args = [*FIXTURE_RUN, "batch_size=2", "warmup=0", "latency_samples=0", f"hydra.run.dir={run_dir}"]
    samples = run_dir / "samples.jsonl"
    kill_after(start_cli(args, cache, threads=2, capture=False), samples, 6)
    assert 6 <= len(samples.read_text().splitlines()) < N_SAMPLES
    again = run_cli(args, cache, threads=2)
    assert again.returncode == 0, again.stderr[-3000:]
    report = compare_runs(full_run, run_dir)
    assert report["n"] == N_SAMPLES and report["differences"] == [], report["differences"][:5]


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,message",
    [
        (["budget=0"], "budget=0 is outside the 576 image tokens of this model (allowed: 1..576)"),
        (["budget=700"], "budget=700 is outside"),
        (["budget=abc"], "budget='abc' is not an integer"),
        (["budget=20"], "budget=20 is unreachable for fastv"),
        (["limit=abc"], "limit='abc' is not allowed (allowed: a positive integer or null)"),
        (["tasks=fixtures", "tasks.names=[nope]"], "task 'nope' is not in"),
        (["tasks=paper", "tasks.names=[gqa]", "tasks.data.gqa=/nonexistent/gqa"], "'/nonexistent/gqa' is not a directory"),
    ],
)
def test_bad_input_is_one_clear_line_and_no_run_dir(args, message, cache, tmp_path):
    run_dir = tmp_path / "bad"
    proc = run_cli(["model=tiny_random", "method=fastv", "logger=none", *args, f"hydra.run.dir={run_dir}"], cache,
                   threads=2)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
    assert not run_dir.exists()


@pytest.mark.slow
def test_unknown_method_is_one_line_naming_the_allowed_ones(cache, tmp_path):
    proc = run_cli(["method=nope", f"hydra.run.dir={tmp_path / 'bad'}"], cache, threads=2)
    assert proc.returncode == 2
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert "method=nope: no such method 'nope'" in line and "fastv" in line  # lists the allowed ones
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_undecodable_image_is_recorded_and_the_run_continues(cache, tmp_path):
    from datasets import DatasetDict

    from harness.fixtures import POPE_FEATURES, POPE_SPLITS, pope_rows, to_dataset

    splits = {}
    for split in POPE_SPLITS:
        rows = pope_rows(split)
        rows[1]["image"] = {"bytes": b"definitely not a PNG", "path": None}
        splits[split] = to_dataset(rows, POPE_FEATURES)
    DatasetDict(splits).save_to_disk(tmp_path / "pope")
    run_dir = tmp_path / "run"
    proc = run_cli(["model=tiny_random", "tasks=paper", "tasks.names=[pope_random]", f"tasks.data.pope={tmp_path / 'pope'}",
                    "method=fastv", "budget=64", "limit=3", "max_new_tokens=2", "logger=none",
                    f"hydra.run.dir={run_dir}"], cache, threads=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["tasks"]["pope_random"]["n"] == 3 and results["tasks"]["pope_random"]["n_failed"] == 1
    records = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    failed = [r for r in records if r["error"]]
    assert len(failed) == 1 and failed[0]["doc_id"] == 1 and failed[0]["response"] == ""


@pytest.mark.slow
def test_evidence_recall_is_one_at_full_budget_and_below_one_when_pruned(cache, tmp_path):
    """record_kept=true on the shapes tasks: the share of evidence patches that survive each stage."""
    common = ["model=tiny_random", "tasks=shapes", "tasks.names=[shapes_gqa]", "limit=3", "max_new_tokens=1",
              "record_kept=true", "logger=none", "method=fastv"]
    full = run_cli([*common, "budget=576", f"hydra.run.dir={tmp_path / 'full'}"], cache, threads=2)
    pruned = run_cli([*common, "budget=40", f"hydra.run.dir={tmp_path / 'pruned'}"], cache, threads=2)
    assert full.returncode == 0 and pruned.returncode == 0, (full.stderr + pruned.stderr)[-3000:]
    full_results = json.loads((tmp_path / "full" / "results.json").read_text())
    pruned_results = json.loads((tmp_path / "pruned" / "results.json").read_text())
    assert full_results["evidence_recall"] == {"2": 1.0}
    assert 0 <= pruned_results["evidence_recall"]["2"] < 1
    records = [json.loads(line) for line in (tmp_path / "pruned" / "samples.jsonl").read_text().splitlines()]
    for record in records:
        kept = set(record["kept"]["2"])
        assert len(kept) == 4  # FastV keeps round((32*40 - 2*576) / 30) = 4 tokens
        assert 0 <= record["evidence_recall"]["2"] <= 1
