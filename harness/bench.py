"""Performance benchmark: what each method buys in latency on a real 7B architecture.

    python -m harness.bench                       # LLaVA-1.5-7B architecture, random bf16 weights on CPU (fp16 on CUDA)
    python -m harness.bench model=llava_next_7b     # LLaVA-NeXT-7B architecture (2,928 image tokens), random weights
    python -m harness.bench model=qwen2_5_vl_7b     # Qwen2.5-VL-7B architecture (576 image tokens), random weights
    python -m harness.bench --quick               # tiny model, 2 budgets, 1 repetition (smoke test)
    python -m harness.bench methods=[fastv,adaptinfer] budgets=[64] reps=5

A fixed prompt (one image: 576 tokens on LLaVA-1.5 and Qwen2.5-VL at 672 px, 2,928 on LLaVA-NeXT at 672 px;
a GQA-length question) is timed for vanilla and every method at
every budget in one process, after warm-up, with repetitions interleaved (vanilla, m1@b1, ..., then
again), so machine drift affects all configurations alike. Writes `<out>/bench.json` and `bench.md`.
"""

from __future__ import annotations

import platform
import sys
import time

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm import tqdm

from harness.engine import PruningEngine
from harness.families import family_of, method_overrides
from harness.flops import text_prefill_flops
from harness.methods import METHOD_CONF, load_method
from harness.results import versions, write_report
from harness.timing import Clock, FirstLogits, peak_memory, reset_peak_memory

INSTRUCTION = "What colour is the object on the left? Answer with one word."  # for methods that read the text


SPECIAL_IDS = ("image_token_index", "image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")


def fixed_prompt(model, question_tokens: int, prefix_tokens: int, seed: int = 0) -> dict:
    """input_ids `[1, prefix + image block + question]` with one image of the family's benchmark size, seeded pixels."""
    config = model.config
    gen = torch.Generator().manual_seed(seed)
    text = torch.randint(8, config.text_config.vocab_size, (prefix_tokens + question_tokens,), generator=gen)
    for key in SPECIAL_IDS:  # ordinary tokens only (ids < 8 are special in the word tokenizers)
        if getattr(config, key, None) is not None:
            text[text == getattr(config, key)] = 8
    inputs = family_of(model).synthetic_inputs(model, text, prefix_tokens, gen)
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in inputs.items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    return inputs


def vision_flops(model, inputs: dict) -> float:
    """Analytic FLOPs of the vision tower and the projector for the image of `inputs` (per family)."""
    return family_of(model).vision_flops(model, inputs)


def time_once(engine: PruningEngine, inputs: dict, new_tokens: int, clock: Clock) -> dict:
    """One generate call: prefill (to first logits), decode per token, end-to-end, scoring, KV bytes."""
    first = FirstLogits(clock)
    engine.state = None
    start = clock.mark()
    _, out = engine.generate(inputs, instruction=INSTRUCTION, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             logits_processor=[first])
    end = clock.mark()
    e2e = clock.ms(start, end)
    prefill = clock.ms(start, first.mark)
    st = engine.state
    kv = sum(layer.keys.numel() + layer.values.numel() for layer in out["cache"].layers) * engine.model.dtype.itemsize
    return {
        "prefill_ms": prefill,
        "decode_ms": (e2e - prefill) / (new_tokens - 1),
        "e2e_ms": e2e,
        "scoring_ms": st.scoring_s * 1000.0,
        "kv_cache_bytes": int(kv),
        "tokens_per_layer": list(st.tokens_per_layer),
        "vision_per_layer": list(st.vision_per_layer),
    }


