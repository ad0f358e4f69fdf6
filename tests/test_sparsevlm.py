"""SparseVLM against slow, independent references on the tiny random LLaVA (fp32).

The references use eager attention (`output_attentions` and full `[H, n, n]` matrices), rebuild the pruned
sequence by hand between stages, and do the rater / score / top-k / DPC-KNN arithmetic with plain loops.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import pytest
import torch
from helpers import gravity_matrix, reference_dpc, sparsevlm_scores, top_k
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from harness.engine import PruningEngine
from harness.methods.sparsevlm import SparseVLM
from harness.schedule import paper_budget, realized_budget, vision_per_layer

V, L = 576, 32


# ------------------------------------------------------------------ helpers
def image_span(inputs, model) -> tuple[int, int]:
    where = (inputs["input_ids"][0] == model.config.image_token_index).nonzero().flatten()
    return int(where[0]), int(where[-1]) + 1


@contextmanager
def attn_implementation(model, name: str):
    model.set_attn_implementation({"text_config": name})
    try:
        yield
    finally:
        model.set_attn_implementation({"text_config": "sdpa"})


def spy(method: SparseVLM) -> list[dict]:
    """Record what the method saw and decided at every stage (raters, scores, selection)."""
    records = []
    select = method.select

    def recording_select(ctx):
        sel = select(ctx)
        raters = method._raters[1]
        records.append({"span": ctx.image_span, "raters": raters.tolist(),
                        "scores": method.scores(ctx.attn, raters, *ctx.image_span, ctx.rope), "sel": sel})
        return sel

    method.select = recording_select
    return records


def reference_raters(embeds: torch.Tensor, start: int) -> list[int]:
    """relevance(t) = mean over image tokens v of softmax over text tokens of v.t; raters: above the mean."""
    image, text = embeds[start:start + V].double(), embeds[start + V:].double()
    relevance = [0.0] * text.shape[0]
    for dots in (image @ text.T).tolist():  # per image token: its dot products with the text tokens
        top = max(dots)
        exps = [math.exp(x - top) for x in dots]
        total = sum(exps)
        for t, e in enumerate(exps):
            relevance[t] += e / total / len(image)
    mean = sum(relevance) / len(relevance)
    return [t for t, r in enumerate(relevance) if r > mean]


def reference_recycle(scores: torch.Tensor, keep: list[int], block: torch.Tensor) -> torch.Tensor:
    """Top int(0.3 * n_pruned) + 1 pruned tokens by score (best first), int(n / 10) + 1 clusters, plain means."""
    values, kept = scores.tolist(), set(keep)
    pruned = [i for i in range(len(values)) if i not in kept]
    best = sorted(pruned, key=lambda i: (-values[i], i))[: int(len(pruned) * 0.3) + 1]
    return reference_dpc(block[best], int(len(best) / 10) + 1)


def causal_mask(n: int) -> torch.Tensor:
    return torch.full((n, n), float("-inf")).triu(1)[None, None]  # [1, 1, n, n]


def run_layers(lm, hidden: torch.Tensor, layers: range, capture: int | None = None):
    """Run decoder layers by hand (eager, compact positions 0..n-1); return the output and `capture`'s attention."""
    n = hidden.shape[1]
    position_ids = torch.arange(n)[None]
    cos_sin = lm.rotary_emb(hidden, position_ids=position_ids)
    captured = []
    for idx in layers:
        layer = lm.layers[idx]
        handle = layer.self_attn.register_forward_hook(lambda mod, args, out: captured.append(out[1])) if idx == capture else None
        hidden = layer(hidden, attention_mask=causal_mask(n), position_ids=position_ids, position_embeddings=cos_sin)
        if handle is not None:
            handle.remove()
    return hidden, (captured[0][0] if captured else None)  # [1, n, d], [H, n, n]


