"""The throughput benchmark: its smoke run's report, the batch-1 comparison, the suite's samples and its config checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from harness.shapes.data import EVAL_SEEDS, make_split
from harness.throughput import Sample, batches, check, mismatches, suite_samples, why

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_quick_throughput_writes_json_and_markdown_with_no_mismatch(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "harness.throughput", "--quick", f"out={tmp_path}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "throughput.json").read_text())
    suite = report["suite"]
    assert suite["mismatches"] == 0 and suite["mismatch_list"] == []
    assert suite["samples"] == 10 and suite["batch_sizes"] == [1, 2] and suite["timer"] == "perf_counter"
    rows = {(r["method"], r["batch_size"]): r for r in suite["rows"]}
    assert {("vanilla", 1), ("vanilla", 2), ("fastv", 1), ("fastv", 2), ("visionzip", 1)} <= set(rows)
    for (name, size), row in rows.items():
        assert row["mismatches"] == 0
        assert row["samples_per_s"] > 0 and abs(row["samples_per_s"] * row["seconds"] - 10) < 1e-6
        assert row["prompt_tokens_per_s"] > row["samples_per_s"] and row["generated_tokens_per_s"] > 0
        assert row["speedup"] == 1.0 if size == 1 else row["speedup"] > 0
        assert 0 <= row["pad_share"] < 1 and 0 <= row["idle_row_step_share"] < 1
    assert ("visionzip", 2) in rows and suite["skipped"] == {}  # pre-LLM methods batch too: none left at batch 1
    assert [p["batch_size"] for p in suite["profile"]] == [1, 2]
    for p in suite["profile"]:
        assert abs(p["matmul_share"] + p["other_ops_share"] + p["python_share"] - 1) < 1e-6 and p["matmul_share"] > 0
    prefill = report["prefill"]
    assert prefill["prompt_tokens"] > 576 and prefill["batch_sizes"] == [1, 4]
    assert {(r["method"], r["batch_size"]) for r in prefill["rows"]} == {(m, b) for m in ("vanilla", "fastv") for b in (1, 4)}
    assert all(r["tokens_per_s"] > 0 for r in prefill["rows"])
    assert "versions" in report and report["versions"]["torch"]
    markdown = (tmp_path / "throughput.md").read_text()
    assert "| fastv |" in markdown and "differ from batch 1: **0**" in markdown and "| vanilla | 576 |" in markdown
    assert "### Why" in markdown and report["why"].startswith("Averaged over the 3 configurations")


def test_mismatches_names_each_sample_and_field_that_differs():
    ref = [{"task": "t", "doc_id": i, "response": "yes", "vision_per_layer": [576, 64]} for i in range(3)]
    same = [dict(r) for r in ref]
    assert mismatches(ref, same) == []
    other = [dict(r) for r in ref]
    other[1] = {**other[1], "response": "no"}
    other[2] = {**other[2], "vision_per_layer": [576, 63]}
    found = mismatches(ref, other)
    assert [(m["doc_id"], m["field"], m["batch_1"], m["batched"]) for m in found] == [
        (1, "response", "yes", "no"), (2, "vision_per_layer", [576, 64], [576, 63])]
    with pytest.raises(ValueError):  # a lost sample is an error, not a silent pass
        mismatches(ref, other[:2])


def test_batches_stay_within_a_task_in_order():
    samples = [Sample(task, i, "q", None, "a") for task, n in (("a", 5), ("b", 3)) for i in range(n)]
    groups = batches(samples, 2)
    assert [[(s.task, s.doc_id) for s in g] for g in groups] == [
        [("a", 0), ("a", 1)], [("a", 2), ("a", 3)], [("a", 4)], [("b", 0), ("b", 1)], [("b", 2)]]


def test_suite_samples_are_the_tasks_first_questions_with_their_prompts():
    samples = suite_samples(2)
    assert [(s.task, s.doc_id) for s in samples][::2] == [
        ("shapes_pope_random", 0), ("shapes_pope_popular", 0), ("shapes_pope_adversarial", 0), ("shapes_gqa", 0),
        ("shapes_mme", 0)]
    gqa = make_split("gqa", None, EVAL_SEEDS["gqa"], 2)
    first = samples[6]
    assert first.text == gqa[0]["question"] + "\nAnswer the question using a single word or phrase."
    assert first.target == gqa[0]["answer"] and first.image.tobytes() == gqa[0]["image"].convert("RGB").tobytes()
    assert samples[8].text.endswith("Please answer yes or no.")  # MME prompts as stored


@pytest.mark.parametrize(("override", "message"), [
    ("batch_sizes=[1,0]", r"batch_sizes=\[1, 0\] \(allowed: a list of integers >= 1\)"),
    ("suite.samples_per_task=61", r"suite.samples_per_task=61 \(allowed: 1..60"),
    ("methods=[fastv,nosuch]", r"methods=\['fastv', 'nosuch'\]: \['nosuch'\] have no config"),
    ("profile.method=pdrop", r"profile.method='pdrop' is not run"),
])
def test_bad_options_are_refused_by_name(override, message):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("throughput", overrides=["methods=[fastv]", override])
    with pytest.raises(ValueError, match=message):
        check(cfg)


def test_why_states_the_measured_gains_and_where_they_stop():
    rows = [{"method": m, "batch_size": b, "speedup": s, "pad_share": 0.002 * (b > 1), "idle_row_step_share": 0.0}
            for m, speedups in (("vanilla", (1.0, 1.5, 1.6, 1.6)), ("fastv", (1.0, 1.3, 1.4, 1.44)))
            for b, s in zip((1, 4, 8, 16), speedups)]
    suite = {"rows": rows, "batch_sizes": [1, 4, 8, 16], "profile": [], "threads": 2, "profile_method": "fastv"}
    text = why(suite)
    assert "1.40x at batch 4, 1.50x at batch 8, 1.52x at batch 16" in text
    assert "batch 8 already reaches 95% of the best (1.52x at batch 16)" in text and "0.2% of the prompt tokens" in text
    profile = {"wall": (100.0, 40.0), "python": (25.0, 3.0), "other_ops": (20.0, 7.0), "matmul": (55.0, 30.0)}
    suite["profile"] = [{"batch_size": b, **{f"{k}_ms_per_sample": v[i] for k, v in profile.items()},
                         "matmul_share": profile["matmul"][i] / profile["wall"][i]} for i, b in enumerate((1, 16))]
    text = why(suite)
    assert "of the 60.0 ms saved, 22.0 ms is Python" in text and "13.0 ms small tensor ops" in text
    assert "25.0 ms matrix products (55.0 -> 30.0)" in text and "is 75% matrix products" in text
