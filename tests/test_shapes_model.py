"""The committed embedded model (harness/assets/tiny-llava-shapes) loads offline and reads the image."""

import pytest
import torch
from transformers import AutoProcessor

from harness.model import ASSETS, load_llava
from harness.shapes import data
from harness.shapes.heldout import generate_answers, robustness_answers

CHECKPOINT = ASSETS / "tiny-llava-shapes"


@pytest.fixture(scope="module")
def shapes_model():
    return load_llava(pretrained="tiny-llava-shapes", dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def gqa_items():
    rows = data.make_split("gqa", None, data.EVAL_SEEDS["gqa"], 60)  # evaluation seeds: never trained on
    return [{"family": "gqa", "group": r["type"], "prompt": data.prompt("gqa", r["question"]), **r} for r in rows]


def test_checkpoint_is_small_and_loads_offline(shapes_model):
    model, _processor = shapes_model
    assert (CHECKPOINT / "model.safetensors").stat().st_size < 20 * 2**20
    assert (CHECKPOINT / "README.md").read_text().count("## Recipe") == 1
    assert model.config.text_config.num_hidden_layers == 32
    assert model.config.vision_feature_layer == -2
    assert 2.0e6 < sum(p.numel() for p in model.parameters()) < 3.0e6
    reloaded = AutoProcessor.from_pretrained(CHECKPOINT)
    enc = reloaded(images=data.make_split("gqa", None, data.EVAL_SEEDS["gqa"], 1)[0]["image"],
                   text="USER: <image>\nWhat colour is the star? ASSISTANT:", return_tensors="pt")
    assert int((enc["input_ids"] == model.config.image_token_index).sum()) == 576
    assert enc["pixel_values"].shape == (1, 3, 336, 336)


@pytest.mark.slow
def test_answers_fixed_questions_from_the_image(shapes_model, gqa_items):
    """60 held-out gqa-style questions (colour, shape, relation, count; chance ~15%): the right image
    gives well above chance (colour and shape questions nearly all right), another image's pixels do much worse."""
    model, processor = shapes_model
    with torch.no_grad():
        answers = generate_answers(model, processor, gqa_items)
        swapped = generate_answers(model, processor, [dict(item, image=gqa_items[(k + 7) % 60]["image"])
                                                      for k, item in enumerate(gqa_items)])  # fmt: skip
    accuracy = sum(a == item["answer"] for a, item in zip(answers, gqa_items)) / len(gqa_items)
    accuracy_swapped = sum(a == item["answer"] for a, item in zip(swapped, gqa_items)) / len(gqa_items)
    assert all(a in data.vocabulary() for a in answers), answers  # one vocabulary word each
    for kind, floor in (("colour", 0.9), ("shape", 0.85)):  # the bindings "which colour has the star" and back
        right = [a == item["answer"] for a, item in zip(answers, gqa_items) if item["type"] == kind]
        assert len(right) >= 10
        assert sum(right) / len(right) >= floor, (kind, right)
    assert accuracy >= 0.7, accuracy
    assert accuracy - accuracy_swapped >= 0.5, (accuracy, accuracy_swapped)


@pytest.mark.slow
def test_robustness_rows_run_through_the_engine(shapes_model, gqa_items):
    """The model card's robustness rows run the harness's engine: with nothing pruned it answers as
    `generate` does, and keeping 32 random tokens from layer 2 costs accuracy."""
    model, processor = shapes_model
    items = gqa_items[:20]
    vanilla = generate_answers(model, processor, items)
    assert robustness_answers(model, processor, items, "full_engine", seed=0) == vanilla
    pruned = robustness_answers(model, processor, items, "L2_random32_original", seed=0)
    assert pruned == robustness_answers(model, processor, items, "L2_random32_original", seed=0)  # seeded
    right = lambda answers: sum(a == item["answer"] for a, item in zip(answers, items))
    assert right(pruned) < right(vanilla)
    assert model.config.text_config._attn_implementation == "sdpa"  # restored after the engine
