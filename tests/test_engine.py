"""The pruning engine against independent references, on the tiny random LLaVA in fp32."""

from __future__ import annotations

import pytest
import torch
from reference import HIDDEN
from reference import NAME as MASKED_EAGER

from harness.engine import PruningEngine
from harness.methods import load_method

V = 576  # budget = 576 equals vanilla for every method: tests/test_methods.py


def image_span(inputs, model) -> tuple[int, int]:
    where = (inputs["input_ids"][0] == model.config.image_token_index).nonzero().flatten()
    return int(where[0]), int(where[-1]) + 1


# ------------------------------------------------------------------ reference: the shared masked eager attention
def run_masked_reference(model, inputs, hidden_from_layer: int, hidden_positions: torch.Tensor, max_new_tokens: int):
    """Generate with all tokens present, pruned ones hidden from every query from `hidden_from_layer` on."""
    n = inputs["input_ids"].shape[1]
    hidden = torch.zeros(n, dtype=torch.bool)
    hidden[hidden_positions] = True
    HIDDEN.clear()
    HIDDEN.update({layer: hidden for layer in range(hidden_from_layer, model.config.text_config.num_hidden_layers)})
    model.set_attn_implementation({"text_config": MASKED_EAGER})
    try:
        logits = model(**inputs).logits
        gen = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             output_logits=True, return_dict_in_generate=True)
    finally:
        model.set_attn_implementation({"text_config": "sdpa"})
        HIDDEN.clear()
    return logits, gen


# ------------------------------------------------------------------ tests
@pytest.mark.parametrize("budget", [500, 400, 300])
def test_fastv_kept_indices_match_eager_reference(tiny, prompts, budget):
    """Kept set = top-k of the last row of layer K-1's eager attention, mean over heads."""
    model, _ = tiny
    for inputs in prompts:
        start, end = image_span(inputs, model)
        with torch.no_grad():
            model.set_attn_implementation({"text_config": "eager"})
            try:
                attentions = model(**inputs, output_attentions=True).attentions
            finally:
                model.set_attn_implementation({"text_config": "sdpa"})
            method = load_method("fastv", budget)
            engine = PruningEngine(model, method, record_kept=True)
            with engine:
                model(**inputs)
        keep = engine.stages[0].keep
        scores = attentions[method.K - 1][0, :, -1, start:end].mean(0)  # [V]
        expected = sorted(torch.topk(scores, keep).indices.tolist())
        assert engine.state.kept[method.K] == expected


@pytest.mark.parametrize("name,budget", [("fastv", 400), ("fastv", 300), ("random", 350)])
def test_pruned_logits_match_masked_reference(tiny, prompts, name, budget):
    """Original positions: the pruned prefill and the first decode steps equal a full-length run that hides
    the pruned image tokens from every query from the first pruned layer on."""
    model, _ = tiny
    inputs = prompts[1]
    start, _ = image_span(inputs, model)
    method = load_method(name, budget)
    with torch.no_grad():
        engine = PruningEngine(model, method, record_kept=True)
        engine.sample_seed = 7
        with engine:
            logits = model(**inputs).logits
            positions = engine.state.seq_positions.clone()
            gen = model.generate(**inputs, max_new_tokens=4, do_sample=False,
                                 output_logits=True, return_dict_in_generate=True)
        kept = torch.tensor(engine.state.kept[method.K]) + start
        pruned = torch.tensor(sorted(set(range(start, start + V)) - set(kept.tolist())))
        ref_logits, ref_gen = run_masked_reference(model, inputs, method.K, pruned, max_new_tokens=4)
    assert logits.shape[1] == inputs["input_ids"].shape[1] - pruned.numel()
    assert (logits[0] - ref_logits[0, positions]).abs().max().item() < 1e-4
    for step, ref_step in zip(gen.logits, ref_gen.logits):
        assert (step - ref_step).abs().max().item() < 1e-4
    assert torch.equal(gen.sequences, ref_gen.sequences)


