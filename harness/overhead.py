"""Harness overhead: the same samples through the harness versus a bare `model.generate` loop.

    python -m harness.overhead                    # embedded model, shapes suite, 20 samples per task, 3 reps
    python -m harness.overhead limit=50 reps=5

Both loops run in one process on the same requests (built by lmms-eval from the task YAMLs, as
`run.py` builds them), interleaved (bare, harness, bare, harness, ...) so that machine drift hits
both alike:

- bare: the processor + `model.generate` (greedy, the task's `max_new_tokens` and stop strings),
  no engine attached;
- harness: `PrunedLlava.generate_until` with `method=vanilla` attached, i.e. what `run.py` runs per
  sample: the engine's hooks and attention wrapper, latency marks, stop strings, per-sample records
  appended to samples.jsonl.

Writes `<out>/overhead.json` and `overhead.md` (README, "Benchmark").
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm import tqdm
from transformers import StoppingCriteriaList

from harness.engine import PruningEngine
from harness.generation import StopOnStrings, cut_at
from harness.lmms_model import PrunedLlava
from harness.methods import load_method
from harness.results import SampleLog, versions, write_report
from harness.tasks import data_locations, load_tasks


def leaf_tasks(task_dict: dict) -> dict:
    """{task name: Task} from lmms-eval's task dict (groups flattened)."""
    out = {}
    for name, task in task_dict.items():
        if isinstance(task, dict):
            out.update(leaf_tasks(task))
        elif task is not None:
            out[name] = task[1] if isinstance(task, tuple) else task
    return out


def build_requests(names: list[str], data: dict, limit: int | None) -> tuple[list, dict]:
    """lmms-eval's generate_until requests for the first `limit` docs of each task, and the
    datasets by task name (what the evaluator hands the model as `task_dict`)."""
    tasks = leaf_tasks(load_tasks(names, data))
    requests, datasets = [], {}
    for name, task in tasks.items():
        task.build_all_requests(limit=limit, rank=0, world_size=1)
        requests += [instance for instance in task.instances if instance.request_type == "generate_until"]
        datasets[name] = task.dataset
    return requests, datasets


@torch.no_grad()
def bare_loop(model, processor, prompt: str, requests: list, datasets: dict) -> list[str]:
    """Processor + `model.generate` per request, nothing attached."""
    device = next(model.parameters()).device
    answers = []
    for request in requests:
        context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
        gen_kwargs = dict(gen_kwargs)
        until = gen_kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        image = doc_to_visual(datasets[task][split][doc_id])[0].convert("RGB")
        inputs = processor(images=image, text=prompt.format(question=context), return_tensors="pt")
        inputs.pop("attention_mask", None)
        inputs = {k: v.to(device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        stop = StoppingCriteriaList([StopOnStrings(processor.tokenizer, until)] if until else [])
        out = model.generate(**inputs, max_new_tokens=int(gen_kwargs.get("max_new_tokens", 16)), do_sample=False,
                             num_beams=1, stopping_criteria=stop, pad_token_id=processor.tokenizer.pad_token_id)
        new = out[0, inputs["input_ids"].shape[1] :]
        answers.append(cut_at(processor.tokenizer.decode(new, skip_special_tokens=True), until))
    return answers


def harness_loop(engine: PruningEngine, processor, prompt: str, requests: list, datasets: dict, log_dir: Path) -> list[str]:
    """The requests through the harness's lmms-eval model (vanilla engine attached), fresh sample log."""
    path = Path(tempfile.mkdtemp(dir=log_dir)) / "samples.jsonl"
    log = SampleLog(path)
    lm = PrunedLlava(engine, processor, log, prompt=prompt, warmup=0)
    lm.task_dict = datasets
    with engine:
        answers = lm.generate_until(requests)
    log.close()
    return answers


def run_overhead(cfg: DictConfig) -> dict:
    model, processor = instantiate(cfg.model.load)
    if processor is None:
        raise ValueError(f"model={cfg.model.name} has no processor: the overhead run needs real samples")
    data = data_locations(cfg.tasks.data)
    requests, datasets = build_requests(list(cfg.tasks.names), data, cfg.limit)
    engine = PruningEngine(model, load_method("vanilla", 576), time_scoring=False)
    times: dict[str, list[float]] = {"bare": [], "harness": []}
    answers: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        # one untimed pass of each warms caches and lazy initialisation
        for kind in ["bare", "harness"] * (1 + cfg.reps):
            start = time.perf_counter()
            if kind == "bare":
                result = bare_loop(model, processor, cfg.model.prompt, requests, datasets)
            else:
                result = harness_loop(engine, processor, cfg.model.prompt, requests, datasets, Path(tmp))
            elapsed = time.perf_counter() - start
            if kind in answers:
                times[kind].append(elapsed)
            answers[kind] = result
            tqdm.write(f"{kind}: {elapsed:.2f} s for {len(requests)} samples")
    bare, harness = float(np.median(times["bare"])), float(np.median(times["harness"]))
    return {
        "model": cfg.model.name,
        "tasks": list(cfg.tasks.names),
        "samples": len(requests),
        "reps": cfg.reps,
        "bare_s": bare,
        "harness_s": harness,
        "bare_s_all": times["bare"],
        "harness_s_all": times["harness"],
        "overhead": harness / bare - 1.0,
        "same_answers": sum(a == b for a, b in zip(answers["bare"], answers["harness"])) / len(requests),
        "threads": torch.get_num_threads(),
        "versions": versions(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def to_markdown(report: dict) -> str:
    return (
        f"# Harness overhead: {report['model']} on {', '.join(report['tasks'])}\n\n"
        f"{report['samples']} samples, median of {report['reps']} interleaved repetitions, {report['date']}.\n\n"
        "| loop | seconds | per sample ms |\n| --- | ---: | ---: |\n"
        f"| bare `model.generate` | {report['bare_s']:.2f} | {1000 * report['bare_s'] / report['samples']:.1f} |\n"
        f"| harness (run.py's path, vanilla) | {report['harness_s']:.2f} | {1000 * report['harness_s'] / report['samples']:.1f} |\n\n"
        f"Overhead: **{100 * report['overhead']:+.1f}%**; identical answers: {100 * report['same_answers']:.0f}%.\n"
    )


@hydra.main(version_base="1.3", config_path="../conf", config_name="overhead")
def main(cfg: DictConfig) -> None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    report = run_overhead(cfg)
    write_report(cfg.out, "overhead", report, to_markdown(report))


if __name__ == "__main__":
    main()
