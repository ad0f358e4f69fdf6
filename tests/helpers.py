"""Helpers shared by several test files: `from helpers import ...` (pytest puts tests/ on sys.path, as for
conftest.py, reference.py and task_score.py). Fixtures live in conftest.py; a helper one test file alone
uses stays in that file. Test files import from here, never from one another."""

from __future__ import annotations

import functools
import inspect
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from hydra.utils import get_class
from omegaconf import OmegaConf
from PIL import Image

from harness.families import family_of, method_overrides
from harness.methods import METHOD_CONF, load_method, method_names

ROOT = Path(__file__).parents[1]
MODEL_CONF = ROOT / "conf" / "model"


# ------------------------------------------------------------------ run.py as a user runs it
def cli_env(cache: Path, threads: int = 1, env: dict | None = None) -> dict:
    """The environment of a `run.py` subprocess: its own data cache, `threads` OpenMP threads, one-line errors."""
    return {**os.environ, "PRUNEBENCH_CACHE": str(cache), "OMP_NUM_THREADS": str(threads), "HYDRA_FULL_ERROR": "0",
            "PYTHONPATH": str(ROOT), **(env or {})}


def run_cli(args: list[str], cache: Path, cwd: Path = ROOT, threads: int = 1,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """`python run.py *args` in `cwd` to the end (10 min at most), stdout and stderr captured as text."""
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, env=cli_env(cache, threads, env),
                          capture_output=True, text=True, timeout=600, check=False)


def start_cli(args: list[str], cache: Path, cwd: Path = ROOT, threads: int = 1, env: dict | None = None,
              capture: bool = True) -> subprocess.Popen:
    """`python run.py *args` started and not waited for; `capture=False` sends its output to /dev/null, so a
    caller that only polls the run dir never blocks it on a full pipe."""
    out = subprocess.PIPE if capture else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, env=cli_env(cache, threads, env),
                            stdout=out, stderr=out, text=True)


def error_line(proc) -> str:
    """The one `error: ...` line of a failed run (asserts there is exactly one)."""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


