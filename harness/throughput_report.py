"""The throughput report (`python -m harness.throughput`): the Markdown table and the profile's "Why" paragraph."""

from __future__ import annotations

import numpy as np


def to_markdown(report: dict) -> str:
    suite = report["suite"]
    sizes = suite["batch_sizes"]
    rows = {(r["method"], r["batch_size"]): r for r in suite["rows"]}
    methods = list(dict.fromkeys(r["method"] for r in suite["rows"]))
    lines = [
        f"# Throughput: batched evaluation ({report['date']})",
        "",
        (f"## Embedded suite: {suite['model']} ({suite['dtype']}, {suite['device']}, {suite['threads']} threads, "
         f"timer {suite['timer']})"),
        "",
        (f"{suite['samples']} samples (the first {suite['samples_per_task']} of each of the {len(suite['tasks'])} "
         f"shapes tasks), budget {suite['budget']}, up to {suite['max_new_tokens']} new tokens, median of "
         f"{suite['reps']} interleaved repetitions. Samples/s (speed-up vs batch 1). Answers and image tokens per "
         f"layer that differ from batch 1: **{suite['mismatches']}**."),
        "",
        "| method | " + " | ".join(f"batch {s}" for s in sizes) + " |",
        "| --- |" + " ---: |" * len(sizes),
    ]
    for name in methods:
        cells = [f"{rows[(name, s)]['samples_per_s']:.1f} ({rows[(name, s)]['speedup']:.2f}x)" if (name, s) in rows
                 else "n/a" for s in sizes]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", *[f"Batch 1 only: {reason}" for reason in suite["skipped"].values()]]
    vanilla = [rows[("vanilla", s)] for s in sizes]
    lines += ["", "Padding and idle rows (vanilla): " + ", ".join(
        f"batch {r['batch_size']}: {100 * r['pad_share']:.1f}% pad tokens, {100 * r['idle_row_step_share']:.0f}% "
        "idle decode rows" for r in vanilla) + "."]
    if suite["profile"]:
        lines += ["", f"### Where the time goes ({suite['profile_method']}, torch.profiler, ms per sample)", "",
                  "| batch | wall | matmul | other ops | Python | matmul share |", "| ---: | ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {p['batch_size']} | {p['wall_ms_per_sample']:.1f} | {p['matmul_ms_per_sample']:.1f} | "
                  f"{p['other_ops_ms_per_sample']:.1f} | {p['python_ms_per_sample']:.1f} | {100 * p['matmul_share']:.0f}% |"
                  for p in suite["profile"]]
        lines += ["", ("matmul: matrix products, attention and the patch convolution (self time of those aten ops); "
                       "other ops: every other aten op (norms, activations, copies, gathers, sampling); Python: the "
                       "rest of the wall time (generate's loop, the engine's hooks and the methods' bookkeeping, the "
                       "processor, stop strings). The profiler adds its own overhead per op: read the shares.")]
    if report.get("why"):
        lines += ["", "### Why", "", report["why"]]
    prefill = report.get("prefill")
    if prefill:
        prows = {(r["method"], r["batch_size"]): r for r in prefill["rows"]}
        psizes = prefill["batch_sizes"]
        lines += ["", (f"## Prefill: {prefill['model']} ({prefill['dtype']}, {prefill['device']}, "
                       f"{prefill['threads']} threads, timer {prefill['timer']})"), "",
                  (f"Prompt {prefill['prompt_tokens']} tokens per sample (harness/bench.py's prompt, random weights), "
                   f"pixels to first-token logits, median of {prefill['reps']} interleaved repetitions. "
                   "Prompt tokens/s (speed-up vs batch 1)."), "",
                  "| method | budget | " + " | ".join(f"batch {s}" for s in psizes) + " |",
                  "| --- | ---: |" + " ---: |" * len(psizes)]
        for name in dict.fromkeys(r["method"] for r in prefill["rows"]):
            cells = [f"{prows[(name, s)]['tokens_per_s']:.0f} ({prows[(name, s)]['speedup']:.2f}x)" for s in psizes]
            lines.append(f"| {name} | {prows[(name, 1)]['budget']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"



def why(suite: dict) -> str:
    """The finding, in numbers: where batching stops paying, and what the time per sample is made of."""
    rows = suite["rows"]
    sizes = suite["batch_sizes"]
    mean = {s: float(np.mean([r["speedup"] for r in rows if r["batch_size"] == s])) for s in sizes}
    best = max(sizes, key=mean.get)
    knee = min(s for s in sizes if mean[s] >= 0.95 * mean[best])
    largest = [r for r in rows if r["batch_size"] == sizes[-1]]
    pad = 100 * max(r["pad_share"] for r in largest) if largest else 0.0
    idle = 100 * max(r["idle_row_step_share"] for r in largest) if largest else 0.0
    text = (f"Averaged over the {len({r['method'] for r in rows})} configurations, batching gives "
            + ", ".join(f"{mean[s]:.2f}x at batch {s}" for s in sizes[1:])
            + (f"; batch {knee} already reaches 95% of the best ({mean[best]:.2f}x at batch {best}). " if knee != best
               else f"; the largest gain is at batch {best}. "))
    profile = {p["batch_size"]: p for p in suite["profile"]}
    if 1 in profile and len(profile) > 1:
        one, top = profile[1], profile[max(profile)]
        saved = {k: one[f"{k}_ms_per_sample"] - top[f"{k}_ms_per_sample"] for k in ("wall", "python", "other_ops", "matmul")}
        text += (f"The profile ({suite['profile_method']}, ms per sample, batch 1 -> {top['batch_size']}) says where the "
                 f"gain comes from: of the {saved['wall']:.1f} ms saved, {saved['python']:.1f} ms is Python (generate's "
                 f"loop, the engine's hooks, the processor: {one['python_ms_per_sample']:.1f} -> "
                 f"{top['python_ms_per_sample']:.1f}), {saved['other_ops']:.1f} ms small tensor ops "
                 f"({one['other_ops_ms_per_sample']:.1f} -> {top['other_ops_ms_per_sample']:.1f}) and "
                 f"{saved['matmul']:.1f} ms matrix products ({one['matmul_ms_per_sample']:.1f} -> "
                 f"{top['matmul_ms_per_sample']:.1f}). What is left at batch {top['batch_size']} is "
                 f"{100 * top['matmul_share']:.0f}% matrix products, whose FLOPs per sample no batch size reduces; "
                 f"on {suite['threads']} threads that compute is the floor, and batching stops paying once the "
                 "per-sample overhead above it is gone. ")
    text += (f"Padding and early stops cost little here: at batch {sizes[-1]}, {pad:.1f}% of the prompt tokens are "
             f"padding (the shapes prompts differ by a few words) and {idle:.0f}% of the decode row-steps belong to "
             "rows that had already stopped (answers are one word and a newline).")
    return text
