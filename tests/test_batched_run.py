"""Run level: a sweep of every method at batch_size 1 and 8 over the embedded suite gives the same records.

`python -m harness.batch_check --limit 8`: one `python run.py -m` sweep (the way users run tables), each
method at batch 1 and at batch 8, one task of each kind in the default embedded suite (GQA-style open
answers, MME's paired yes/no questions, POPE yes/no) cut to 8 samples each (one full batch per task). Every sample's record (response, scores, kept-set counts, tokens per layer, FLOPs,
KV-cache bytes) must be identical; only the timing fields differ. The full suite (380 samples per
method) is checked by the same command without `--limit` (docs/bench/batch_equivalence.md).
"""

from __future__ import annotations

import json

import pytest

from harness.batch_check import batch_methods, main
from harness.rundir import default_run_name


@pytest.mark.slow
def test_sweep_at_batch_8_matches_batch_1_for_every_method(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    sweep, out = tmp_path / "sweep", tmp_path / "report" / "check"
    status = main(["--limit", "8", "--tasks", "shapes_gqa,shapes_mme,shapes_pope_random", "--sweep-dir", str(sweep),
                   "--out", str(out)])
    report = json.loads(out.with_suffix(".json").read_text())
    assert set(report["methods"]) == set(batch_methods())
    for method, r in report["methods"].items():
        assert r["n"] == 24 and r["failed"] == 0, f"{method}: {r}"
        assert r["differences"] == [], f"{method}: {r['differences'][:5]}"
        eight = sweep / "tiny_llava_shapes" / "shapes" / default_run_name(method, 64, 8)
        batched = [json.loads(line) for line in (eight / "samples.jsonl").read_text().splitlines()]
        assert all(rec["batch"]["size"] == 8 and rec["prefill_ms"] is None for rec in batched), method
        throughput = json.loads((eight / "results.json").read_text())["throughput"]
        assert throughput["batch_size"] == 8 and throughput["n_batches"] == 3, method
    assert status == 0
