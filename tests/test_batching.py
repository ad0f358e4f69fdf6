"""Batch 8 equals batch 1: every method on every family (tiny random models, fp32).

A left-padded batch of 8 samples with different prompt lengths (and, where the family allows, different
image sizes, hence different image-token counts and schedules) must give each sample exactly what it
gets alone: the same kept sets at every stage, the same per-layer counts, the same generated tokens, and
first-token logits within `TOL` of batch 1 (measured: at most 2.4e-7 / 2.5e-7 / 2.7e-7 on the three families; padding changes the
order of floating-point sums, nothing else).
"""

from __future__ import annotations

import functools
import inspect

import numpy as np
import pytest
import torch
from helpers import MODEL_CONF
from hydra.utils import get_class
from omegaconf import OmegaConf
from PIL import Image

from harness.engine import PruningEngine
from harness.families import check_family, family_named, method_overrides
from harness.methods import METHOD_CONF, load_method, method_names
from harness.model import load_model

TOL = 1e-5  # first-token logits, batch 8 vs batch 1
BUDGET = 128  # 22.2%: on the smallest tiny Qwen image (64 tokens) every method still has a schedule
WORDS = "is there a red circle in the image ? what colour is the star ? how many objects are there".split()
QUESTIONS = [" ".join(WORDS[: 3 + 2 * i]) for i in range(8)]  # 8 prompt lengths
SIZES = {
    "llava": [(336, 336)] * 8,  # LLaVA-1.5: 576 tokens whatever the size
    "llava_next": [(200, 300), (300, 200), (336, 336), (150, 400), (400, 150), (336, 200), (250, 250), (200, 336)],
    "qwen2_5_vl": [(224, 224), (280, 336), (224, 280), (252, 252), (336, 224), (224, 336), (280, 280), (252, 336)],
}
CONFIGS = {"llava": "tiny_random", "llava_next": "tiny_llava_next", "qwen2_5_vl": "tiny_qwen2_5_vl"}


@functools.cache
def tiny_model(fam: str):
    """(model, processor, model config) of the family's tiny random model, loaded once."""
    cfg = OmegaConf.load(MODEL_CONF / f"{CONFIGS[fam]}.yaml")
    model, processor = load_model(fam, config="tiny", num_layers=cfg.load.num_layers, dtype="float32",
                                  device="cpu", seed=0)
    return model, processor, cfg


@pytest.fixture(scope="module", params=list(CONFIGS))
def family(request):
    """(family, model, processor, model config) of a tiny random model."""
    return request.param, *tiny_model(request.param)


def batch_inputs(processor, cfg, rows: list[int], family: str) -> dict:
    """Processor inputs of samples `rows`, left-padded (a single row: no attention mask, as batch 1 runs)."""
    images = [Image.fromarray((np.random.RandomState(i).rand(*SIZES[family][i], 3) * 255).astype("uint8"))
              for i in rows]
    texts = [cfg.prompt.format(question=QUESTIONS[i]) for i in rows]
    processor.tokenizer.padding_side = "left"
    inputs = dict(processor(images=images, text=texts, return_tensors="pt", padding=True))
    if len(rows) == 1:
        inputs.pop("attention_mask")
    return inputs


def variants(name: str, family: str) -> list[dict]:
    """The method's defaults, plus its other position rules where it takes them (compact is 1-D RoPE only), plus
    its pre-LLM stage where it has one (random)."""
    accepted = inspect.signature(get_class(OmegaConf.load(METHOD_CONF / f"{name}.yaml")._target_)).parameters
    other = {}
    if "positions" in accepted and family != "qwen2_5_vl":
        other["positions"] = "compact"
    if "decode_positions" in accepted:
        other["decode_positions"] = "per_layer"
    out = [{}, other] if other else [{}]
    if "stage" in accepted:
        out.append({"stage": "prellm"})
    return out


def runs_on(fam: str, name: str) -> bool:
    """Whether the method runs on this family (the others stop with one line: tests/test_families.py)."""
    cfg = OmegaConf.load(MODEL_CONF / f"{CONFIGS[fam]}.yaml")
    try:
        check_family(family_named(fam), load_method(name, BUDGET, **method_overrides(cfg, name)))
    except ValueError:
        return False
    return True


# Qwen2.5-VL's cases (about a second each) stay in the fast lane; LLaVA's and LLaVA-NeXT's (up to a minute) are slow
CASES = [pytest.param(fam, name, marks=() if fam == "qwen2_5_vl" else pytest.mark.slow)
         for fam in CONFIGS for name in method_names() if runs_on(fam, name)]


@pytest.mark.parametrize(("fam", "name"), CASES)
def test_batch_of_8_equals_batch_1(fam, name):
    model, processor, cfg = tiny_model(fam)
    kwargs = dict(max_new_tokens=4, do_sample=False, output_logits=True,
                  pad_token_id=processor.tokenizer.pad_token_id)
    batch = batch_inputs(processor, cfg, list(range(8)), fam)
    assert len(set(batch["attention_mask"].sum(1).tolist())) > 4, "the rows must have different lengths"
    for extra in variants(name, fam):
        method = load_method(name, BUDGET, **{**method_overrides(cfg, name), **extra})
        engine = PruningEngine(model, method, record_kept=True)
        with engine:
            new_b, out_b = engine.generate_batch(batch, seeds=list(range(100, 108)), instructions=QUESTIONS, **kwargs)
            batched = engine.states
            assert len(batched) == 8
            for i in range(8):
                engine.sample_seed = 100 + i
                new_1, out_1 = engine.generate(batch_inputs(processor, cfg, [i], fam), instruction=QUESTIONS[i], **kwargs)
                one, many = engine.state, batched[i]
                where = f"{name} {extra} sample {i}"
                assert many.kept == one.kept, where
                assert many.vision_per_layer == one.vision_per_layer, where
                assert many.tokens_per_layer == one.tokens_per_layer, where
                assert new_b[i, : new_1.numel()].tolist() == new_1.tolist(), where
                diff = (out_b.logits[0][i] - out_1.logits[0][0]).abs().max().item()
                assert diff < TOL, f"{where}: first-token logits differ by {diff:.2e}"
            if fam != "llava" and name != "blind":  # different image sizes: different counts, each pruned at its own fraction
                assert len({st.image_tokens for st in batched}) > 1


def test_right_padding_is_refused(family):
    fam, model, processor, cfg = family
    batch = batch_inputs(processor, cfg, [0, 7], fam)
    mask = batch["attention_mask"]
    batch["attention_mask"] = mask.flip(-1)  # as if padded on the right
    engine = PruningEngine(model, load_method("fastv", 64, **method_overrides(cfg, "fastv")))
    with engine, pytest.raises(ValueError, match="padding_side='left'"):
        engine.generate_batch(batch, seeds=[0, 1], max_new_tokens=1, do_sample=False)


def test_batch_of_1_with_a_mask_is_batch_1(family):
    """An all-ones attention mask (what a processor returns for one row) changes nothing."""
    fam, model, processor, cfg = family
    one = batch_inputs(processor, cfg, [3], fam)
    masked = {**one, "attention_mask": torch.ones_like(one["input_ids"])}
    engine = PruningEngine(model, load_method("fastv", 64, **method_overrides(cfg, "fastv")), record_kept=True)
    with engine:
        a, _ = engine.generate(one, max_new_tokens=3, do_sample=False)
        kept = engine.state.kept
        b, _ = engine.generate_batch(masked, seeds=[0], max_new_tokens=3, do_sample=False)
        assert engine.state.kept == kept and b[0].tolist() == a.tolist()
