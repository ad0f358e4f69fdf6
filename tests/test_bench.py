"""The benchmark's --quick smoke run: fields of bench.json and FLOPs bookkeeping."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_quick_bench_writes_json_and_markdown(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, "-m", "harness.bench", "--quick", f"out={tmp_path}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    for key in ("model", "dtype", "device", "timer", "versions", "rows", "prompt_tokens", "new_tokens", "reps"):
        assert key in report
    assert report["timer"] == "perf_counter" and report["prompt_tokens"] > 576
    rows = {(r["method"], r["budget"]): r for r in report["rows"]}
    methods = ("fastv", "adaptinfer", "dart", "divprune", "cdpruner")
    assert set(rows) == {("vanilla", 576)} | {(m, b) for m in methods for b in (192, 64)}
    assert rows[("vanilla", 576)]["flops_reduction"] == 0.0 and rows[("vanilla", 576)]["speedup"] == 1.0
    for key, row in rows.items():
        for field in ("prefill_ms", "decode_ms_per_token", "e2e_ms", "scoring_ms", "ideal_speedup", "speedup_ratio",
                      "peak_bytes", "peak_above_start_bytes", "kv_cache_bytes", "avg_vision_tokens"):
            assert row[field] is not None and row[field] >= 0, (key, field)
        if key[0] != "vanilla":
            assert row["flops_reduction"] > 0 and row["ideal_speedup"] > 1
            if key == ("cdpruner", 192):  # the tiny model's 64-dim features cap its DPP: the distinct picks, fewer
                assert 64 <= row["avg_vision_tokens"] < 192
            else:
                assert abs(row["avg_vision_tokens"] - key[1]) <= 1
            assert row["kv_cache_bytes"] < rows[("vanilla", 576)]["kv_cache_bytes"]
    if sys.platform == "linux":  # a peak window per call: the pruned calls need less than vanilla's
        assert report["peak_kind"] == "peak_rss"
        assert 0 < rows[("fastv", 64)]["peak_above_start_bytes"] < rows[("vanilla", 576)]["peak_above_start_bytes"]
    assert "| fastv | 64 |" in (tmp_path / "bench.md").read_text()


@pytest.mark.slow
def test_overhead_runs_the_same_samples_both_ways(tmp_path):
    """The harness path (vanilla attached) and the bare generate loop answer identically; the report
    has both timings."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PRUNEBENCH_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "harness.overhead", "model=tiny_llava_shapes",
                           "tasks.names=[shapes_gqa,shapes_pope_random]", "limit=3", "reps=1", f"out={tmp_path}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "overhead.json").read_text())
    assert report["samples"] == 6 and report["reps"] == 1
    assert report["same_answers"] == 1.0
    assert report["bare_s"] > 0 and report["harness_s"] > 0
    assert abs(report["overhead"] - (report["harness_s"] / report["bare_s"] - 1)) < 1e-9
    assert "Overhead" in (tmp_path / "overhead.md").read_text()