def run_bench(cfg: DictConfig) -> dict:
    torch.manual_seed(cfg.seed)
    model, _ = instantiate(cfg.model.load)
    device = next(model.parameters()).device
    clock = Clock(device)
    inputs = fixed_prompt(model, cfg.question_tokens, cfg.prefix_tokens, cfg.seed)
    text = model.config.text_config
    missing = [m for m in cfg.methods if not (METHOD_CONF / f"{m}.yaml").exists()]
    if missing:
        raise ValueError(f"methods {missing} have no config in {METHOD_CONF} (known: {sorted(p.stem for p in METHOD_CONF.glob('*.yaml'))})")
    methods = [m for m in cfg.methods if m not in ("vanilla", "blind")]
    configs = [("vanilla", None)] + [(m, b) for b in cfg.budgets for m in methods]
    engines, skipped = {}, {}
    for name, budget in configs:
        try:
            method = load_method(name, budget or 576, **method_overrides(cfg.model, name))
            engines[(name, budget)] = PruningEngine(model, method, time_scoring=True)
        except ValueError as exc:  # a method that cannot run on this family: one line, the others still run
            if name in skipped or "model family" not in str(exc) and "vision tower" not in str(exc):
                raise
            skipped[name] = str(exc)
            print(f"skipped: {exc}", file=sys.stderr)
    configs = [key for key in configs if key in engines]
    runs: dict[tuple, list[dict]] = {key: [] for key in configs}
    with torch.no_grad():
        warm = configs if cfg.warmup_all else configs[:1]  # every code path, or vanilla only (CPU: the weights)
        for key in tqdm([key for _ in range(cfg.warmup) for key in warm], desc="warm-up", unit="run"):
            with engines[key]:
                time_once(engines[key], inputs, cfg.new_tokens, clock)
        order = [key for _ in range(cfg.reps) for key in configs]  # interleaved repetitions
        for key in tqdm(order, desc="bench", unit="run"):
            start = reset_peak_memory(device)  # a peak window per call (CUDA counter; Linux: the process's peak RSS)
            with engines[key]:
                record = time_once(engines[key], inputs, cfg.new_tokens, clock)
            peak = peak_memory(device)[0]
            runs[key].append({**record, "peak_bytes": peak, "peak_above_start_bytes": peak - start})  # above: activations + cache

    vision = vision_flops(model, inputs)
    vanilla_llm = text_prefill_flops(text, runs[configs[0]][0]["tokens_per_layer"])
    vanilla_prefill = float(np.median([r["prefill_ms"] for r in runs[configs[0]]]))
    rows = []
    for (name, budget), reps in runs.items():
        llm = text_prefill_flops(text, reps[0]["tokens_per_layer"])
        prefill = float(np.median([r["prefill_ms"] for r in reps]))
        measured = vanilla_prefill / prefill
        ideal = (vision + vanilla_llm) / (vision + llm)
        rows.append({
            "method": name, "budget": budget if budget else 576,
            "avg_vision_tokens": float(np.mean(reps[0]["vision_per_layer"])),
            "prefill_ms": prefill,
            "decode_ms_per_token": float(np.median([r["decode_ms"] for r in reps])),
            "e2e_ms": float(np.median([r["e2e_ms"] for r in reps])),
            "scoring_ms": float(np.median([r["scoring_ms"] for r in reps])),
            "scoring_share": float(np.median([r["scoring_ms"] / r["prefill_ms"] for r in reps])),
            "prefill_tflops": (vision + llm) / 1e12,
            "llm_prefill_tflops": llm / 1e12,
            "flops_reduction": 1.0 - llm / vanilla_llm,
            "speedup": measured,
            "ideal_speedup": ideal,
            "ideal_speedup_llm_only": vanilla_llm / llm,
            "speedup_ratio": measured / ideal,
            "peak_bytes": max(r["peak_bytes"] for r in reps),
            "peak_above_start_bytes": max(r["peak_above_start_bytes"] for r in reps),
            "kv_cache_bytes": reps[0]["kv_cache_bytes"],
            "reps": len(reps),
        })
    return {
        "model": cfg.model.name,
        "dtype": str(model.dtype).replace("torch.", ""),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "timer": clock.name,
        "threads": torch.get_num_threads(),
        "prompt_tokens": int(inputs["input_ids"].shape[1]),
        "image_tokens": int(runs[configs[0]][0]["vision_per_layer"][0]),
        "skipped": skipped,
        "new_tokens": cfg.new_tokens,
        "reps": cfg.reps,
        "machine": {"platform": platform.platform(), "cpus": torch.get_num_threads()},
        "versions": versions(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "rows": rows,
        "peak_kind": peak_memory(device)[1],
    }


def to_markdown(report: dict) -> str:
    lines = [
        f"# Benchmark: {report['model']} ({report['dtype']}, {report['device']}, timer {report['timer']})",
        "",
        (f"Prompt {report['prompt_tokens']} tokens ({report.get('image_tokens', 576)} image), "
        f"{report['new_tokens']} new tokens, "
        f"median of {report['reps']} interleaved repetitions, {report['date']}."),
        "",
        "| method | budget | tokens | prefill ms | speedup | ideal | ratio | scoring % | decode ms/tok | KV MB | peak +MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['method']} | {r['budget']} | {r['avg_vision_tokens']:.1f} | {r['prefill_ms']:.1f} | "
            f"{r['speedup']:.2f}x | {r['ideal_speedup']:.2f}x | {r['speedup_ratio']:.2f} | "
            f"{100 * r['scoring_share']:.2f} | {r['decode_ms_per_token']:.1f} | {r['kv_cache_bytes'] / 2**20:.1f} | "
            f"{r['peak_above_start_bytes'] / 2**20:.1f} |"
        )
    lines += ["", *[f"Not run on this model: {reason}" for reason in report.get("skipped", {}).values()]]
    lines += [
        "",
        ("speedup = vanilla prefill / method prefill (pixels to first-token logits, measured side by side); "
        "ideal = the same ratio of analytic FLOPs (vision tower + projector + LLM prefill, docs/methods.md); "
        "ratio = speedup / ideal; scoring % = scoring + selection + gathering time as a share of the pruned prefill "
        "(pre-LLM methods: their selection or merge, and VisionZip's CLS-attention read-out; the tower pass itself is not scoring); "
        f"peak +MB = peak memory of the generate call above the memory in use when it started ({report['peak_kind']}; "
        "the weights are in use throughout)."),
    ]
    return "\n".join(lines) + "\n"


@hydra.main(version_base="1.3", config_path="../conf", config_name="bench")
def main(cfg: DictConfig) -> None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    report = run_bench(cfg)
    write_report(cfg.out, "bench", report, to_markdown(report))


if __name__ == "__main__":
    sys.argv = [("+preset=quick" if arg == "--quick" else arg) for arg in sys.argv]
    main()
