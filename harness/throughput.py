"""Throughput of batched evaluation, side by side in one process.

    python -m harness.throughput                           # both parts (CPU: the 7B part takes about an hour)
    python -m harness.throughput prefill.enabled=false     # the embedded suite only (about 5 min on 2 cores)
    python -m harness.throughput --quick                   # tiny sizes, tiny models (smoke test)

(a) The embedded suite (the shapes tasks `python run.py` evaluates by default, on tiny_llava_shapes)
at batch 1/4/8/16, vanilla and every method at one budget: samples/s over the same first
`samples_per_task` questions of each task, batched per task as run.py batches them. Every batch size
must give each sample the answer and the per-layer image-token counts it gets at batch 1; mismatches
are counted, printed and make the command fail (after the report is written). A profiled pass splits
the time into matrix products, other tensor ops and the rest (Python: engine, methods, generate's
loop, processor), per batch size. The data come from `harness.shapes.data.make_split`, the function
that materialises the suite, so lmms-eval is not needed.

(b) The 7B architecture (random weights, harness/bench.py's prompt) prefill at batch 1 vs 4: prompt
tokens/s for vanilla and a few methods.

bf16/fp32 on CPU with perf_counter, fp16 on CUDA with CUDA events (harness/timing.py). Writes
`<out>/throughput.json` (atomic) and `throughput.md`.
"""

from __future__ import annotations

import gc
import platform
import sys
import time
from dataclasses import dataclass

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image
from tqdm import tqdm

from harness.bench import INSTRUCTION, fixed_prompt
from harness.engine import PruningEngine
from harness.families import method_overrides
from harness.generation import (
    StopOnStrings,
    consecutive_groups,
    model_inputs,
    row_answers,
    row_stops,
    sample_seed,
)
from harness.methods import METHOD_CONF, load_method
from harness.results import versions, write_report
from harness.shapes.data import EVAL_SEEDS, SUITE_SIZES, make_split, prompt
from harness.throughput_report import to_markdown, why  # noqa: F401  (why: re-exported for tests)
from harness.timing import Clock, FirstLogits

# (task, family, split) of the embedded suite, in conf/tasks/shapes.yaml's order; generation as tasks/shapes_*.yaml
SUITE = [("shapes_pope_random", "pope", "random"), ("shapes_pope_popular", "pope", "popular"),
         ("shapes_pope_adversarial", "pope", "adversarial"), ("shapes_gqa", "gqa", None), ("shapes_mme", "mme", None)]
