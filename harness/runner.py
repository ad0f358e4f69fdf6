"""run(cfg): one explicit pass from config to results.json.

build model -> attach method -> lmms-eval on our tasks -> results.json (+ samples.jsonl as we go) -> logger.
"""

from __future__ import annotations

import datetime
import json
import platform
import subprocess
from pathlib import Path

import datasets
import numpy as np
import torch
import transformers
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import harness
from harness.budget import paper_budget
from harness.engine import PruningEngine
from harness.families import method_overrides
from harness.results import SCHEMA, SampleLog, write_json_atomic
from harness.scoring import scorer_for
from harness.timing import peak_memory, stats

IDENTITY_KEYS = ("method", "budget", "model", "seed", "tasks")  # a run dir belongs to one of each


def run(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Evaluate one method at one budget; write `run_dir/results.json`; return it.

    Rerunning in the same `run_dir` resumes: samples already in samples.jsonl are not run again.
    """
    check_config(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    started_at = _now()
    identity = check_identity(cfg, run_dir)

    # 1. model + method
    model, processor = instantiate(cfg.model.load)
    if processor is None:
        raise ValueError(f"model={cfg.model.name} has no processor (a config-only model cannot run tasks)")
    method = instantiate(cfg.method, **method_overrides(cfg.model, cfg.method_name))
    engine = PruningEngine(model, method, record_kept=cfg.record_kept, time_scoring=cfg.time_scoring)

    # 2. tasks (data located or materialised here) and the lmms-eval model
    from harness.lmms_model import PrunedLlava
    from harness.tasks import data_locations, task_manager, task_specs

    datasets.disable_progress_bars()
    data = data_locations(cfg.tasks.data)
    manager = task_manager()
    specs = task_specs(list(cfg.tasks.names), data, manager)
    log = SampleLog(run_dir / "samples.jsonl")
    lm = PrunedLlava(engine, processor, log, prompt=cfg.model.prompt, seed=cfg.seed, warmup=cfg.warmup,
                     record_kept=cfg.record_kept, max_new_tokens=cfg.max_new_tokens,
                     image_placeholder=cfg.model.get("image_placeholder", "<image>"))

    # 3. evaluate
    from lmms_eval.evaluator import simple_evaluate

    with engine:
        out = simple_evaluate(
            model=lm, tasks=specs, task_manager=manager, limit=cfg.limit, bootstrap_iters=0,
            log_samples=False, distributed_executor_backend="torchrun", random_seed=cfg.seed,
            numpy_random_seed=cfg.seed, torch_random_seed=cfg.seed, verbosity="WARNING",
        )
    log.close()
    records = [log.get(task, doc_id) for task, doc_id in lm.requested]

    # 4. results.json
    results = summarize(out, records, engine, model, cfg, identity)
    results.update(started_at=started_at, finished_at=_now())
    write_json_atomic(run_dir / "results.json", results)

    # 5. logger (cfg.logger; W&B by default): after results.json, so a logging failure is only a warning
    from harness.wandb_logger import log_run

    log_run(cfg, run_dir, results, records)
    return results


def check_config(cfg: DictConfig) -> None:
    """Top-level keys with the wrong type: one clear error naming the value and what is allowed."""
    def is_int(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    checks = {
        "limit": (cfg.limit is None or (is_int(cfg.limit) and cfg.limit > 0), "a positive integer or null"),
        "seed": (is_int(cfg.seed) and cfg.seed >= 0, "a non-negative integer"),
        "warmup": (is_int(cfg.warmup) and cfg.warmup >= 0, "a non-negative integer"),
        "record_kept": (isinstance(cfg.record_kept, bool), "true or false"),
        "time_scoring": (isinstance(cfg.time_scoring, bool), "true or false"),
        "max_new_tokens": (cfg.max_new_tokens is None or (is_int(cfg.max_new_tokens) and cfg.max_new_tokens > 0),
                           "a positive integer or null"),
    }
    for key, (ok, allowed) in checks.items():
        if not ok:
            raise ValueError(f"{key}={cfg[key]!r} is not allowed (allowed: {allowed})")


def check_identity(cfg: DictConfig, run_dir: Path) -> dict:
    """Record what this run dir holds; refuse to resume a run dir made for another method/budget/model/tasks."""
    identity = {
        "method": cfg.method_name, "budget": cfg.budget, "model": cfg.model.name,
        "seed": cfg.seed, "tasks": list(cfg.tasks.names),
    }
    path = run_dir / "run.json"
    if path.exists():
        before = json.loads(path.read_text())
        changed = {k: (before.get(k), identity[k]) for k in IDENTITY_KEYS if before.get(k) != identity[k]}
        if changed:
            raise ValueError(
                f"run dir {run_dir} holds another run ({', '.join(f'{k}: {a!r} -> {b!r}' for k, (a, b) in changed.items())}); "
                "use a new hydra.run.dir"
            )
    else:
        write_json_atomic(path, identity)
    return identity


def summarize(out: dict, records: list[dict], engine: PruningEngine, model, cfg: DictConfig, identity: dict) -> dict:
    """Build the results.json contract from lmms-eval's output and our per-sample records."""
    ok = [r for r in records if r["error"] is None]
    tasks = {}
    for task, res in (out or {}).get("results", {}).items():
        metrics = {
            key.split(",")[0]: value for key, value in res.items()
            if "," in key and "_stderr" not in key and isinstance(value, (int, float))
        }
        members = out.get("group_subtasks", {}).get(task) or [task]  # a group counts its subtasks' samples
        mine = [r for r in records if r["task"] in members]
        tasks[task] = {"metrics": metrics, "n": len(mine), "n_failed": sum(r["error"] is not None for r in mine)}
        scorers = sorted({s.name for s in map(scorer_for, members) if s is not None})
        if scorers:  # the scoring rule(s) behind the metrics (harness.scoring)
            tasks[task]["scorer"] = scorers[0] if len(scorers) == 1 else scorers

    num_layers, num_images = engine.num_layers, engine.num_image_tokens
    per_layer = np.mean([r["vision_per_layer"] for r in ok], axis=0).tolist() if ok else []
    tokens = {"vision_per_layer": per_layer, "avg_vision_tokens": float(np.mean(per_layer)) if per_layer else None}
    with_image = [r for r in ok if r.get("image_tokens")]
    if with_image:  # the same fraction budget/576 of each sample's image tokens on families where counts vary
        tokens["image_tokens"] = float(np.mean([r["image_tokens"] for r in with_image]))
        tokens["realized_fraction"] = float(np.mean([np.mean(r["vision_per_layer"]) / r["image_tokens"]
                                                     for r in with_image]))
        tokens["budget_label"] = engine.family.budget_label(engine.method.budget, tokens["image_tokens"])
    if cfg.method.get("schedule") in ("paper", "derived"):
        tokens["avg_vision_tokens_paper"] = paper_budget(engine.stages, num_layers, num_images)

    timed = [r for r in ok if not r["warmup"]]
    device = next(model.parameters()).device
    latency = {
        "prefill": stats([r["prefill_ms"] for r in timed]),
        "decode_per_token": stats([r["decode_ms"] for r in timed if r["decode_ms"] is not None]),
        "e2e": stats([r["e2e_ms"] for r in timed]),
        "timer": "cuda_event" if device.type == "cuda" else "perf_counter",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "n_timed": len(timed),
    }
    if engine.time_scoring:
        latency["scoring"] = stats([r["scoring_ms"] for r in timed])
        prefill = latency["prefill"]["mean"]
        latency["scoring"]["share_of_prefill"] = (
            latency["scoring"]["mean"] / prefill if timed and prefill else None
        )

    pruned = float(np.mean([r["prefill_flops"] for r in ok])) if ok else None
    vanilla = float(np.mean([r["vanilla_prefill_flops"] for r in ok])) if ok else None
    flops = {
        "prefill_tflops": pruned / 1e12 if ok else None,
        "vanilla_prefill_tflops": vanilla / 1e12 if ok else None,
        "reduction": 1.0 - pruned / vanilla if ok else None,
    }
    peak, kind = peak_memory(device)
    memory = {
        "peak_bytes": peak, "peak_kind": kind,
        "kv_cache_bytes": int(np.mean([r["kv_cache_bytes"] for r in ok])) if ok else None,
    }
    evidence = [r["evidence_recall"] for r in ok if r.get("evidence_recall")]
    results = {
        "schema": SCHEMA,
        **{k: identity[k] for k in ("method", "model", "seed")},
        "budget": engine.method.budget,  # vanilla: 576, blind: 0, whatever budget= said
        "limit": cfg.limit,
        "tasks": tasks,
        "tokens": tokens,
        "method_facts": engine.facts(),  # resolved positions, decode positions, schedule (matched|paper|derived)
        "latency_ms": latency,
        "flops": flops,
        "memory": memory,
    }
    if evidence:
        layers = sorted({layer for e in evidence for layer in e}, key=int)
        results["evidence_recall"] = {layer: float(np.mean([e[layer] for e in evidence if layer in e])) for layer in layers}
    results.update(
        config=OmegaConf.to_container(cfg, resolve=True),
        versions=versions(),
        git_commit=git_commit(),
    )
    return results


def versions() -> dict:
    import lmms_eval

    return {
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "lmms_eval": getattr(lmms_eval, "__version__", _dist_version("lmms_eval")), "harness": harness.__version__,
    }


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """HEAD of the harness checkout, with `-dirty` when it has uncommitted changes."""
    here = Path(__file__).parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
