"""harness.wandb_logger: offline files W&B writes, the API key never written, failures only warn."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from harness import wandb_logger
from harness.wandb_logger import WandbLogger, log_run

SECRET = "sk-test-0123456789abcdef0123456789abcdef"


def make_run(tmp_path: Path) -> tuple[Path, dict, list[dict]]:
    run_dir = tmp_path / "sweep-20261125" / "fastv-64"
    run_dir.mkdir(parents=True)
    records = [{"task": "gqa", "doc_id": i, "target": "red", "response": "red" if i else "blue", "error": None,
                "prefill_ms": 10.0 + i, "decode_ms": 1.0, "n_new_tokens": 2, "vision_per_layer": [64] * 4,
                "scores": {"pred": "red" if i else "blue", "score": float(i > 0)}} for i in range(3)]
    results = {"schema": 1, "method": "fastv", "budget": 64, "model": "tiny_random", "seed": 0, "limit": 3,
               "tasks": {"gqa": {"metrics": {"exact_match": 66.7}, "n": 3, "n_failed": 0, "scorer": "llava_gqa_eval"}},
               "tokens": {"vision_per_layer": [64.0] * 4, "avg_vision_tokens": 64.0},
               "latency_ms": {"prefill": {"mean": 11.0, "p50": 11.0, "p90": 11.8}, "timer": "perf_counter"},
               "flops": {"prefill_tflops": 0.1, "vanilla_prefill_tflops": 0.9, "reduction": 0.889},
               "memory": {"peak_bytes": 123, "kv_cache_bytes": 45}}
    (run_dir / "results.json").write_text(json.dumps(results))
    (run_dir / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run_dir, results, records


def make_cfg(**logger) -> OmegaConf:
    return OmegaConf.create({
        "method_name": "fastv", "budget": 64, "model": {"name": "tiny_random"},
        "logger": {"_target_": "harness.wandb_logger.WandbLogger", "project": "prunebench-test", **logger},
    })


def read_wandb(run_dir: Path) -> dict:
    """The records of the one offline run under run_dir/wandb, read back with wandb's own file reader."""
    from wandb.proto import wandb_internal_pb2 as pb
    from wandb.sdk.internal import datastore

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    store = datastore.DataStore()
    store.open_for_scan(str(path))
    out = {"config": {}, "summary": {}, "artifacts": {}, "files": []}
    while (data := store.scan_data()) is not None:
        record = pb.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out.update(name=record.run.display_name, group=record.run.run_group, project=record.run.project)
            out["config"].update({item.key: json.loads(item.value_json) for item in record.run.config.update})
        elif kind == "config":  # wandb may send the config in its own record after the run record
            out["config"].update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "summary":
            out["summary"].update({item.key: json.loads(item.value_json) for item in record.summary.update if item.key})
        elif kind == "artifact":
            out["artifacts"][record.artifact.name] = [entry.path for entry in record.artifact.manifest.contents]
        elif kind == "files":
            out["files"] += [f.path for f in record.files.files]
    return out


def test_offline_run_without_a_key(tmp_path, monkeypatch, capfd):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run_dir, results, records = make_run(tmp_path)
    log_run(make_cfg(), run_dir, results, records)
    out, err = capfd.readouterr()
    assert "warning" not in err, err
    sync = [line for line in out.splitlines() if "wandb sync" in line]
    assert len(sync) == 1 and Path(sync[0].split("wandb sync ")[1]).is_dir()

    logged = read_wandb(run_dir)
    assert (logged["name"], logged["group"], logged["project"]) == ("fastv-64", "sweep-20261125", "prunebench-test")
    assert logged["config"]["budget"] == 64 and logged["config"]["logger"]["project"] == "prunebench-test"
    summary = logged["summary"]
    assert summary["tasks/gqa/exact_match"] == 66.7 and summary["flops/reduction"] == 0.889
    assert summary["latency_ms/prefill/mean"] == 11.0 and summary["tokens/avg_vision_tokens"] == 64.0
    assert summary["memory/kv_cache_bytes"] == 45 and summary["method"] == "fastv"
    assert sorted(logged["artifacts"]["results-fastv-64"]) == ["results.json", "samples.jsonl"]
    (table,) = [f for f in logged["files"] if f.startswith("media/table/samples")]
    (table_file,) = run_dir.glob(f"wandb/offline-run-*/files/{table}")
    table_json = json.loads(table_file.read_text())
    assert table_json["columns"] == list(wandb_logger.SAMPLE_COLUMNS + ("score", "pred")) and len(table_json["data"]) == 3
    assert [row[-2:] for row in table_json["data"]] == [[0.0, "blue"], [1.0, "red"], [1.0, "red"]]  # the stored score fields
    assert summary["tasks/gqa/scorer"] == "llava_gqa_eval"
    assert json.loads((run_dir / "results.json").read_text()) == results  # local results untouched


