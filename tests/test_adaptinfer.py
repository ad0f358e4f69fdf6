"""AdaptInfer against the formula of docs/methods.md computed directly from full attention matrices."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import run_cli
from transformers.models.llama.modeling_llama import rotate_half

from harness.engine import PruningEngine
from harness.methods.adaptinfer import AdaptInfer
from harness.schedule import paper_budget, realized_budget

V = 576


def full_attention(layer, hidden: torch.Tensor, position_ids: torch.Tensor, rotary) -> torch.Tensor:
    """Softmax attention [H, n, n] of a decoder layer on `hidden` [1, n, d], computed from scratch."""
    attn = layer.self_attn
    x = layer.input_layernorm(hidden)
    n, hd = x.shape[1], attn.head_dim
    q = attn.q_proj(x).view(1, n, -1, hd).transpose(1, 2)
    k = attn.k_proj(x).view(1, n, -1, hd).transpose(1, 2)
    cos, sin = rotary(hidden, position_ids=position_ids)
    q = q * cos[:, None] + rotate_half(q) * sin[:, None]
    k = k * cos[:, None] + rotate_half(k) * sin[:, None]
    k = k.repeat_interleave(attn.num_key_value_groups, dim=1)
    logits = (q @ k.transpose(-1, -2))[0] / hd**0.5  # [H, n, n]
    causal = torch.ones(n, n, dtype=torch.bool).triu(1)
    return logits.masked_fill(causal, float("-inf")).softmax(-1)


def reference_scores(attn: torch.Tensor, start: int, end: int, lam: float = 1.0) -> torch.Tensor:
    """score(v) = sum_h sum_{j in T} w_h(j) A_h[j, v], with loops over heads and text tokens."""
    n = attn.shape[-1]
    text = range(end, n)
    w = torch.zeros(attn.shape[0], len(text))
    for h in range(attn.shape[0]):
        for a, j in enumerate(text):
            w[h, a] = sum(attn[h, i, j] for i in text) + sum(attn[h, j, k] for k in text) - attn[h, j, j]
    w = lam * w + (1 - lam) * w.mean()
    scores = torch.zeros(end - start)
    for h in range(attn.shape[0]):
        for a, j in enumerate(text):
            scores += w[h, a] * attn[h, j, start:end]
    return scores


def top_k(scores: torch.Tensor, k: int) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: (-scores[i].item(), i))
    return sorted(order[:k])


@pytest.mark.parametrize("budget,lam", [(192, 1.0), (64, 0.5)])
def test_kept_sets_and_logits_match_a_hand_rebuilt_reference(tiny, prompts, budget, lam):
    """Stage by stage: attention from scratch on the hand-pruned, renumbered sequence -> the formula -> top-k."""
    model, _ = tiny
    inputs = prompts[2]
    lm = model.model.language_model
    method = AdaptInfer(budget, lam=lam)
    with torch.no_grad():
        engine = PruningEngine(model, method, record_kept=True)
        with engine:
            logits = model(**inputs).logits
        ids = inputs["input_ids"][0]
        where = (ids == model.config.image_token_index).nonzero().flatten()
        start = int(where[0])
        hidden = model(**inputs, output_hidden_states=True).hidden_states[0]  # embeddings [1, N, d]
        image = torch.arange(V)  # original image indices of the current image block
        layer_at = 0
        for stage in engine.stages:
            n = hidden.shape[1]
            position_ids = torch.arange(n)[None]  # compact positions
            cos_sin = lm.rotary_emb(hidden, position_ids=position_ids)
            for layer in lm.layers[layer_at:stage.layer]:
                hidden = layer(hidden, attention_mask=None, position_ids=position_ids, position_embeddings=cos_sin)
            attn = full_attention(lm.layers[stage.layer], hidden, position_ids, lm.rotary_emb)
            hidden = lm.layers[stage.layer](hidden, attention_mask=None, position_ids=position_ids,
                                            position_embeddings=cos_sin)
            cur_end = start + image.numel()
            keep = top_k(reference_scores(attn, start, cur_end, lam), stage.keep)
            image = image[keep]
            assert engine.state.kept[stage.enters] == image.tolist(), f"stage at layer {stage.layer}"
            index = torch.cat([torch.arange(start), start + torch.tensor(keep, dtype=torch.long), torch.arange(cur_end, n)])
            hidden = hidden[:, index]
            layer_at = stage.layer + 1
        position_ids = torch.arange(hidden.shape[1])[None]
        cos_sin = lm.rotary_emb(hidden, position_ids=position_ids)
        for layer in lm.layers[layer_at:]:
            hidden = layer(hidden, attention_mask=None, position_ids=position_ids, position_embeddings=cos_sin)
        ref_logits = model.lm_head(lm.norm(hidden))
    assert logits.shape == ref_logits.shape
    assert (logits - ref_logits).abs().max().item() < 1e-4


def test_published_schedule_accounting():
    """The published '64' (133/27/3) realizes 82.9 tokens; its own accounting says 65.0."""
    stages = AdaptInfer(64, schedule="paper").schedule(32, V).stages
    assert [(s.layer, s.keep) for s in stages] == [(1, 133), (10, 27), (20, 3)]
    assert realized_budget(stages, 32, V) == pytest.approx(82.875)
    assert paper_budget(stages, 32, V) == pytest.approx(64.96875)
    assert realized_budget(AdaptInfer(128, schedule="paper").schedule(32, V).stages, 32, V) == pytest.approx(146.25)
    with pytest.raises(ValueError, match=r"budget=100 has no published AdaptInfer schedule \(allowed: \[32, 48, 64, 128\]\)"):
        AdaptInfer(100, schedule="paper").schedule(32, V)


def test_192_is_derived_never_published():
    """The paper and its code publish no 192 schedule: schedule=paper refuses it and names the way to run the
    derived one; schedule=derived runs 384/160/43 (192.1 in the paper's accounting) and says so."""
    with pytest.raises(ValueError, match=r"budget=192 has no published AdaptInfer schedule \(allowed: \[32, 48, 64, 128\]\).*"
                                         r"\[192\] with schedule=derived"):
        AdaptInfer(192, schedule="paper").schedule(32, V)
    method = AdaptInfer(192, schedule="derived")
    stages = method.schedule(32, V).stages
    assert [(s.layer, s.keep) for s in stages] == [(1, 384), (10, 160), (20, 43)]
    assert paper_budget(stages, 32, V) == pytest.approx(192.125)
    assert method.schedule_kind == "derived"
    with pytest.raises(ValueError, match=r"budget=128 has no derived AdaptInfer schedule \(allowed: \[192\]\)"):
        AdaptInfer(128, schedule="derived").schedule(32, V)


def test_matched_schedule_keeps_the_published_ratios():
    """Ratios of the nearest published entry: 192 scales the published 128 (290/72/18), not the derived 192."""
    for budget, published in [(192, (290, 72, 18)), (128, (290, 72, 18)), (64, (133, 27, 3))]:
        stages = AdaptInfer(budget).schedule(32, V).stages
        assert abs(realized_budget(stages, 32, V) - budget) <= 1
        scale = stages[0].keep / published[0]
        for stage, count in zip(stages, published):
            assert abs(stage.keep - scale * count) <= 1  # same ratios, rounded
    with pytest.raises(ValueError, match=r"budget=30 is unreachable for adaptinfer .* \(allowed: 35\.\.576\)"):
        AdaptInfer(30).schedule(32, V)


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match=r"method.schedule='published' is not allowed \(allowed: matched, paper, derived\)"):
        AdaptInfer(64, schedule="published")
    with pytest.raises(ValueError, match=r"method.decode_positions='last' is not allowed \(allowed: global, per_layer\)"):
        AdaptInfer(64, decode_positions="last")
    with pytest.raises(ValueError, match=r"method.positions='shifted' is not allowed"):
        AdaptInfer(64, positions="shifted")


