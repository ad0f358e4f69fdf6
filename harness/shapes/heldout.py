"""Held-out evaluation of the tiny model during and after training.

Questions come from the evaluation seeds (never trained on) and are scored with the shapes tasks'
own helpers (`tasks/shapes/utils.py`). Vanilla answers come from `model.generate`; the robustness
rows run the harness's random method through the pruning engine, exactly as `python run.py
method=random` does, so the model card's robustness figures and the harness's measure the same thing.
"""

from __future__ import annotations

import importlib.util
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch

from harness.engine import PruningEngine
from harness.methods.random import Random
from harness.methods.vanilla import Vanilla
from harness.shapes import data
from harness.shapes.tiny import MAX_NEW_TOKENS, N_PATCHES

REPO = Path(__file__).resolve().parents[2]
PROMPT = "USER: <image>\n{question} ASSISTANT:"


def load_scoring():
    """tasks/shapes/utils.py (pure scoring helpers; lmms-eval loads it by path, so we do too)."""
    spec = importlib.util.spec_from_file_location("prunebench_shapes_utils", REPO / "tasks" / "shapes" / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def eval_items(n_pope: int, n_gqa: int, n_mme: int) -> list[dict]:
    """A fixed held-out set from the evaluation seeds (the first images of each evaluation split)."""
    items = []
    for split in data.POPE_SPLITS:
        for row in data.make_split("pope", split, data.EVAL_SEEDS["pope"], n_pope):
            items.append({"family": "pope", "group": split, "prompt": data.prompt("pope", row["question"]), **row})
    for row in data.make_split("gqa", None, data.EVAL_SEEDS["gqa"], n_gqa):
        items.append({"family": "gqa", "group": row["type"], "prompt": data.prompt("gqa", row["question"]), **row})
    for row in data.make_split("mme", None, data.EVAL_SEEDS["mme"], n_mme):
        items.append({"family": "mme", "group": row["category"], "prompt": data.prompt("mme", row["question"]), **row})
    return items


def score(items: list[dict], responses: list[str], scoring) -> dict[str, float]:
    """pope F1 per split + mean, gqa EM (+ per type), mme acc / acc+ per category and total (% of max)."""
    metrics: dict[str, float] = {}
    by = defaultdict(list)
    for item, response in zip(items, responses):
        by[item["family"]].append((item, response))
    if by["pope"]:
        f1s = []
        for split in data.POPE_SPLITS:
            rows = [(i, r) for i, r in by["pope"] if i["group"] == split]
            m = scoring.pope_metrics([scoring.pope_parse(r) for _, r in rows], [i["answer"] for i, _ in rows])
            metrics[f"pope_{split}_f1"] = m["f1"]
            metrics[f"pope_{split}_yes"] = m["yes_ratio"]
            f1s.append(m["f1"])
        metrics["pope_f1"] = sum(f1s) / len(f1s)
    if by["gqa"]:
        hits = defaultdict(list)
        for item, response in by["gqa"]:
            hit = float(scoring.gqa_normalize(response) == scoring.gqa_normalize(item["answer"]))
            hits["all"].append(hit)
            hits[item["group"]].append(hit)
        metrics["gqa_em"] = 100.0 * sum(hits["all"]) / len(hits["all"])
        for kind in data.GQA_TYPES:
            if hits[kind]:
                metrics[f"gqa_{kind}"] = 100.0 * sum(hits[kind]) / len(hits[kind])
    if by["mme"]:
        records = [
            {"question_id": i["question_id"], "category": i["category"],
             "score": float(scoring.mme_parse(r) == i["answer"].lower())}
            for i, r in by["mme"]
        ]  # fmt: skip
        cats = scoring.mme_category_scores(records)
        for category, s in cats.items():
            metrics[f"mme_{category}_acc"] = s["acc"]
            metrics[f"mme_{category}_acc+"] = s["acc_plus"]
        metrics["mme_total_pct"] = 100.0 * sum(s["score"] for s in cats.values()) / (200.0 * len(cats))
    return {key: round(value, 2) for key, value in metrics.items()}


@torch.no_grad()
def generate_answers(model, processor, items: list[dict]) -> list[str]:
    """Greedy answers through `model.generate` on the real template, full image (vanilla)."""
    model.eval()
    newline = processor.tokenizer.convert_tokens_to_ids("\n")
    answers = []
    for item in items:
        enc = processor(images=item["image"], text=PROMPT.format(question=item["prompt"]), return_tensors="pt")
        out = model.generate(
            **enc, max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
            eos_token_id=[processor.tokenizer.eos_token_id, newline], pad_token_id=processor.tokenizer.pad_token_id,
        )  # fmt: skip
        answers.append(processor.tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip())
    return answers



def random_at_layer2(keep: int, positions: str, num_layers: int = 32) -> Random:
    """The harness's random method with `keep` image tokens entering decoder layer 2 (FastV's schedule,
    K = 2): its budget is the mean over all layers, (2 x 576 + (L - 2) x keep) / L."""
    budget, rest = divmod(2 * N_PATCHES + (num_layers - 2) * keep, num_layers)
    if rest:
        raise ValueError(f"keep={keep} entering layer 2 is no integer budget on {num_layers} layers")
    return Random(budget=budget, K=2, positions=positions)


PERIODIC_ROBUSTNESS = ("L2_random192_original", "L2_random192_compact")  # gqa EM in the learning curve
ROBUSTNESS_METHODS = {  # name -> the harness method that runs it (random tokens seeded per question)
    "full_engine": lambda: Vanilla(),
    "pre_random192_compact": lambda: Random(budget=192, stage="prellm"),
    "pre_random32_compact": lambda: Random(budget=32, stage="prellm"),
    "L2_random192_original": lambda: random_at_layer2(192, "original"),
    "L2_random192_compact": lambda: random_at_layer2(192, "compact"),
    "L2_random32_original": lambda: random_at_layer2(32, "original"),
}


@contextmanager
def sdpa_language_model(model):
    """The language model on plain SDPA for the duration (the engine wraps SDPA), then restored."""
    saved = model.config.text_config._attn_implementation
    model.set_attn_implementation({"text_config": "sdpa"})
    try:
        yield model
    finally:
        model.set_attn_implementation({"text_config": saved})


@torch.no_grad()
def robustness_answers(model, processor, items: list[dict], mode: str, seed: int) -> list[str]:
    """Greedy answers with the `ROBUSTNESS_METHODS[mode]` method attached through the pruning engine.

    Args:
        mode: a key of ROBUSTNESS_METHODS.
        seed: with the item's index, seeds the method's random draw (the engine's per-sample seed).
    """
    model.eval()
    tokenizer = processor.tokenizer
    stop = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("\n")]
    answers = []
    with sdpa_language_model(model), PruningEngine(model, ROBUSTNESS_METHODS[mode]()) as engine:
        for index, item in enumerate(items):
            inputs = processor(images=item["image"], text=PROMPT.format(question=item["prompt"]), return_tensors="pt")
            inputs.pop("attention_mask", None)  # batch 1: no padding
            engine.sample_seed = seed * 1_000_003 + index
            new_tokens, _ = engine.generate(
                dict(inputs), max_new_tokens=MAX_NEW_TOKENS, do_sample=False, eos_token_id=stop,
                pad_token_id=tokenizer.pad_token_id,
            )  # fmt: skip
            answers.append(tokenizer.decode(new_tokens, skip_special_tokens=True).strip())
    return answers