# ------------------------------------------------------------------ v1.5: stage by stage against eager attention
@pytest.mark.parametrize("variant,budget,prompt", [("v1.5", 192, 2), ("v1.5", 64, 0), ("v2", 128, 1)])
def test_compact_stages_match_hand_rebuilt_eager_reference(tiny, prompts, variant, budget, prompt):
    """Raters, scores, kept sets and merged states at every stage, then the logits: the engine equals eager
    attention on the sequence rebuilt by hand (kept + recycled clusters, renumbered 0..n-1). v2 runs here
    with compact positions, the gravity correction (guarded: head dim 16) and the top 2 of 4 heads."""
    model, _ = tiny
    inputs = prompts[prompt]
    start, _ = image_span(inputs, model)
    lm = model.model.language_model
    recycle, top_heads = variant == "v1.5", (None if variant == "v1.5" else 2)
    hd, theta = lm.config.head_dim, lm.config.rope_parameters["rope_theta"]
    method = SparseVLM(budget, variant=variant, positions="compact", top_heads=top_heads or 14)
    records = spy(method)
    with torch.no_grad():
        engine = PruningEngine(model, method, record_kept=True)
        with engine:
            logits = model(**inputs).logits
        with attn_implementation(model, "eager"):
            full = model(**inputs, output_attentions=True, output_hidden_states=True)
            raters = reference_raters(full.hidden_states[0][0], start)
            hidden = full.hidden_states[0]  # [1, N, d] input embeddings
            block = list(range(V))  # original index of each token of the current image block (-1: merged)
            layer_at = 0
            for i, stage in enumerate(engine.stages):
                cur_end = start + len(block)
                hidden, attn = run_layers(lm, hidden, range(layer_at, stage.layer + 1), capture=stage.layer)
                if i == 0:  # nothing pruned yet: the model's own output_attentions
                    assert (attn - full.attentions[stage.layer][0]).abs().max() < 1e-6
                    attn = full.attentions[stage.layer][0]
                weights = None
                if variant == "v2":  # compact positions: the current index is the position
                    weights = gravity_matrix([cur_end + t for t in raters], list(range(start, cur_end)), hd, theta)
                scores = sparsevlm_scores(attn, raters, cur_end, start, cur_end, top_heads, weights)
                keep = top_k(scores, stage.keep)
                merged = reference_recycle(scores, keep, hidden[0, start:cur_end]) if recycle else hidden[0, :0]
                rec = records[i]
                assert rec["span"] == (start, cur_end)
                assert rec["raters"] == raters
                assert (rec["scores"].double() - scores).abs().max() < 1e-6
                assert rec["sel"].keep.tolist() == keep, f"stage at layer {stage.layer}"
                assert merged.shape[0] == stage.merged
                if recycle:
                    assert (rec["sel"].merged.double() - merged).abs().max() < 1e-4
                else:
                    assert rec["sel"].merged is None
                block = [block[j] for j in keep] + [-1] * stage.merged
                assert engine.state.kept[stage.enters] == [b for b in block if b >= 0]
                hidden = torch.cat([hidden[:, :start], hidden[:, start + torch.tensor(keep, dtype=torch.long)],
                                    merged.float()[None], hidden[:, cur_end:]], dim=1)
                layer_at = stage.layer + 1
            hidden, _ = run_layers(lm, hidden, range(layer_at, L))
            ref_logits = model.lm_head(lm.norm(hidden))
    assert engine.state.vision_per_layer == vision_per_layer(engine.stages, L, V)  # merged tokens counted
    assert (-1 in block) == recycle  # the last stage's merged tokens reach the end
    assert logits.shape == ref_logits.shape
    assert (logits - ref_logits).abs().max().item() < 1e-4


# ------------------------------------------------------------------ v2: original positions against masked attention
HIDDEN: dict[int, torch.Tensor] = {}  # layer -> [N] bool: prompt positions no query may attend to
PROBS: dict[int, torch.Tensor] = {}  # layer -> [H, N, N] prefill attention