ADAPTINFER = ["model=tiny_random", "logger=none", "method=adaptinfer"]


@pytest.mark.slow
def test_run_labels_the_derived_schedule_and_refuses_paper_192(tmp_path):
    """run.py: schedule=paper budget=192 is one clear error and no run dir; schedule=derived runs and results.json
    says derived (with the paper's accounting, 192.1), per-layer decode positions and compact positions."""
    bad = run_cli([*ADAPTINFER, "budget=192", "method.schedule=paper", f"hydra.run.dir={tmp_path / 'bad'}"],
                  tmp_path / "cache", threads=2)
    assert bad.returncode == 2
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "budget=192 has no published AdaptInfer schedule" in errors[0], bad.stderr[-2000:]
    assert not (tmp_path / "bad").exists()
    run_dir = tmp_path / "derived"
    ok = run_cli([*ADAPTINFER, "budget=192", "method.schedule=derived", "tasks=fixtures", "tasks.names=[gqa]",
                  "limit=2", "max_new_tokens=2", f"hydra.run.dir={run_dir}"], tmp_path / "cache", threads=2)
    assert ok.returncode == 0, ok.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["method_facts"] == {"positions": "compact", "decode_positions": "per_layer", "schedule": "derived",
                                       "reference": False, "ignores_budget": False, "difficult_reference": False,
                                       "paper_accounting": "stage_layer_reduced"}
    assert results["tokens"]["avg_vision_tokens_paper"] == pytest.approx(192.125)
    assert results["tokens"]["avg_vision_tokens"] == pytest.approx((2 * 576 + 9 * 384 + 10 * 160 + 11 * 43) / 32)
