"""Model loading: the 7B architecture offline, the tiny model and its offline processor."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoProcessor

from harness.model import ASSETS, load_llava


def test_llava_1_5_7b_architecture_builds_offline_with_exact_parameter_count():
    model, processor = load_llava(config=str(ASSETS / "llava-1.5-7b-hf"), device="meta", dtype="float16")
    assert sum(p.numel() for p in model.parameters()) == 7_063_427_072
    assert processor is None  # no tokenizer shipped for the 7B config
    assert model.config.text_config.num_hidden_layers == 32
    assert model.config.image_token_index == 32000


def test_tiny_processor_round_trips_offline(tiny, tmp_path):
    model, processor = tiny
    processor.save_pretrained(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    text = "USER: <image>\nIs there a Red circle ? ASSISTANT:"
    image = torch.zeros(3, 336, 336, dtype=torch.uint8)
    a = processor(images=image, text=text, return_tensors="pt")["input_ids"]
    b = reloaded(images=image, text=text, return_tensors="pt")["input_ids"]
    assert torch.equal(a, b)
    assert (a == model.config.image_token_index).sum().item() == 576
    assert processor.tokenizer.unk_token_id not in a[0].tolist()  # capitalised words and "\n" survive


def test_dtype_device_and_seeded_weights():
    a, _ = load_llava(config="tiny", num_layers=2, dtype="bfloat16", device="cpu", seed=1)
    b, _ = load_llava(config="tiny", num_layers=2, dtype="bfloat16", device="cpu", seed=1)
    c, _ = load_llava(config="tiny", num_layers=2, dtype="bfloat16", device="cpu", seed=2)
    assert a.dtype == torch.bfloat16 and not a.training
    assert a.config.text_config._attn_implementation == "sdpa"
    wa, wb, wc = (m.model.language_model.layers[0].self_attn.q_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


@pytest.mark.parametrize("kwargs,message", [
    ({}, "exactly one of"),
    ({"config": "tiny", "dtype": "float64"}, "model.dtype='float64' is not supported"),
    ({"config": "/nonexistent"}, "neither 'tiny' nor a directory"),
])
def test_bad_model_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_llava(**kwargs)
