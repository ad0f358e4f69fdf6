"""run(cfg): one explicit pass from config to results.json.

build model -> attach method -> lmms-eval on our tasks -> results.json (+ samples.jsonl as we go) -> logger.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import platform
import subprocess
from collections import defaultdict
from pathlib import Path

import datasets
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from harness.checks import check_config, check_method, make_logger
from harness.engine import PruningEngine
from harness.methods.base import declared_facts
from harness.results import SCHEMA, SampleLog, versions, write_json_atomic
from harness.identity import IDENTITY_FILE, check_identity, read_json
from harness.rundir import RunDir
from harness.schedule import paper_tokens
from harness.scoring import scorer_for
from harness.timing import peak_memory, stats

LOG = logging.getLogger("prunebench")  # <run dir>/run.log (conf/config.yaml, hydra.job_logging)


def run(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Evaluate one method at one budget; write `run_dir/results.json`; return it.

    Rerunning in the same `run_dir` resumes: samples already in samples.jsonl are not run again, after
    `check_identity` has made sure that everything that could change an answer is the same; a run dir
    that already holds this run complete is left as it is. One process at a time: a second one on the
    same dir is refused (`RunDir`), and a run that fails before its first sample removes what it created.
    """
    check_config(cfg)
    logger = make_logger(cfg)  # a bad logger option fails now, not after the evaluation
    method = check_method(cfg)  # options and budget against the model's config: before any weight loads
    with RunDir(run_dir) as rd:
        return _run(cfg, rd, logger, method)


def _run(cfg: DictConfig, rd: RunDir, logger, method) -> dict:
    started_at = _now()
    run_dir = rd.path
    rd.create(run_dir / IDENTITY_FILE)
    identity = check_identity(cfg, run_dir)
    rd.record_config(cfg)
    previous = completed(cfg, run_dir)
    if previous is not None:
        n = sum(t["n"] for name, t in previous["tasks"].items() if not _is_group(name, previous))
        print(f"{run_dir} already holds this run, complete ({n} samples, none failed): nothing to do. "
              f"To evaluate again, delete {run_dir / 'results.json'} or choose another hydra.run.dir.")
        print_summary(previous, run_dir)
        return previous

    # 1. tasks (data located, checked or materialised here): a bad location fails before the model loads
    from harness.tasks import data_locations, task_manager, task_specs

    datasets.disable_progress_bars()
    data = data_locations(cfg.tasks.data, cache=cfg.paths.cache)
    manager = task_manager()
    specs = task_specs(list(cfg.tasks.names), data, manager)

    # 2. model + method, and the lmms-eval model
    from harness.lmms_model import PrunedLlava

    model, processor = instantiate(cfg.model.load)
    if processor is None:
        raise ValueError(f"model={cfg.model.name} has no processor (a config-only model cannot run tasks)")
    engine = PruningEngine(model, method, record_kept=cfg.record_kept, time_scoring=cfg.time_scoring)
    log = SampleLog(rd.create(run_dir / "samples.jsonl"))
    lm = PrunedLlava(engine, processor, log, prompt=cfg.model.prompt, seed=cfg.seed, warmup=cfg.warmup,
                     record_kept=cfg.record_kept, max_new_tokens=cfg.max_new_tokens,
                     image_placeholder=cfg.model.get("image_placeholder", "<image>"),
                     batch_size=cfg.get("batch_size", 1), latency_samples=cfg.get("latency_samples", 20))

    # 3. evaluate
    from lmms_eval.evaluator import simple_evaluate

    with engine:
        out = simple_evaluate(
            model=lm, tasks=specs, task_manager=manager, limit=cfg.limit, bootstrap_iters=0,
            log_samples=False, distributed_executor_backend="torchrun", random_seed=cfg.seed,
            numpy_random_seed=cfg.seed, torch_random_seed=cfg.seed, verbosity="WARNING",
        )
    log.compact()  # closes it; one line per sample (a retried failed sample's new record replaces the old one)
    records = [log.get(task, doc_id) for task, doc_id in lm.requested]
    failed = sum(r["error"] is not None for r in records)
    if failed:
        LOG.warning("%d of %d samples failed (their errors are in %s)", failed, len(records), log.path)

    # 4. results.json
    results = summarize(out, records, engine, model, cfg, identity)
    results.update(started_at=started_at, finished_at=_now())
    write_json_atomic(run_dir / "results.json", results)

    # 5. logger (cfg.logger; W&B by default): after results.json, so a logging failure is only a warning
    from harness.wandb_logger import log_run

    log_run(cfg, run_dir, results, records, logger=logger)
    print_summary(results, run_dir)
    return results


def completed(cfg: DictConfig, run_dir: Path) -> dict | None:
    """The results.json of this very run when it is complete (same identity, checked before; same limit;
    no failed sample, which a rerun retries), else None."""
    path = run_dir / "results.json"
    if not path.exists():
        return None
    results = read_json(path)
    if results.get("limit") != cfg.limit or not results.get("tasks"):
        return None
    if any(t.get("n_failed") for name, t in results["tasks"].items() if not _is_group(name, results)):
        return None
    return results