MAX_NEW_TOKENS, UNTIL = 3, ["\n"]
MATMUL_OPS = ("mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "convolution", "scaled_dot_product", "attention")
QUICK = ["suite.samples_per_task=2", "batch_sizes=[1,2]", "methods=[fastv,visionzip]",
         "model@prefill.model=tiny_random", "prefill.model.load.config=tiny", "prefill.reps=1", "prefill.warmup=0",
         "prefill.methods=[fastv]", "profile.samples=2", "out=runs/throughput-quick"]


@dataclass
class Sample:
    task: str
    doc_id: int
    text: str  # what the task's doc_to_text returns
    image: Image.Image
    target: str


def suite_samples(per_task: int) -> list[Sample]:
    """The first `per_task` questions of each embedded task, with the prompts and images run.py gives the model."""
    samples = []
    for task, family, split in SUITE:
        rows = make_split(family, split, EVAL_SEEDS[family], SUITE_SIZES[family])
        samples += [Sample(task, i, prompt(family, row["question"].strip()), row["image"].convert("RGB"), row["answer"])
                    for i, row in enumerate(rows[:per_task])]
    return samples


def batches(samples: list[Sample], size: int) -> list[list[Sample]]:
    """Consecutive samples of one task, up to `size` each (as run.py groups requests)."""
    return list(consecutive_groups(samples, size, lambda sample: sample.task))


@torch.no_grad()
def answer(engine: PruningEngine, processor, template: str, rows: list[Sample], seed: int) -> tuple[list[dict], dict]:
    """One batch through the engine as run.py runs it (batch 1: `generate`; more: left-padded `generate_batch`).

    Returns per-sample records (answer, image tokens per layer, prompt and new tokens) and the batch's
    padding and idle decode rows.
    """
    model, tokenizer = engine.model, processor.tokenizer
    texts = [template.format(question=row.text) for row in rows]
    inputs = model_inputs(processor, texts, [row.image for row in rows], next(model.parameters()).device, model.dtype)
    seeds = [sample_seed(seed, row.task, row.doc_id) for row in rows]
    kwargs = {"max_new_tokens": MAX_NEW_TOKENS, "do_sample": False, "num_beams": 1,
              "pad_token_id": tokenizer.pad_token_id}
    if len(rows) == 1:
        stop = StopOnStrings(tokenizer, UNTIL)
        engine.sample_seed = seeds[0]
        new, _ = engine.generate(inputs, instruction=rows[0].text, stopping_criteria=[stop], **kwargs)
        new = new[None]  # [1, T]
    else:
        stop = row_stops(model, tokenizer, UNTIL)
        new, _ = engine.generate_batch(inputs, seeds, [row.text for row in rows], stopping_criteria=[stop], **kwargs)
    steps = new.shape[1]
    records = []
    for b, (row, (text, n_new)) in enumerate(zip(rows, row_answers(tokenizer, new, stop, UNTIL))):
        st = engine.states[b]
        records.append({"task": row.task, "doc_id": row.doc_id, "response": text, "n_new": n_new,
                        "prompt_len": st.prompt_len, "vision_per_layer": list(st.vision_per_layer)})
    mask = inputs.get("attention_mask")
    padded = int(mask.numel() - mask.sum()) if mask is not None else 0
    return records, {"tokens": int(inputs["input_ids"].numel()), "pad_tokens": padded,
                     "row_steps": steps * len(rows), "idle_row_steps": sum(steps - r["n_new"] for r in records)}


def run_config(engine, processor, template, samples, size: int, seed: int, clock: Clock) -> dict:
    """Every sample at batch `size`; wall time of the whole loop (processor, generate, decoding text)."""
    records, tally = [], {"tokens": 0, "pad_tokens": 0, "row_steps": 0, "idle_row_steps": 0}
    start = clock.mark()
    for rows in batches(samples, size):
        out, counts = answer(engine, processor, template, rows, seed)
        records += out
        tally = {k: tally[k] + counts[k] for k in tally}
    seconds = clock.ms(start, clock.mark()) / 1000.0
    return {"records": records, "seconds": seconds, **tally}


def profile_split(engine, processor, template, samples, size: int, seed: int) -> dict:
    """Shares of the wall time in matrix products, other tensor ops and the rest (Python), under torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for rows in batches(samples, size):
            answer(engine, processor, template, rows, seed)
        wall_us = (time.perf_counter() - start) * 1e6
    matmul = other = 0.0
    for event in prof.key_averages():
        if not event.key.startswith("aten::"):
            continue
        if any(op in event.key[6:] for op in MATMUL_OPS):
            matmul += event.self_cpu_time_total
        else:
            other += event.self_cpu_time_total
    rest = max(wall_us - matmul - other, 0.0)
    return {"batch_size": size, "samples": len(samples), "wall_ms_per_sample": wall_us / 1000 / len(samples),
            "matmul_ms_per_sample": matmul / 1000 / len(samples), "other_ops_ms_per_sample": other / 1000 / len(samples),
            "python_ms_per_sample": rest / 1000 / len(samples), "matmul_share": matmul / wall_us,
            "other_ops_share": other / wall_us, "python_share": rest / wall_us}


def engines_for(model, model_cfg, methods: list[str], budget: int) -> dict[str, PruningEngine]:
    """vanilla + each method at `budget`, one engine each (attached one at a time)."""
    names = ["vanilla"] + [m for m in methods if m != "vanilla"]
    return {name: PruningEngine(model, load_method(name, budget if name != "vanilla" else 576,
                                                   **method_overrides(model_cfg, name))) for name in names}


def mismatches(reference: list[dict], records: list[dict]) -> list[dict]:
    """Samples whose answer or image tokens per layer differ from batch 1."""
    out = []
    for ref, rec in zip(reference, records, strict=True):
        for key in ("response", "vision_per_layer"):
            if ref[key] != rec[key]:
                out.append({"task": ref["task"], "doc_id": ref["doc_id"], "field": key,
                            "batch_1": ref[key], "batched": rec[key]})
    return out


def run_suite(cfg: DictConfig) -> dict:
    """Part (a): the embedded suite at every batch size, vanilla and every method."""
    samples = suite_samples(cfg.suite.samples_per_task)
    model, processor = instantiate(cfg.suite.model.load)
    device = next(model.parameters()).device
    clock = Clock(device)
    template = cfg.suite.model.prompt
    engines = engines_for(model, cfg.suite.model, list(cfg.methods), cfg.budget)
    sizes = sorted(set(cfg.batch_sizes) | {1})
    if cfg.suite.samples_per_task % max(sizes):
        print(f"note: suite.samples_per_task={cfg.suite.samples_per_task} is not a multiple of batch {max(sizes)}: "
              "each task ends with a smaller batch", file=sys.stderr)
    skipped, runs = {}, {}
    for name, engine in engines.items():  # untimed: one batch of every configuration (warm-up)
        with engine:
            for size in sizes:
                try:
                    answer(engine, processor, template, samples[:size], cfg.seed)
                except ValueError as exc:  # a pre-LLM method the engine cannot batch: named, run at batch 1 only
                    if not engine.pre_llm or size == 1:
                        raise
                    skipped[name] = f"{name} at batch > 1: {exc}"
                    break
    configs = [(name, size) for name in engines for size in sizes if size == 1 or name not in skipped]
    for rep in range(cfg.reps):  # interleaved: drift hits every configuration alike
        for name, size in tqdm(configs, desc=f"suite rep {rep + 1}/{cfg.reps}", unit="config"):
            with engines[name]:
                run = run_config(engines[name], processor, template, samples, size, cfg.seed, clock)
            runs.setdefault((name, size), []).append(run)
    rows, bad = [], []
    for (name, size), reps in runs.items():
        seconds = float(np.median([r["seconds"] for r in reps]))
        first = reps[0]
        bad += [{"method": name, "batch_size": size, **m} for r in reps for m in mismatches(runs[(name, 1)][0]["records"], r["records"])]
        base = float(np.median([r["seconds"] for r in runs[(name, 1)]]))
        rows.append({
            "method": name, "budget": cfg.budget if name != "vanilla" else 576, "batch_size": size,
            "seconds": seconds, "samples_per_s": len(samples) / seconds, "speedup": base / seconds,
            "prompt_tokens_per_s": sum(r["prompt_len"] for r in first["records"]) / seconds,
            "generated_tokens_per_s": sum(r["n_new"] for r in first["records"]) / seconds,
            "pad_share": first["pad_tokens"] / first["tokens"],
            "idle_row_step_share": first["idle_row_steps"] / first["row_steps"],
            "mismatches": sum(1 for m in bad if m["method"] == name and m["batch_size"] == size),
        })
    profile = []
    if cfg.profile.samples and device.type == "cpu":
        engine = engines[cfg.profile.method]
        for size in sizes:
            if cfg.profile.method in skipped and size > 1:
                continue
            subset = [s for rows in batches(samples, size)[: max(cfg.profile.samples // size, 1)] for s in rows]
            with engine:
                profile.append(profile_split(engine, processor, template, subset, size, cfg.seed))
    report = {
        "model": cfg.suite.model.name, "dtype": str(model.dtype).replace("torch.", ""), "device": _device_name(device),
        "timer": clock.name, "threads": torch.get_num_threads(), "budget": cfg.budget, "batch_sizes": sizes,
        "samples": len(samples), "samples_per_task": cfg.suite.samples_per_task, "tasks": [t for t, _, _ in SUITE],
        "max_new_tokens": MAX_NEW_TOKENS, "reps": cfg.reps, "skipped": skipped,
        "rows": rows, "mismatches": len(bad), "mismatch_list": bad, "profile": profile,
        "profile_method": cfg.profile.method,
    }
    return report


@torch.no_grad()
def run_prefill(cfg: DictConfig) -> dict:
    """Part (b): prefill (pixels to first-token logits) of the 7B architecture at each batch size, tokens/s."""
    pcfg = cfg.prefill
    torch.manual_seed(cfg.seed)
    model, _ = instantiate(pcfg.model.load)
    device = next(model.parameters()).device
    clock = Clock(device)
    sizes = sorted(set(pcfg.batch_sizes) | {1})
    prompts = [fixed_prompt(model, pcfg.question_tokens, pcfg.prefix_tokens, cfg.seed + i) for i in range(max(sizes))]
    batch = {size: {k: torch.cat([p[k] for p in prompts[:size]]) for k in prompts[0]} for size in sizes}
    for size in sizes[1:]:  # equal lengths, no padding: the mask only says so
        batch[size]["attention_mask"] = torch.ones_like(batch[size]["input_ids"])
    engines = engines_for(model, pcfg.model, list(pcfg.methods), pcfg.budget)
    configs = [(name, size) for name in engines for size in sizes]

    def prefill_ms(name: str, size: int) -> float:
        engine, first = engines[name], FirstLogits(clock)
        kwargs = {"max_new_tokens": 1, "do_sample": False, "logits_processor": [first]}
        with engine:
            start = clock.mark()
            if size == 1:
                engine.sample_seed = cfg.seed
                engine.generate(batch[1], instruction=INSTRUCTION, **kwargs)
            else:
                engine.generate_batch(batch[size], list(range(size)), [INSTRUCTION] * size, **kwargs)
            return clock.ms(start, first.mark)

    for key in tqdm([k for _ in range(pcfg.warmup) for k in configs], desc="7B warm-up", unit="run"):
        prefill_ms(*key)
    times: dict[tuple, list[float]] = {key: [] for key in configs}
    for key in tqdm([k for _ in range(pcfg.reps) for k in configs], desc="7B prefill", unit="run"):
        times[key].append(prefill_ms(*key))
    prompt_tokens = int(prompts[0]["input_ids"].shape[1])
    rows = []
    for (name, size), values in times.items():
        ms = float(np.median(values))
        rate = size * prompt_tokens / (ms / 1000.0)
        base = prompt_tokens / (float(np.median(times[(name, 1)])) / 1000.0)
        rows.append({"method": name, "budget": pcfg.budget if name != "vanilla" else 576, "batch_size": size,
                     "prefill_ms": ms, "tokens_per_s": rate, "samples_per_s": size / (ms / 1000.0),
                     "speedup": rate / base, "reps": len(values)})
    report = {"model": pcfg.model.name, "dtype": str(model.dtype).replace("torch.", ""), "device": _device_name(device),
              "timer": clock.name, "threads": torch.get_num_threads(), "prompt_tokens": prompt_tokens,
              "batch_sizes": sizes, "reps": pcfg.reps, "warmup": pcfg.warmup, "rows": rows}
    return report


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"


def check(cfg: DictConfig) -> None:
    """Every option against what it allows, before any model loads."""
    known = sorted(p.stem for p in METHOD_CONF.glob("*.yaml"))
    for key, methods in (("methods", cfg.methods), ("prefill.methods", cfg.prefill.methods)):
        missing = [m for m in methods if m not in known]
        if missing:
            raise ValueError(f"{key}={list(methods)}: {missing} have no config in {METHOD_CONF} (known: {known})")
    if cfg.profile.method not in ["vanilla", *cfg.methods]:
        raise ValueError(f"profile.method={cfg.profile.method!r} is not run (allowed: vanilla or one of methods)")
    for key, sizes in (("batch_sizes", cfg.batch_sizes), ("prefill.batch_sizes", cfg.prefill.batch_sizes)):
        if not sizes or any(not isinstance(s, int) or s < 1 for s in sizes):
            raise ValueError(f"{key}={list(sizes)} (allowed: a list of integers >= 1)")
    for key in ("reps", "suite.samples_per_task", "prefill.reps"):
        value = cfg[key.split(".")[0]][key.split(".")[1]] if "." in key else cfg[key]
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{key}={value!r} (allowed: an integer >= 1)")
    if cfg.suite.samples_per_task > 60:
        raise ValueError(f"suite.samples_per_task={cfg.suite.samples_per_task} (allowed: 1..60, the smallest task)")


def run_throughput(cfg: DictConfig) -> dict:
    check(cfg)
    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": {"platform": platform.platform()},
              "versions": versions(), "suite": run_suite(cfg)}
    report["why"] = why(report["suite"])
    gc.collect()  # the suite's model and engines, before the 7B loads
    report["prefill"] = run_prefill(cfg) if cfg.prefill.enabled else None
    return report


@hydra.main(version_base="1.3", config_path="../conf", config_name="throughput")
def main(cfg: DictConfig) -> None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    report = run_throughput(cfg)
    write_report(cfg.out, "throughput", report, to_markdown(report))
    if report["suite"]["mismatches"]:
        for m in report["suite"]["mismatch_list"]:
            print(f"mismatch: {m}", file=sys.stderr)
        sys.exit(f"{report['suite']['mismatches']} samples differ from batch 1 (listed above and in throughput.json)")


if __name__ == "__main__":
    if "--quick" in sys.argv:
        sys.argv = sys.argv[:1] + QUICK + [arg for arg in sys.argv[1:] if arg != "--quick"]  # later overrides win
    main()
