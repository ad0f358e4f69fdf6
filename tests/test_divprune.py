"""DivPrune against a slow reference that follows the official loop (`DivPrune` in vbdi/divprune's llava_arch.py)."""

from __future__ import annotations

import pytest
import torch
from helpers import official_divprune

from harness.engine import PruningEngine
from harness.methods import load_method
from harness.methods.base import PreLLMContext
from harness.methods.divprune import DivPrune, max_min_select

V = 576


@pytest.mark.parametrize("budget", [1, 7, 56, 64, 192])
def test_selection_matches_the_official_loop(budget):
    features = torch.randn(V, 24, generator=torch.Generator().manual_seed(budget))
    method = load_method("divprune", budget)
    assert method.schedule(32, V).budget == budget
    sel = method.reduce(PreLLMContext(features, None, None, torch.Generator(), budget=budget))
    picks = official_divprune(features, budget)
    assert len(set(picks)) == budget
    assert sel.keep.tolist() == sorted(picks)


def test_hand_example_pick_order():
    """Four 2-d directions: angles 0, 10, 90 and 180 degrees. Nearest-neighbour distances: 0 and 10 are close,
    90 is 80 degrees from 10, 180 is 90 degrees from 90 -> the first pick is 180 (index 3); then the farthest from
    it is 0 (index 0); then min-distance to {180, 0}: 90 -> 1 - cos 90 = 1, 10 -> 1 - cos 10 -> index 2."""
    angles = torch.tensor([0.0, 10.0, 90.0, 180.0]) * torch.pi / 180
    features = torch.stack([angles.cos(), angles.sin()], dim=1) * torch.tensor([[1.0], [3.0], [0.5], [2.0]])
    x = features / features.norm(dim=1, keepdim=True)
    assert max_min_select(1.0 - x @ x.T, 4).tolist() == [3, 0, 2, 1]


def test_exact_duplicates_are_not_picked_twice():
    """Three copies of one vector and one other: the official argmax would pick a selected token again once only
    duplicates remain; here every pick is a distinct token."""
    features = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    x = features / features.norm(dim=1, keepdim=True)
    picks = max_min_select(1.0 - x @ x.T, 4).tolist()
    assert sorted(picks) == [0, 1, 2, 3] and picks[:2] in ([0, 3], [3, 0])


def test_engine_feeds_the_selected_features_in_order(tiny, prompts):
    model, _ = tiny
    inputs = prompts[1]
    config = model.config
    with torch.no_grad():
        features = model.model.get_image_features(
            pixel_values=inputs["pixel_values"], vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
        ).pooler_output[0]
    seen = []
    handle = model.model.language_model.register_forward_pre_hook(
        lambda m, a, k: seen.append(k["inputs_embeds"][0].clone()) if not seen else None, with_kwargs=True)
    engine = PruningEngine(model, load_method("divprune", 64), record_kept=True)
    try:
        with torch.no_grad(), engine:
            engine.generate(inputs, max_new_tokens=1, do_sample=False)
    finally:
        handle.remove()
    expected = sorted(official_divprune(features, 64))
    assert engine.state.kept[0] == expected
    start = int((inputs["input_ids"][0] == config.image_token_index).nonzero()[0])
    assert torch.equal(seen[0][start:start + 64], features[expected])
    assert engine.state.vision_per_layer == [64] * 32


def test_paper_schedule_is_the_official_ratio():
    method = load_method("divprune", 56, schedule="paper")
    assert method.schedule(32, V).stages == []
    with pytest.raises(ValueError, match=r"budget=64 does not match divprune schedule=paper .*allowed: budget=56"):
        load_method("divprune", 64, schedule="paper").schedule(32, V)
    with pytest.raises(ValueError, match=r"method.schedule='best' is not allowed"):
        DivPrune(64, schedule="best")
