"""PDrop against references built by hand, on the tiny random LLaVA (fp32, 32 layers).

- kept sets: the last prompt token's attention recomputed from each stage layer's *input* hidden states
  (output_hidden_states) with that layer's input_layernorm, q_proj/k_proj and RoPE;
- original positions: logits equal a full-length eager run that hides the dropped image tokens from
  every query from the stage layer itself on (PDrop's stage layer already sees the reduced set);
- compact positions: logits equal the layers run by hand on the kept tokens renumbered 0..n-1.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from reference import HIDDEN
from reference import NAME as MASKED_EAGER
from transformers.integrations.sdpa_attention import repeat_kv
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from harness.engine import PruningEngine
from harness.methods.pdrop import PDrop
from harness.schedule import realized_budget

METHOD_DIR = Path(__file__).parents[1] / "conf" / "method"
V = 576


def make_pdrop(budget, **overrides) -> PDrop:
    """conf/method/pdrop.yaml at a budget, as run.py instantiates it."""
    cfg = OmegaConf.create({"budget": budget, "method": OmegaConf.load(METHOD_DIR / "pdrop.yaml")})
    for key, value in overrides.items():
        cfg.method[key] = value
    return instantiate(cfg.method)


def image_start(inputs, model) -> int:
    return int((inputs["input_ids"][0] == model.config.image_token_index).nonzero()[0])


# ------------------------------------------------------------------ references
def last_token_scores(layer, lm, hidden: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """Softmax attention of the last token over `hidden` `[n, d]`, from `layer`'s own projections, mean over heads."""
    attn = layer.self_attn
    x = layer.input_layernorm(hidden[None])  # [1, n, d]
    n, hd = x.shape[1], attn.head_dim
    q = attn.q_proj(x).view(1, n, -1, hd).transpose(1, 2)  # [1, H, n, hd]
    k = attn.k_proj(x).view(1, n, -1, hd).transpose(1, 2)  # [1, H_kv, n, hd]
    cos, sin = lm.rotary_emb(x, position_ids=position_ids[None])
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    k = repeat_kv(k, attn.num_key_value_groups)
    logits = (q[0, :, -1:] @ k[0].transpose(-1, -2)) * attn.scaling  # [H, 1, n]: the last row sees every key
    return logits.softmax(-1)[:, 0].mean(0)  # [n]


def top_k_sorted(scores: torch.Tensor, k: int) -> torch.Tensor:
    return torch.sort(torch.topk(scores, k).indices).values




# ------------------------------------------------------------------ schedule
@pytest.mark.parametrize("budget,ratio", [(192, 0.560), (128, 0.419), (64, 0.192)])
def test_matched_schedule_realizes_budget_on_7b_layout(budget, ratio):
    """Stages before 2/8/16 on 32 layers x 576 tokens: realized = B +-1; the solved ratio is the published one."""
    method = make_pdrop(budget)
    decision = method.schedule(32, V)
    stages, solved = decision.stages, decision.facts["ratio"]
    assert [(s.layer, s.enters, s.before) for s in stages] == [(2, 2, True), (8, 8, True), (16, 16, True)]
    assert abs(realized_budget(stages, 32, V) - budget) <= 1
    assert abs(solved - ratio) < 0.005 and method.ratio == 0.5  # the method keeps its configured ratio
    assert [s.keep for s in stages] == [round(V * solved ** i) for i in (1, 2, 3)]


def test_paper_schedule_and_bad_budgets():
    stages = make_pdrop(270, schedule="paper").schedule(32, V).stages
    assert [(s.enters, s.keep) for s in stages] == [(8, 288), (16, 144), (24, 72)]
    with pytest.raises(ValueError, match="realizes 270.0 image tokens"):
        make_pdrop(192, schedule="paper").schedule(32, V)
    with pytest.raises(ValueError, match=r"budget=20 is unreachable for pdrop .* \(allowed: 35\.\.576\)"):
        make_pdrop(20).schedule(32, V)
    with pytest.raises(ValueError, match="method.positions='first' is not allowed"):
        PDrop(64, positions="first")