def periodic_metrics(model, processor, scoring, items: list[dict], robust_items: list[dict], seed: int) -> dict:
    """Held-out metrics of vanilla generation + gqa EM of `robust_items` under PERIODIC_ROBUSTNESS."""
    start = time.time()
    metrics = score(items, generate_answers(model, processor, items), scoring)
    for mode in PERIODIC_ROBUSTNESS:
        answers = robustness_answers(model, processor, robust_items, mode, seed)
        metrics[f"gqa_em_{mode}"] = score(robust_items, answers, scoring)["gqa_em"]
    metrics["eval_seconds"] = round(time.time() - start, 1)
    return metrics


def final_metrics(model, processor, scoring, items: list[dict], seed: int) -> tuple[dict, list[str]]:
    """The final evaluation: scores of vanilla `generate` and of every ROBUSTNESS_METHODS row, and how
    often the engine with nothing pruned agrees with `generate`; also returns the vanilla answers."""
    model.eval()
    start = time.time()
    vanilla_answers = generate_answers(model, processor, items)
    final = {"n_questions": len(items), "vanilla": score(items, vanilla_answers, scoring)}
    for mode in ROBUSTNESS_METHODS:
        answers = robustness_answers(model, processor, items, mode, seed)
        final[mode] = score(items, answers, scoring)
        if mode == "full_engine":
            final["engine_agrees_with_generate"] = round(sum(a == b for a, b in zip(answers, vanilla_answers)) / len(items), 4)
    final["eval_seconds"] = round(time.time() - start, 1)
    return final, vanilla_answers
