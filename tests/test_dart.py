"""DART against a slow reference that follows the official `get_retained_image_token` (ZichenWen1/DART) literally:
Python sets, a loop over the pivots, `topk` of the negated cosine similarity over the remaining candidates."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from harness.engine import PruningEngine
from harness.methods import load_method
from harness.methods.dart import DART
from harness.schedule import realized_budget

V, L = 576, 32


def official_retained(hidden_out: torch.Tensor, keys: torch.Tensor, start: int, length: int, max_num: int,
                      pivot_image: int = 4, pivot_text: int = 4, extra: int = 0) -> list[int]:
    """The official selection. hidden_out: `[N, d]` final-normed layer-(K-1) output; keys: `[1, H, N, D]` after RoPE.
    `extra`: the first `extra` pivots visited take one more token (the matched split; 0 in the official code)."""
    token_topk = math.ceil(max_num // (pivot_image + pivot_text))
    any_states = keys.permute(0, 2, 1, 3).reshape(keys.shape[0], keys.shape[2], -1)
    image_norm = torch.norm(any_states[0][start:start + length, :], p=1, dim=-1)
    query_norm = torch.norm(any_states[0][start + length:, :], p=1, dim=-1)
    image_indices = (image_norm.topk(pivot_image).indices + start).tolist()
    query_indices = (query_norm.topk(pivot_text).indices + start + length).tolist()
    indices_set = set(image_indices + query_indices)
    valid_indices = set(range(start, start + length)) - set(image_indices)
    valid_indices_list = list(valid_indices)
    for visited, item in enumerate(list(indices_set)):
        valid_vectors = hidden_out[valid_indices_list, :]
        cos_sim = -torch.nn.functional.cosine_similarity(hidden_out[item, :], valid_vectors, dim=-1)
        top_k_indices = cos_sim.topk(token_topk + (visited < extra)).indices
        top_k_real_indices = [valid_indices_list[i] for i in top_k_indices]
        indices_set.update(top_k_real_indices)
        valid_indices.difference_update(top_k_real_indices)
        valid_indices_list = list(valid_indices)
    indices_set.difference_update(query_indices)
    return sorted(i - start for i in indices_set)


def layer_inputs(model, inputs, k_layer: int):
    """(final-normed output of layer K-1 `[N, d]`, keys of layer K-1 after RoPE `[1, H, N, D]`) from a vanilla pass."""
    lm = model.model.language_model
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
        x = out.hidden_states[k_layer - 1][0]  # input of layer K-1
        attn = lm.layers[k_layer - 1].self_attn
        h = lm.layers[k_layer - 1].input_layernorm(x)[None]
        n = h.shape[1]
        keys = attn.k_proj(h).view(1, n, -1, attn.head_dim).transpose(1, 2)
        queries = attn.q_proj(h).view(1, n, -1, attn.head_dim).transpose(1, 2)
        cos, sin = lm.rotary_emb(h, torch.arange(n)[None])
        _, keys = apply_rotary_pos_emb(queries, keys, cos, sin)
        hidden_out = lm.norm(out.hidden_states[k_layer][0])
    return hidden_out, keys


@pytest.mark.parametrize("budget,index", [(128, 0), (64, 1), (192, 2)])
def test_paper_selection_matches_the_official_code(tiny, prompts, budget, index):
    """schedule=paper (max_num_trunction = budget): the kept set entering layer 2 is the official one."""
    model, _ = tiny
    inputs = prompts[index]
    start = int((inputs["input_ids"][0] == model.config.image_token_index).nonzero()[0])
    hidden_out, keys = layer_inputs(model, inputs, 2)
    expected = official_retained(hidden_out, keys, start, V, budget)
    method = load_method("dart", budget, schedule="paper")
    engine = PruningEngine(model, method, record_kept=True)
    with torch.no_grad(), engine:
        engine.generate(inputs, max_new_tokens=2, do_sample=False)
    assert len(expected) == budget + 4
    assert engine.state.kept[2] == expected
    assert engine.state.vision_per_layer == [V, V] + [budget + 4] * 30


def test_matched_counts_and_realized_budget():
    for budget, keep in [(192, 166), (128, 98), (64, 30)]:
        stages = load_method("dart", budget).schedule(L, V).stages
        assert [(s.layer, s.keep) for s in stages] == [(1, keep)]
        assert abs(realized_budget(stages, L, V) - budget) <= 1
    stages = load_method("dart", 128, schedule="paper").schedule(L, V).stages
    assert [(s.layer, s.keep) for s in stages] == [(1, 132)] and realized_budget(stages, L, V) == 159.75


def test_matched_quota_split_when_pivots_do_not_divide(tiny, prompts):
    """Budget 102 keeps 70 = 4 image pivots + 66 taken; 66 = 8 x 8 + 2: the first two pivots visited take 9, the
    others 8, each from what the pivots before it left."""
    model, _ = tiny
    inputs = prompts[0]
    start = int((inputs["input_ids"][0] == model.config.image_token_index).nonzero()[0])
    hidden_out, keys = layer_inputs(model, inputs, 2)
    method = load_method("dart", 102)
    assert method.schedule(L, V).stages[0].keep == 70
    engine = PruningEngine(model, method, record_kept=True)
    with torch.no_grad(), engine:
        engine.generate(inputs, max_new_tokens=1, do_sample=False)
    assert engine.state.kept[2] == official_retained(hidden_out, keys, start, V, 64, extra=2)


def test_unreachable_budget_names_the_range():
    with pytest.raises(ValueError, match=r"budget=37 is unreachable for dart with K=2 and 4 image pivots.*allowed: 40\.\.576"):
        DART(37).schedule(L, V)
    DART(40).schedule(L, V)  # keeps 4: the image pivots only