def run_fixtures(model: str, method: str, limit: int, tmp_path: Path, *extra: str) -> tuple[dict, list[dict]]:
    """`run.py` on the fixture tasks at budget 64 (3 new tokens, `extra` overrides): (results.json, samples), every
    sample answered."""
    run_dir = tmp_path / "run"
    proc = run_cli([f"model={model}", "tasks=fixtures", f"method={method}", "budget=64", f"limit={limit}",
                    "max_new_tokens=3", "logger=none", f"hydra.run.dir={run_dir}", *extra], tmp_path / "cache",
                   threads=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert samples and all(s["error"] is None for s in samples)
    return json.loads((run_dir / "results.json").read_text()), samples


# ------------------------------------------------------------------ the config run.py gets
def compose_job(overrides: list[str]):
    """The config run.py would get (Hydra's `${hydra:...}` resolved), without its `hydra` node."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return OmegaConf.create(OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]),
                                                   resolve=True))


# ------------------------------------------------------------------ prompts (the `prompts` fixture of conftest.py)
QUESTIONS = [
    "is there a red circle in the image ?",
    "what colour is the star ?",
    "how many objects are there in the picture ? answer the question using a single word or phrase .",
]


# ------------------------------------------------------------------ the model families (tiny random models)
QUESTION = "what colour is the star ?"
SIZES = {"llava_next": [(200, 300)], "qwen2_5_vl": [(224, 224), (280, 336)]}  # Qwen: 64 and 120 image tokens


def is_pre_llm(name: str) -> bool:
    return bool(getattr(load_method(name, 64), "pre_llm", False))


PRE_LLM = [m for m in method_names() if is_pre_llm(m)]


def family_inputs(processor, cfg, size: tuple[int, int] | None, seed: int = 0) -> dict:
    """Processor inputs for QUESTION in the model config's prompt: one random-noise image of `size`, or text only
    (the template without its image placeholder) for `size=None`; no attention mask (batch 1)."""
    if size is None:
        text = cfg.prompt.replace(f"{cfg.image_placeholder}\n", "").replace(cfg.image_placeholder, "")
        inputs = dict(processor.tokenizer(text.format(question=QUESTION), return_tensors="pt"))
    else:
        rng = np.random.RandomState(seed)
        image = Image.fromarray((rng.rand(*size, 3) * 255).astype("uint8"))
        inputs = dict(processor(images=image, text=cfg.prompt.format(question=QUESTION), return_tensors="pt"))
    inputs.pop("attention_mask", None)
    return inputs


def method_for(name: str, budget, cfg, **extra):
    """The method as run.py builds it on this model (its config's overrides), plus `extra` where it accepts them."""
    accepted = inspect.signature(get_class(OmegaConf.load(METHOD_CONF / f"{name}.yaml")._target_)).parameters
    overrides = {**method_overrides(cfg, name), **{k: v for k, v in extra.items() if k in accepted}}
    return load_method(name, budget, **overrides)


def image_count(model, inputs) -> int:
    return int((inputs["input_ids"][0] == family_of(model).image_token_id(model)).sum())


def greedy_without_cache(model, embeds: torch.Tensor, steps: int) -> list[int]:
    """Slow reference decode: the whole sequence recomputed at every step, positions 0..n-1, no cache."""
    tokens = []
    with torch.no_grad():
        for _ in range(steps):
            logits = model(inputs_embeds=embeds, use_cache=False).logits[0, -1]
            tokens.append(int(logits.argmax()))
            embeds = torch.cat([embeds, model.get_input_embeddings()(torch.tensor([[tokens[-1]]]))], dim=1)
    return tokens


# ------------------------------------------------------------------ DivPrune reference
def official_divprune(features: torch.Tensor, k: int) -> list[int]:
    """The official selection, step by step: D = 1 - cos; first pick = argmax of each column's second-smallest
    distance; then argmax over columns of the min over the selected rows (recomputed from scratch each step)."""
    x = features.double()
    unit = x / x.norm(dim=1, keepdim=True)
    distance = 1.0 - unit @ unit.T
    picks: list[int] = []
    for i in range(k):
        if i == 0:
            scores = torch.topk(distance, 2, dim=0, largest=False).values[1, :]
        else:
            scores = distance[torch.tensor(picks)].min(dim=0).values
        picks.append(int(torch.argmax(scores)))
    return picks


# ------------------------------------------------------------------ SparseVLM references (plain loops)
SPARSEVLM_FLOOR = 0.1  # the default gravity guard


@functools.cache
def rotate_ones(position: int, hd: int, theta: float) -> tuple[float, ...]:
    """RoPE of an all-ones vector at `position`: pair (d, d + hd/2) turned by position * theta^(-2d/hd), float64."""
    out = [0.0] * hd
    for d in range(hd // 2):
        angle = position * theta ** (-2 * d / hd)
        out[d] = math.cos(angle) - math.sin(angle)  # x_d cos - x_{d+hd/2} sin
        out[d + hd // 2] = math.cos(angle) + math.sin(angle)  # x_{d+hd/2} cos + x_d sin
    return tuple(out)


def reference_gravity(pos_q: int, pos_k: int, hd: int, theta: float,
                      floor: float | None = SPARSEVLM_FLOOR) -> float:
    """The official v2.0 `rope_weights` for one query/key pair: all-ones query and key rotated by RoPE at their
    positions, dot product / sqrt(hd); then the guard: at least `floor` times the value at distance 0 (sqrt(hd))."""
    q, k = rotate_ones(pos_q, hd, theta), rotate_ones(pos_k, hd, theta)
    value = sum(a * b for a, b in zip(q, k)) / math.sqrt(hd)
    return value if floor is None else max(value, floor * math.sqrt(hd))


def gravity_matrix(row_positions: list[int], col_positions: list[int], hd: int, theta: float) -> torch.Tensor:
    """reference_gravity (guarded) for every (row, column) pair, `[R, C]` float64."""
    return torch.tensor([[reference_gravity(p, q, hd, theta) for q in col_positions] for p in row_positions],
                        dtype=torch.float64)


def sparsevlm_scores(attn: torch.Tensor, raters: list[int], text_start: int, start: int, end: int,
                     top_heads: int | None = None, weights: torch.Tensor | None = None) -> torch.Tensor:
    """SparseVLM's image-token scores: mean over (the top_heads highest rater->image) heads and over raters of
    A[text_start + t, start:end], each divided by `weights[rater, column]` first if given (v2's gravity)."""
    if weights is not None:
        attn = attn.double().clone()
        for a, t in enumerate(raters):
            attn[:, text_start + t, start:end] /= weights[a]
    heads = list(range(attn.shape[0]))
    if top_heads is not None and top_heads < len(heads):
        total = [sum(float(attn[h, text_start + t, start:end].sum()) for t in raters) for h in heads]
        heads = sorted(heads, key=lambda h: (-total[h], h))[:top_heads]
    scores = torch.zeros(end - start, dtype=torch.float64)
    for h in heads:
        for t in raters:
            scores += attn[h, text_start + t, start:end].double()
    return scores / (len(heads) * len(raters))


def top_k(scores: torch.Tensor, k: int) -> list[int]:
    """Indices of the k highest scores (ties: lower index first), sorted."""
    values = scores.tolist()
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    return sorted(order[:k])


def reference_dpc(x: torch.Tensor, num_clusters: int, k: int | None = None) -> torch.Tensor:
    """DPC-KNN with loops (float64): density from the k nearest (self included), ties -> lower index is denser."""
    x = x.double()
    n, d = x.shape
    k = min(num_clusters if k is None else k, n)
    dist = (((x[:, None] - x[None]) ** 2).sum(-1).sqrt() / math.sqrt(d)).tolist()  # [n][n]
    density = [math.exp(-sum(v * v for v in sorted(row)[:k]) / k) for row in dist]
    largest = max(max(row) for row in dist)
    delta = []
    for i in range(n):
        denser = [dist[i][j] for j in range(n) if density[j] > density[i] or (density[j] == density[i] and j < i)]
        delta.append(min(denser) if denser else largest)
    centers = sorted(range(n), key=lambda i: (-delta[i] * density[i], i))[:num_clusters]
    members = [[] for _ in centers]
    for i in range(n):
        cluster = centers.index(i) if i in centers else min(range(num_clusters), key=lambda a: (dist[centers[a]][i], a))
        members[cluster].append(i)
    return torch.stack([x[m].mean(0) for m in members])