class FailedSamples(Exception):
    """More samples failed than `max_failed` allows."""


def check_failed(cfg: DictConfig, results: dict) -> None:
    """Raise FailedSamples when the failed samples exceed `max_failed` (a count, or a share when a float)."""
    limit = cfg.get("max_failed")
    n = sum(t["n"] for name, t in results["tasks"].items() if not _is_group(name, results))
    failed = sum(t["n_failed"] for name, t in results["tasks"].items() if not _is_group(name, results))
    if limit is None or failed == 0:
        return
    allowed = limit if isinstance(limit, int) else limit * n
    if failed > allowed:
        raise FailedSamples(f"{failed} of {n} samples failed, more than max_failed={limit}; "
                            f"results.json is written, the errors are in samples.jsonl")


def _is_group(name: str, results: dict) -> bool:
    return "subtasks" in results["tasks"][name]


def print_summary(results: dict, run_dir: Path) -> None:
    """The final printout (also in run.log): every task and group, failed samples, tokens, latency, FLOPs."""
    lines = [f"results: {run_dir / 'results.json'}"]
    for task, res in results["tasks"].items():
        metrics = ", ".join(f"{k}={_fmt(v)}{_max_suffix(task, k, results)}" for k, v in res["metrics"].items())
        failed = f", {res['n_failed']} FAILED" if res.get("n_failed") else ""
        lines.append(f"  {task}: {metrics or 'no metrics'} (n={res['n']}{failed})")
    for prefix, f1s in _pope_splits(results).items():  # a suite without a POPE group: its headline, the mean F1
        lines.append(f"  {prefix}pope (mean of {len(f1s)} splits): pope_f1={_fmt(float(np.mean(f1s)))}")
    tokens, latency, flops = results["tokens"], results["latency_ms"], results["flops"]
    below = tokens.get("below_budget")
    lines.append(f"  image tokens per layer (realized): {_fmt(tokens.get('avg_vision_tokens'))}" + (
        f" (fewer than the budget {below['budget']} in {below['samples']} of {below['of']} samples)" if below else ""))
    lines.append(f"  latency (ms, mean of {latency.get('n_timed', 0)} timed samples): prefill "
                 f"{_fmt(latency['prefill'].get('mean'))}, decode/token {_fmt(latency['decode_per_token'].get('mean'))}, "
                 f"end-to-end {_fmt(latency['e2e'].get('mean'))}")
    reduction = flops.get("reduction")
    lines.append(f"  prefill FLOPs: {_fmt(flops.get('prefill_tflops'), '.4g')} TFLOPs "
                 f"({'n/a' if reduction is None else f'{100 * reduction:.1f}% fewer than vanilla'})")
    tput = results.get("throughput") or {}
    if tput.get("samples_per_s"):
        lines.append(f"  throughput (batch {tput['batch_size']}): {tput['samples_per_s']:.2f} samples/s, "
                     f"{_fmt(tput.get('generated_tokens_per_s'))} generated tokens/s")
    speedup = vanilla_speedup(results, run_dir)
    if speedup:
        lines.append(speedup)
    n = sum(r["n"] for t, r in results["tasks"].items() if not _is_group(t, results))
    failed = sum(r["n_failed"] for t, r in results["tasks"].items() if not _is_group(t, results))
    lines.append(f"  failed samples: {failed} of {n}" + (" (see `error` in samples.jsonl)" if failed else ""))
    if results.get("limit") is not None:
        lines.append(f"  limit={results['limit']}: a partial run; the leaderboard marks it")
    print("\n".join(lines))
    LOG.info("\n".join(lines))


def vanilla_speedup(results: dict, run_dir: Path) -> str | None:
    """`speedup vs vanilla: ...` from the batch-1 latency means of this run and of a vanilla run beside it
    (a sibling run dir of method vanilla with the same model, tasks, seed and max_new_tokens), if any."""
    if results.get("method") == "vanilla":
        return None
    mine = results["latency_ms"]
    same = ("model", "tasks", "seed", "max_new_tokens")
    for sibling in sorted(Path(run_dir).parent.glob("vanilla*/results.json")):
        try:
            vanilla = read_json(sibling)
        except ValueError:
            continue
        config, theirs = vanilla.get("config") or {}, vanilla.get("latency_ms") or {}
        if vanilla.get("method") != "vanilla" or any(config.get(k) != results["config"].get(k) for k in same):
            continue
        parts = [f"{name} {theirs[key]['mean'] / mine[key]['mean']:.2f}x" for key, name in
                 (("prefill", "prefill"), ("e2e", "end-to-end"))
                 if (theirs.get(key) or {}).get("mean") and (mine.get(key) or {}).get("mean")]
        if parts:
            return (f"  speedup vs vanilla ({sibling.parent}): {', '.join(parts)} (batch-1 latency means over "
                    f"{mine.get('n_timed')} and {theirs.get('n_timed')} timed samples)")
    return None