# ------------------------------------------------------------------ exactness
@pytest.fixture(scope="module")
def vanilla(tiny, prompts):
    """Vanilla prefill (logits + hidden states) and a 3-token greedy generation of prompts[1]."""
    model, _ = tiny
    inputs = prompts[1]
    with torch.no_grad():
        full = model(**inputs, output_hidden_states=True)
        gen = model.generate(**inputs, max_new_tokens=3, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
    return full, gen


def test_full_budget_equals_vanilla(tiny, prompts, vanilla):
    """budget = 576 (ratio 1): every stage keeps all 576 tokens; logits and tokens identical (delta = 0)."""
    model, _ = tiny
    full, ref = vanilla
    engine = PruningEngine(model, make_pdrop(V))
    with torch.no_grad(), engine:
        logits = model(**prompts[1]).logits
        _, out = engine.generate(prompts[1], max_new_tokens=3, do_sample=False, output_logits=True)
    assert [s.keep for s in engine.stages] == [V, V, V]
    assert (logits - full.logits).abs().max().item() == 0.0
    assert all((a - b).abs().max().item() == 0.0 for a, b in zip(out.logits, ref.logits))
    assert torch.equal(out.sequences, ref.sequences)
    assert engine.state.vision_per_layer == [V] * 32


def test_original_positions_match_hand_scores_and_masked_reference(tiny, prompts):
    """positions=original, budget 128 (242/101/43 before layers 2/8/16): kept sets from each stage layer's input
    hidden states by hand; prefill logits and decode steps equal the masked full-length eager run."""
    model, _ = tiny
    inputs = prompts[1]
    n = inputs["input_ids"].shape[1]
    start = image_start(inputs, model)
    lm = model.model.language_model
    method = make_pdrop(128, positions="original")
    with torch.no_grad():
        engine = PruningEngine(model, method, record_kept=True)
        with engine:
            logits = model(**inputs).logits
            positions = engine.state.seq_positions.clone()
            kept = {layer: torch.tensor(k) for layer, k in engine.state.kept.items()}
            vision_per_layer = list(engine.state.vision_per_layer)
            gen = model.generate(**inputs, max_new_tokens=3, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True)

        # masked reference: from each stage layer on, the image tokens outside its kept set are hidden
        stages = engine.stages
        HIDDEN.clear()
        for i, stage in enumerate(stages):
            hidden = torch.ones(n, dtype=torch.bool)
            hidden[:start] = False
            hidden[start + V:] = False
            hidden[start + kept[stage.enters]] = False
            last = stages[i + 1].enters if i + 1 < len(stages) else 32
            HIDDEN.update({layer: hidden for layer in range(stage.enters, last)})
        model.set_attn_implementation({"text_config": MASKED_EAGER})
        try:
            ref_gen = model.generate(**inputs, max_new_tokens=3, do_sample=False, output_logits=True,
                                     output_hidden_states=True, return_dict_in_generate=True)
        finally:
            model.set_attn_implementation({"text_config": "sdpa"})
            HIDDEN.clear()
        ref_hidden = ref_gen.hidden_states[0]  # prefill: [embeddings, layer 0 out, ..., final (after the norm)]
        ref_logits = model.lm_head(ref_hidden[-1])  # [1, n, vocab]

        # kept sets by hand: the input of stage layer s (hidden_states[s]) over the tokens visible before it
        visible = torch.arange(n)
        image_ids = torch.arange(V)  # original image indices of the current image tokens
        for stage in stages:
            layer = lm.layers[stage.layer]
            scores = last_token_scores(layer, lm, ref_hidden[stage.layer][0, visible], visible)
            is_image = (visible >= start) & (visible < start + V)
            image_ids = image_ids[top_k_sorted(scores[is_image], stage.keep)]
            assert kept[stage.enters].tolist() == image_ids.tolist(), f"stage before layer {stage.layer}"
            visible = torch.cat([visible[~is_image & (visible < start)], start + image_ids, visible[visible >= start + V]])

    assert [s.keep for s in stages] == [242, 101, 43]
    assert vision_per_layer == [V] * 2 + [242] * 6 + [101] * 8 + [43] * 16
    assert torch.equal(positions, visible)
    assert logits.shape[1] == n - V + 43
    assert (logits[0] - ref_logits[0, positions]).abs().max().item() < 1e-4
    for step, ref_step in zip(gen.logits, ref_gen.logits):
        assert (step - ref_step).abs().max().item() < 1e-4
    assert torch.equal(gen.sequences, ref_gen.sequences)


def test_compact_positions_match_rebuilt_sequence(tiny, prompts, vanilla):
    """positions=compact (official): kept sets and logits equal the decoder run by hand, renumbering the kept
    tokens 0..n-1 at every stage and scoring each stage from that layer's input with those positions."""
    model, _ = tiny
    inputs = prompts[1]
    full, _ = vanilla
    start = image_start(inputs, model)
    lm = model.model.language_model
    method = make_pdrop(64)  # 111/21/4
    with torch.no_grad():
        engine = PruningEngine(model, method, record_kept=True)
        with engine:
            logits = model(**inputs).logits
        stage_at = {s.enters: s for s in engine.stages}
        first = engine.stages[0].enters
        hidden = full.hidden_states[first][0]  # [n, d]: layers before the first stage see everything
        image_ids = torch.arange(V)
        for idx in range(first, 32):
            layer = lm.layers[idx]
            if idx in stage_at:
                n_image = image_ids.numel()
                scores = last_token_scores(layer, lm, hidden, torch.arange(hidden.shape[0]))
                keep = top_k_sorted(scores[start:start + n_image], stage_at[idx].keep)
                image_ids = image_ids[keep]
                assert engine.state.kept[idx] == image_ids.tolist(), f"stage before layer {idx}"
                hidden = torch.cat([hidden[:start], hidden[start + keep], hidden[start + n_image:]])
            position_ids = torch.arange(hidden.shape[0])[None]
            cos_sin = lm.rotary_emb(hidden[None], position_ids=position_ids)
            hidden = layer(hidden[None], attention_mask=None, position_ids=position_ids, position_embeddings=cos_sin)[0]
        ref_logits = model.lm_head(lm.norm(hidden))
    assert [s.keep for s in engine.stages] == [111, 21, 4]
    assert logits[0].shape == ref_logits.shape
    assert (logits[0] - ref_logits).abs().max().item() < 1e-4
