"""Decode positions (global | per_layer) against a no-cache reference on the tiny random LLaVA (fp32).

The reference runs the whole sequence (prompt + the tokens generated so far) through the decoder layers by
hand, without a KV cache: at each stage layer the pruned image tokens leave; prompt tokens keep their original
or compact positions; a generated token g sits at N + g ("global") or at n_l + g, where n_l is the prompt
tokens layer l kept ("per_layer": that layer's cache length when g is decoded).
"""

from __future__ import annotations

import pytest
import torch

from harness.engine import PruningEngine
from harness.methods.adaptinfer import AdaptInfer
from harness.methods.fastv import FastV
from harness.methods.sparsevlm import SparseVLM

STEPS = 4


def reference_logits(model, inputs: dict, kept: dict[int, list[int]], new_tokens: list[int], compact: bool,
                     per_layer: bool) -> torch.Tensor:
    """Next-token logits `[vocab]` after prompt + new_tokens, rebuilt layer by layer with no cache."""
    lm = model.model.language_model
    prompt = inputs["input_ids"]
    n_prompt = prompt.shape[1]
    ids = torch.cat([prompt, torch.tensor([new_tokens], dtype=prompt.dtype)], dim=1)
    where = (prompt[0] == model.config.image_token_index).nonzero().flatten()
    start, end = int(where[0]), int(where[-1]) + 1
    hidden = model(input_ids=ids, pixel_values=inputs["pixel_values"], output_hidden_states=True).hidden_states[0]
    order = torch.arange(ids.shape[1])  # original index of each current token
    generated = torch.arange(len(new_tokens))
    for idx, layer in enumerate(lm.layers):
        if idx in kept:  # the kept image tokens enter this layer
            visible = (order < start) | (order >= end) | torch.isin(order, start + torch.tensor(kept[idx]))
            hidden, order = hidden[:, visible], order[visible]
        in_prompt = int((order < n_prompt).sum())
        prompt_positions = torch.arange(in_prompt) if compact else order[:in_prompt]
        new_positions = (in_prompt if per_layer else n_prompt) + generated
        position_ids = torch.cat([prompt_positions, new_positions])[None]
        cos_sin = lm.rotary_emb(hidden, position_ids=position_ids)
        hidden = layer(hidden, attention_mask=None, position_ids=position_ids, position_embeddings=cos_sin)
    return model.lm_head(lm.norm(hidden))[0, -1]


@pytest.mark.parametrize(
    "method,decode_positions",
    [
        (AdaptInfer(192), "per_layer"),  # the default, as the official FlashAttention-2 path
        (AdaptInfer(192, decode_positions="global"), "global"),
        (FastV(300), "global"),  # the default
        (FastV(300, decode_positions="per_layer"), "per_layer"),
        (SparseVLM(192, variant="v2", positions="compact", decode_positions="per_layer", top_heads=2), "per_layer"),
    ],
    ids=["adaptinfer", "adaptinfer-global", "fastv", "fastv-per_layer", "sparsevlm_v2-compact-per_layer"],
)
def test_generated_tokens_take_the_chosen_positions(tiny, prompts, method, decode_positions):
    """Every decode step's logits equal the no-cache reference with the chosen rule, and differ from the other
    rule's (the choice changes answers longer than one token)."""
    model, _ = tiny
    inputs = prompts[2]
    assert method.decode_positions == decode_positions
    with torch.no_grad():
        engine = PruningEngine(model, method, record_kept=True)
        with engine:
            gen = model.generate(**inputs, max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False,
                                 output_logits=True, return_dict_in_generate=True)
        assert engine.facts()["decode_positions"] == decode_positions
        kept = dict(engine.state.kept)
        tokens = gen.sequences[0, inputs["input_ids"].shape[1]:].tolist()
        compact = method.positions == "compact"
        for step in range(STEPS):
            logits = gen.logits[step][0]
            ref = reference_logits(model, inputs, kept, tokens[:step], compact, decode_positions == "per_layer")
            assert (logits - ref).abs().max().item() < 1e-5, f"step {step}"
            if step > 0:  # the first token comes from the prefill, the others from decode steps
                other = reference_logits(model, inputs, kept, tokens[:step], compact, decode_positions == "global")
                assert (logits - other).abs().max().item() > 1e-4, f"step {step}"


def test_defaults_follow_the_official_code():
    assert AdaptInfer(64).decode_positions == "per_layer"
    assert FastV(64).decode_positions == "global"
    assert SparseVLM(64).decode_positions == "per_layer"
    assert SparseVLM(64, variant="v2").decode_positions == "global"
    with pytest.raises(ValueError, match=r"method.decode_positions='cache' is not allowed \(allowed: global, per_layer\)"):
        FastV(64, decode_positions="cache")


def test_engine_records_the_resolved_facts(tiny):
    model, _ = tiny
    facts = PruningEngine(model, AdaptInfer(192, schedule="derived")).facts()
    assert facts == {"positions": "compact", "decode_positions": "per_layer", "schedule": "derived"}
    facts = PruningEngine(model, SparseVLM(128, variant="v2")).facts()
    assert facts == {"positions": "original", "decode_positions": "global", "schedule": "matched"}