def test_the_api_key_is_never_written(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    run_dir, results, records = make_run(tmp_path)
    cfg = make_cfg(mode="offline")
    cfg.leaky = "${oc.env:WANDB_API_KEY}"  # even a config that interpolates the key does not carry it to W&B
    log_run(cfg, run_dir, results, records)
    out, err = capfd.readouterr()
    assert "warning" not in err, err
    assert SECRET not in out + err
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files)
    leaks = [p for p in files if SECRET.encode() in p.read_bytes()]
    assert not leaks, leaks
    assert read_wandb(run_dir)["config"]["leaky"] == "<redacted:WANDB_API_KEY>"


def test_mode_follows_the_key():
    logger = WandbLogger()
    for env, expected in (({}, "offline"), ({"WANDB_API_KEY": SECRET}, "online"),
                          ({"WANDB_API_KEY": SECRET, "WANDB_MODE": "offline"}, "offline")):
        with pytest.MonkeyPatch.context() as mp:
            for name in ("WANDB_API_KEY", "WANDB_MODE"):
                mp.delenv(name, raising=False)
            for name, value in env.items():
                mp.setenv(name, value)
            assert logger.resolved_mode() == expected, env
    assert WandbLogger(mode="disabled").resolved_mode() == "disabled"


def test_failures_warn_once_and_keep_local_results(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    run_dir, results, records = make_run(tmp_path)
    before = (run_dir / "results.json").read_bytes()

    def broken(*args, **kwargs):
        raise RuntimeError(f"network is down (key {SECRET})")

    monkeypatch.setattr(WandbLogger, "_child", broken)
    log_run(make_cfg(mode="online"), run_dir, results, records)  # must not raise
    log_run(make_cfg(mode="bogus"), run_dir, results, records)   # a bad config value: also only a warning
    log_run(OmegaConf.create({"logger": {"_target_": None}}), run_dir, results, records)  # logger=none: silent
    out, err = capfd.readouterr()
    warnings = err.strip().splitlines()
    assert len(warnings) == 2 and all(w.startswith("warning: logging to ") for w in warnings), err
    assert "network is down" in warnings[0] and "logger.mode='bogus'" in warnings[1]
    assert SECRET not in err + out
    assert (run_dir / "results.json").read_bytes() == before


def test_a_rejected_key_falls_back_to_an_offline_run(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("WANDB_API_KEY", SECRET)  # too short: wandb refuses it at once
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run_dir, results, records = make_run(tmp_path)
    log_run(make_cfg(), run_dir, results, records)
    out, err = capfd.readouterr()
    assert "online init failed" in err and "logging offline instead" in err and SECRET not in out + err
    assert "warning: logging to" not in err  # the offline copy succeeded
    (sync,) = [line for line in out.splitlines() if "wandb sync" in line]
    assert Path(sync.split("wandb sync ")[1]).is_dir()
    assert read_wandb(run_dir)["summary"]["tasks/gqa/exact_match"] == 66.7


@pytest.fixture
def silent_server():
    """A local address that accepts connections and never answers (a server behind a dead network)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


@pytest.mark.slow
def test_an_unanswering_server_costs_seconds_and_leaves_an_offline_run(tmp_path, monkeypatch, capfd, silent_server):
    """A valid-looking key and a server that never answers: before, init waited ~90 s per attempt and
    the run was not saved anywhere; now the init is cut after logger.init_timeout_s and the run is offline."""
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef0123456789abcdef01234567")
    monkeypatch.setenv("WANDB_BASE_URL", silent_server)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run_dir, results, records = make_run(tmp_path)
    started = time.monotonic()
    log_run(make_cfg(init_timeout_s=5, timeout_s=60), run_dir, results, records)
    elapsed = time.monotonic() - started
    out, err = capfd.readouterr()
    assert elapsed < 45, elapsed
    assert "did not answer within 5 s" in err and "warning: logging to" not in err, err
    (sync,) = [line for line in out.splitlines() if "wandb sync" in line]
    assert Path(sync.split("wandb sync ")[1]).is_dir()
    assert read_wandb(run_dir)["name"] == "fastv-64"


def test_bad_logger_options_are_rejected():
    with pytest.raises(ValueError, match="logger.mode='bogus' is not allowed"):
        WandbLogger(mode="bogus")
    with pytest.raises(ValueError, match="logger.timeout_s=0 is not allowed"):
        WandbLogger(timeout_s=0)