def _pope_splits(results: dict) -> dict[str, list[float]]:
    """{prefix: F1 of each split} for POPE splits (`<prefix>pope_random`, ...) whose group is not in the results."""
    splits = defaultdict(list)
    for task, res in results["tasks"].items():
        prefix, _, split = task.rpartition("pope_")
        f1 = next((v for k, v in res["metrics"].items() if k.endswith("f1")), None)
        if split in ("random", "popular", "adversarial") and f1 is not None and f"{prefix}pope" not in results["tasks"]:
            splits[prefix].append(f1)
    return {prefix: f1s for prefix, f1s in splits.items() if len(f1s) > 1}


def _fmt(value, spec: str = ".2f") -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:{spec}}"


def _max_suffix(task: str, metric: str, results: dict) -> str:
    """MME scores are sums over categories of up to 200 points each: show the maximum."""
    maximum = results["tasks"][task].get("max", {}).get(metric)
    return f" / {maximum}" if maximum else ""


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
        if members != [task]:
            tasks[task]["subtasks"] = list(members)
        categories = {r.get("category") for r in mine if r.get("category") is not None}
        totals = {k: 200 * len(categories) for k in metrics if "mme" in task and "total" in k and categories}
        if totals:  # MME: up to 200 points per category (acc + acc+)
            tasks[task]["max"] = totals

    num_layers, num_images = engine.num_layers, engine.num_image_tokens
    per_layer = np.mean([r["vision_per_layer"] for r in ok], axis=0).tolist() if ok else []
    tokens = {"vision_per_layer": per_layer, "avg_vision_tokens": float(np.mean(per_layer)) if per_layer else None}
    with_image = [r for r in ok if r.get("image_tokens")]
    if with_image:  # the same fraction budget/576 of each sample's image tokens on families where counts vary
        tokens["image_tokens"] = float(np.mean([r["image_tokens"] for r in with_image]))
        tokens["realized_fraction"] = float(np.mean([np.mean(r["vision_per_layer"]) / r["image_tokens"]
                                                     for r in with_image]))
        tokens["budget_label"] = engine.family.budget_label(engine.decision.budget, tokens["image_tokens"])
    short = [r for r in ok if r.get("kept_fewer")]
    if short:  # a pre-LLM method that ran out of distinct tokens (CDPruner once its DPP has no gain left)
        tokens["below_budget"] = {"budget": engine.decision.budget, "samples": len(short), "of": len(ok),
                                  "avg_kept_fewer": float(np.mean([r["kept_fewer"] for r in ok]))}
    facts = {**engine.facts(), **declared_facts(engine.method)}
    if facts["schedule"] in ("paper", "derived"):  # the paper's own count, where the method declares one
        paper = paper_tokens(facts["paper_accounting"], engine.stages, engine.decision.budget, num_layers, num_images)
        if paper is not None:
            tokens["avg_vision_tokens_paper"] = paper

    timed = [r for r in ok if not r["warmup"] and r.get("prefill_ms") is not None]  # batch-1 samples only
    device = next(model.parameters()).device
    latency = {
        "batch_size": 1,  # per-sample timings at batch 1, as the papers report (batched samples are not timed)
        "prefill": stats([r["prefill_ms"] for r in timed]),
        "decode_per_token": stats([r["decode_ms"] for r in timed if r["decode_ms"] is not None]),
        "e2e": stats([r["e2e_ms"] for r in timed]),
        "timer": "cuda_event" if device.type == "cuda" else "perf_counter",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "n_timed": len(timed),
        "threads": torch.get_num_threads(),  # CPU timings depend on these (run.py sets them before torch loads)
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
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
        "method": cfg.method_name, "model": cfg.model.name, "seed": cfg.seed,
        "budget": engine.decision.budget,  # vanilla: 576, blind: 0, whatever budget= said
        "limit": cfg.limit,
        "tasks": tasks,
        "tokens": tokens,
        "method_facts": facts,  # resolved positions, decode positions, schedule; what the method declares (FACTS)
        "latency_ms": latency,
        "throughput": throughput(ok, cfg.get("batch_size", 1)),
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


def throughput(records: list[dict], batch_size: int) -> dict:
    """Samples and tokens per second at the run's batch size (wall time of `generate` over the batches).

    At batch_size 1 from the timed samples' end-to-end times; above it from the batched samples only
    (the batch-1 latency samples are not part of it).
    """
    if batch_size == 1:
        rows = [r for r in records if not r["warmup"] and r.get("e2e_ms") is not None]
        seconds = sum(r["e2e_ms"] for r in rows) / 1000.0
        batches = len(rows)
    else:
        rows = [r for r in records if r.get("batch")]
        walls = {r["batch"]["id"]: r["batch"]["ms"] for r in rows}
        seconds, batches = sum(walls.values()) / 1000.0, len(walls)
    out = {"batch_size": batch_size, "n_samples": len(rows), "n_batches": batches, "seconds": seconds}
    for name, count in (("samples", len(rows)), ("prompt_tokens", sum(r["prompt_len"] for r in rows)),
                        ("generated_tokens", sum(r["n_new_tokens"] for r in rows))):
        out[f"{name}_per_s"] = count / seconds if seconds else None
    return out


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
