"""Shared fixtures: the tiny random LLaVA (fp32), a few prompts, a tiny model of each other family; Slurm tests left
out unless asked for. Shared helpers that are not fixtures are in helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import QUESTIONS
from PIL import Image

import harness.rundir  # noqa: F401  (the `batch_tag` resolver of conf/config.yaml's run dirs, as run.py registers it)

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny():
    """(model, processor) of the tiny random LLaVA in fp32."""
    from harness.model import load_llava

    return load_llava(config="tiny", dtype="float32", device="cpu", seed=0)


def make_inputs(processor, question: str, seed: int) -> dict:
    """Processor inputs for one random-noise image and a vicuna-style prompt (no attention mask: batch 1)."""
    rng = np.random.RandomState(seed)
    image = Image.fromarray((rng.rand(336, 336, 3) * 255).astype("uint8"))
    inputs = processor(images=image, text=f"USER: <image>\n{question} ASSISTANT:", return_tensors="pt")
    inputs.pop("attention_mask")
    return dict(inputs)


@pytest.fixture(scope="session")
def prompts(tiny):
    _, processor = tiny
    return [make_inputs(processor, q, seed) for seed, q in enumerate(QUESTIONS)]


def pytest_collection_modifyitems(config, items):
    """Slurm tests need a real cluster: they run only where a -m expression names them (`pytest -m slurm`), so that
    `pytest` and `pytest -m "not slow"` both leave them out."""
    if "slurm" in (config.option.markexpr or ""):
        return
    slurm = [item for item in items if item.get_closest_marker("slurm")]
    if slurm:
        config.hook.pytest_deselected(items=slurm)
        items[:] = [item for item in items if not item.get_closest_marker("slurm")]


TINY_FAMILIES = {"llava_next": "tiny_llava_next", "qwen2_5_vl": "tiny_qwen2_5_vl"}  # family -> conf/model/<name>.yaml


@pytest.fixture(scope="module", params=list(TINY_FAMILIES))
def family(request):
    """(family name, model, processor, model config) of a tiny random LLaVA-NeXT, then Qwen2.5-VL (fp32)."""
    from omegaconf import OmegaConf

    from harness.model import load_model

    cfg = OmegaConf.load(Path(__file__).parents[1] / "conf" / "model" / f"{TINY_FAMILIES[request.param]}.yaml")
    model, processor = load_model(request.param, config="tiny", num_layers=cfg.load.num_layers,
                                  dtype="float32", device="cpu", seed=0)
    return request.param, model, processor, cfg