def test_compact_positions_match_rebuilt_sequence(tiny, prompts):
    """Compact positions: the engine equals running layers K.. by hand on the kept tokens renumbered 0..n-1."""
    model, _ = tiny
    inputs = prompts[2]
    start, end = image_span(inputs, model)
    method = load_method("random", 300, positions="compact")
    lm = model.model.language_model
    with torch.no_grad():
        engine = PruningEngine(model, method, record_kept=True)
        engine.sample_seed = 3
        with engine:
            logits = model(**inputs).logits
        kept = torch.tensor(engine.state.kept[method.K]) + start
        full = model(**inputs, output_hidden_states=True)
        hidden = full.hidden_states[method.K]  # input of layer K (output of layer K-1), full length
        index = torch.cat([torch.arange(start), kept, torch.arange(end, hidden.shape[1])])
        hidden = hidden[:, index]
        position_ids = torch.arange(hidden.shape[1])[None]
        cos_sin = lm.rotary_emb(hidden, position_ids=position_ids)
        for layer in lm.layers[method.K:]:
            hidden = layer(hidden, attention_mask=None, position_ids=position_ids, position_embeddings=cos_sin)
        ref_logits = model.lm_head(lm.norm(hidden))
    assert logits.shape == ref_logits.shape
    assert (logits - ref_logits).abs().max().item() < 1e-4


@pytest.mark.parametrize("budget", [192, 128, 64])
def test_kv_cache_and_vision_counts_follow_schedule(tiny, prompts, budget):
    """Each layer caches what it saw; vision_per_layer follows the schedule; realized mean = budget +-1."""
    model, _ = tiny
    inputs = prompts[0]
    num_layers = model.config.text_config.num_hidden_layers
    method = load_method("fastv", budget)
    n = inputs["input_ids"].shape[1]
    with torch.no_grad():
        engine = PruningEngine(model, method)
        with engine:
            out = model(**inputs, use_cache=True)
    keep = engine.stages[0].keep
    expected = [V] * method.K + [keep] * (num_layers - method.K)
    assert engine.state.vision_per_layer == expected
    assert abs(sum(expected) / num_layers - budget) <= 1
    lengths = [layer.keys.shape[-2] for layer in out.cache.layers]
    assert lengths == [n - V + count for count in expected]
    assert out.cache.get_seq_length() == n


def test_engine_uses_sdpa_not_eager(tiny, prompts, monkeypatch):
    """The engine never needs eager attention: make eager fail and run a pruned generation."""
    import transformers.models.llama.modeling_llama as llama

    def fail(*args, **kwargs):
        raise AssertionError("eager attention was called")

    monkeypatch.setattr(llama, "eager_attention_forward", fail)
    model, _ = tiny
    with torch.no_grad(), PruningEngine(model, load_method("fastv", 300)):
        model.generate(**prompts[0], max_new_tokens=3, do_sample=False)


def test_detach_restores_vanilla(tiny, prompts):
    model, _ = tiny
    inputs = prompts[0]
    with torch.no_grad():
        ref = model(**inputs).logits
        engine = PruningEngine(model, load_method("fastv", 300)).attach()
        assert model(**inputs).logits.shape[1] < ref.shape[1]
        engine.detach()
        after = model(**inputs).logits
    assert torch.equal(after, ref)
    assert model.config.text_config._attn_implementation == "sdpa"
    for layer in model.model.language_model.layers:
        assert not layer._forward_pre_hooks and not hasattr(layer.self_attn, "_prunebench_engine")
    assert not model._forward_pre_hooks


@pytest.mark.parametrize(
    "name,budget,message",
    [
        ("fastv", 0, "budget=0 is outside"),
        ("fastv", 577, "allowed: 1..576"),
        ("fastv", 1.5, "budget=1.5 is not an integer"),
        ("random", "abc", "budget='abc' is not an integer"),
        ("fastv", 20, "budget=20 is unreachable for fastv with K=2 on 32 layers"),
    ],
)
def test_bad_budget_is_a_clear_error(tiny, name, budget, message):
    model, _ = tiny
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        PruningEngine(model, load_method(name, budget))