def masked_eager(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    key, value = repeat_kv(key, module.num_key_value_groups), repeat_kv(value, module.num_key_value_groups)
    q_len, k_len = query.shape[2], key.shape[2]
    logits = (query @ key.transpose(-1, -2)) * scaling  # [1, H, Q, K]
    blocked = torch.arange(k_len)[None, :] > torch.arange(k_len - q_len, k_len)[:, None]  # causal
    hidden = HIDDEN.get(module.layer_idx)
    if hidden is not None:
        blocked = blocked | torch.nn.functional.pad(hidden, (0, k_len - hidden.numel()))[None, :]
    probs = logits.masked_fill(blocked, float("-inf")).softmax(-1)
    if q_len == k_len:
        PROBS[module.layer_idx] = probs[0]
    return (probs @ value).transpose(1, 2).contiguous(), probs


AttentionInterface.register("test_sparsevlm_masked", masked_eager)
AttentionMaskInterface.register("test_sparsevlm_masked", sdpa_mask)


def test_v2_original_positions_match_masked_reference(tiny, prompts):
    """v2 (gravity, top-2 of 4 heads, original positions): kept sets from the masked full-length attention divided
    by the official gravity term, and the pruned prefill + decode steps (global decode positions, v2's default)
    equal a run that hides each stage's pruned tokens from the layer after it on."""
    model, _ = tiny
    inputs = prompts[1]
    start, end = image_span(inputs, model)
    n = inputs["input_ids"].shape[1]
    method = SparseVLM(192, variant="v2", top_heads=2)
    assert method.positions == "original" and method.decode_positions == "global"
    with torch.no_grad():
        engine = PruningEngine(model, method, record_kept=True)
        with engine:
            logits = model(**inputs).logits
            positions = engine.state.seq_positions.clone()
            gen = model.generate(**inputs, max_new_tokens=2, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True)
        HIDDEN.clear()
        for stage in engine.stages:
            hidden = torch.ones(n, dtype=torch.bool)
            hidden[:start], hidden[end:] = False, False
            hidden[start + torch.tensor(engine.state.kept[stage.enters])] = False
            HIDDEN.update({layer: hidden for layer in range(stage.enters, L)})
        PROBS.clear()
        try:
            with attn_implementation(model, "test_sparsevlm_masked"):
                ref = model(**inputs, output_hidden_states=True)
                probs = dict(PROBS)
                ref_gen = model.generate(**inputs, max_new_tokens=2, do_sample=False, output_logits=True,
                                         return_dict_in_generate=True)
        finally:
            HIDDEN.clear()
    ref_logits = ref.logits
    raters = reference_raters(ref.hidden_states[0][0], start)  # input embeddings, image features scattered in
    hd, theta = model.config.text_config.head_dim, model.config.text_config.rope_parameters["rope_theta"]
    current = list(range(V))  # visible original image indices
    heads_matter, gravity_matters = [], []
    for stage in engine.stages:
        attn = probs[stage.layer][:, :, start + torch.tensor(current)]  # [H, N, V'] visible image columns
        weights = gravity_matrix([end + t for t in raters], [start + j for j in current], hd, theta)  # original positions
        scores = sparsevlm_scores(attn, raters, end, 0, len(current), top_heads=2, weights=weights)
        keep = top_k(scores, stage.keep)
        heads_matter.append(keep != top_k(sparsevlm_scores(attn, raters, end, 0, len(current), weights=weights), stage.keep))
        gravity_matters.append(keep != top_k(sparsevlm_scores(attn, raters, end, 0, len(current), top_heads=2), stage.keep))
        current = [current[j] for j in keep]
        assert engine.state.kept[stage.enters] == current, f"stage at layer {stage.layer}"
    assert all(gravity_matters) and any(heads_matter)  # without either, other kept sets
    assert engine.state.vision_per_layer == vision_per_layer(engine.stages, L, V)
    assert (logits[0] - ref_logits[0, positions]).abs().max().item() < 1e-4
    for step, ref_step in zip(gen.logits, ref_gen.logits):
        assert (step - ref_step).abs().max().item() < 1e-4
    assert torch.equal(gen.sequences, ref_gen.sequences)


# ------------------------------------------------------------------ budgets and schedules
def test_full_budget_is_exactly_vanilla(tiny, prompts):
    """budget = 576, both variants: identical prefill logits (max |delta| = 0) and generations, through the hooks."""
    model, _ = tiny
    inputs = prompts[0]
    kwargs = {"max_new_tokens": 2, "do_sample": False, "output_logits": True, "return_dict_in_generate": True}
    with torch.no_grad():
        ref_logits = model(**inputs).logits
        ref = model.generate(**inputs, **kwargs)
        for variant in ("v1.5", "v2"):
            engine = PruningEngine(model, SparseVLM(V, variant=variant))
            with engine:
                logits = model(**inputs).logits
                out = model.generate(**inputs, **kwargs)
            assert [(s.keep, s.merged) for s in engine.stages] == [(V, 0)] * 3
            assert (logits - ref_logits).abs().max().item() == 0.0
            assert torch.equal(out.sequences, ref.sequences)
            for step, ref_step in zip(out.logits, ref.logits):
                assert (step - ref_step).abs().max().item() == 0.0
            assert engine.state.vision_per_layer == [V] * L


@pytest.mark.parametrize(
    "budget,counts,paper,realized",
    [(192, [309, 204, 113], 192.0, 206.5), (128, [312, 117, 39], 128.6, 145.4), (64, [82, 32, 18], 64.8, 82.3)],
)
def test_v15_published_counts_with_recycling(budget, counts, paper, realized):
    """The published keep counts plus the recycled clusters; the paper's accounting vs the realized mean."""
    stages = SparseVLM(budget, schedule="paper").schedule(L, V).stages
    published = {192: [300, 200, 110], 128: [303, 110, 36], 64: [66, 30, 17]}[budget]
    assert [(s.layer, s.keep) for s in stages] == list(zip([2, 6, 15], published))
    assert [s.count for s in stages] == counts
    assert paper_budget(stages, L, V) == pytest.approx(paper, abs=0.05)
    assert realized_budget(stages, L, V) == pytest.approx(realized, abs=0.05)


def test_v2_published_counts():
    for budget, counts in [(192, [300, 200, 118]), (128, [238, 108, 60]), (96, [246, 54, 28]), (64, [66, 34, 20])]:
        stages = SparseVLM(budget, variant="v2", schedule="paper").schedule(L, V).stages
        assert [(s.layer, s.keep, s.merged) for s in stages] == [(layer, c, 0) for layer, c in zip([2, 6, 15], counts)]


@pytest.mark.parametrize("variant", ["v1.5", "v2"])
@pytest.mark.parametrize("budget", [192, 128, 96, 64])
def test_matched_budget_is_realized_with_merged_tokens(variant, budget):
    """On the 7B layout (32 layers, 576 tokens), merged tokens counted: realized mean = budget +-1."""
    stages = SparseVLM(budget, variant=variant).schedule(L, V).stages
    assert abs(realized_budget(stages, L, V) - budget) <= 1, stages
    assert [s.layer for s in stages] == [2, 6, 15]
    current = V
    for stage in stages:
        pruned = current - stage.keep
        expected = 0 if variant == "v2" or pruned == 0 else int((int(pruned * 0.3) + 1) / 10) + 1
        assert stage.merged == expected and stage.keep <= current - 1
        current = stage.count


def test_engine_counts_follow_the_published_schedule(tiny, prompts):
    """Through the engine with record_kept, two samples in a row: per-layer image counts (merged included) are
    309/204/113, the recorded kept sets are the original tokens among them, and each sample gets its own raters.
    (The matched schedules are checked in the reference tests above.)"""
    model, _ = tiny
    method = SparseVLM(192, schedule="paper")
    with torch.no_grad():
        engine = PruningEngine(model, method, record_kept=True)
        with engine:
            for inputs in prompts[:2]:
                engine.generate(inputs, max_new_tokens=1, do_sample=False)
                st = engine.state
                assert method._raters[0] is st.input_embeds
                assert method._raters[1].tolist() == reference_raters(st.input_embeds, image_span(inputs, model)[0])
                assert st.vision_per_layer == [V] * 3 + [309] * 4 + [204] * 9 + [113] * 16
                assert st.vision_per_layer == vision_per_layer(engine.stages, L, V)
                for stage in engine.stages:
                    assert len(st.kept[stage.enters]) <= stage.keep
                assert len(st.kept[engine.stages[-1].enters]) + st.n_merged == 113 and st.n_merged >= 3


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match=r"method.variant='v3' is not allowed \(allowed: v1.5, v2\)"):
        SparseVLM(64, variant="v3")
    with pytest.raises(ValueError, match=r"method.schedule='published' is not allowed \(allowed: matched, paper\)"):
        SparseVLM(64, schedule="published")
    with pytest.raises(ValueError, match=r"method.positions='shifted' is not allowed"):
        SparseVLM(64, variant="v2", positions="shifted")
    with pytest.raises(ValueError, match=r"method.positions='original' is not allowed with variant=v1.5"):
        SparseVLM(64, positions="original")
    assert SparseVLM(64, variant="v2", positions="compact").positions == "compact"
    with pytest.raises(ValueError, match=r"budget=96 has no published SparseVLM v1.5 schedule \(allowed: \[64, 128, 192\]\)"):
        SparseVLM(96, schedule="paper").schedule(L, V)
    with pytest.raises(ValueError, match=r"budget=50 is unreachable for sparsevlm .* \(allowed: 57\.\.576\)"):
        SparseVLM(50).schedule(L, V)
    with pytest.raises(ValueError, match=r"budget=577 is outside"):
        SparseVLM(577).schedule(L, V)
    with pytest.raises(ValueError, match=r"method.layers=\[2, 6\] must name 3 stage layers"):
        SparseVLM(64, layers=[2, 6])
    with pytest.raises(ValueError, match=r"method.decode_positions='last' is not allowed \(allowed: global, per_layer\)"):
        SparseVLM(64, decode_positions="last")
    for floor in (0, 1, -0.5, "x"):
        with pytest.raises(ValueError, match=r"method.gravity_floor=.* is not allowed \(allowed: 0 < gravity_floor < 1\)"):
            SparseVLM(64, variant="v2", gravity_floor=floor)
    with pytest.raises(ValueError, match=r"method.gravity='yes' is not allowed \(allowed: true, false\)"):
        SparseVLM(64, variant="v2", gravity="yes")


def test_decode_positions_default_to_each_branch():
    """v1.5 decodes through FlashAttention-2 with per-layer cache lengths as positions; v2.0 with the global one."""
    assert SparseVLM(64).decode_positions == "per_layer"
    assert SparseVLM(64, variant="v2").decode_positions == "global"
    assert SparseVLM(64, decode_positions="global").decode_positions == "global"
