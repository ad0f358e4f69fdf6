"""results.json / samples.jsonl helpers: strict atomic JSON, torn lines after a crash."""

from __future__ import annotations

import json

from harness.results import SampleLog, read_samples, write_json_atomic


def test_results_json_is_strict_and_atomic(tmp_path):
    path = tmp_path / "results.json"
    write_json_atomic(path, {"metric": float("nan"), "values": [1.5, float("inf")], "nested": {"n": 3}})
    assert json.loads(path.read_text(), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c))) == {
        "metric": None, "values": [1.5, None], "nested": {"n": 3}}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temp file left behind


def test_a_torn_last_line_is_dropped_and_that_sample_runs_again(tmp_path):
    path = tmp_path / "samples.jsonl"
    good = [{"task": "t", "doc_id": i, "response": str(i), "error": None} for i in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in good) + '{"task": "t", "doc_id": 3, "resp')
    assert len(read_samples(tmp_path)) == 3  # reading does not modify the file
    log = SampleLog(path)
    assert len(log) == 3 and log.get("t", 3) is None and log.get("t", 1)["response"] == "1"
    log.append({"task": "t", "doc_id": 3, "response": "3", "error": None})
    log.close()
    lines = path.read_text().splitlines()
    assert [json.loads(line)["doc_id"] for line in lines] == [0, 1, 2, 3]
