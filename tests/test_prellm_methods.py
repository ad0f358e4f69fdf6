"""Pre-LLM methods (pool, blind, VisionZip, random at stage=prellm) through `PruningEngine.generate`, on the tiny
random LLaVA in fp32, against hand references."""

from __future__ import annotations

import math

import pytest
import torch

from harness.engine import PruningEngine
from harness.methods import load_method
from harness.methods.base import PreLLMContext
from harness.methods.pool import Pool
from harness.methods.visionzip import merge_contextual


V = 576


def image_span(inputs, model) -> tuple[int, int]:
    where = (inputs["input_ids"][0] == model.config.image_token_index).nonzero().flatten()
    return int(where[0]), int(where[-1]) + 1


def run_engine(model, method, inputs, max_new_tokens: int = 1, seed: int = 0):
    """engine.generate with the language model's `inputs_embeds` captured at prefill.

    Returns (engine, new tokens, generate output, prefill inputs_embeds `[N', d]`).
    """
    seen = []

    def grab(module, args, kwargs):
        if not seen:
            seen.append(kwargs["inputs_embeds"][0].clone())

    handle = model.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    engine = PruningEngine(model, method, record_kept=True)
    engine.sample_seed = seed
    try:
        with torch.no_grad(), engine:
            new_tokens, out = engine.generate(inputs, max_new_tokens=max_new_tokens, do_sample=False, output_logits=True)
    finally:
        handle.remove()
    return engine, new_tokens, out, seen[0]


def image_features(model, inputs) -> torch.Tensor:
    """Projected image features `[V, d]`, as vanilla LLaVA fills the image block."""
    config = model.config
    with torch.no_grad():
        return model.model.get_image_features(
            pixel_values=inputs["pixel_values"], vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
        ).pooler_output[0]


# ------------------------------------------------------------------ pool
@pytest.mark.parametrize("budget,grid", [(192, (16, 12)), (128, (16, 8)), (64, (8, 8)), (63, (9, 7)), (576, (24, 24))])
def test_pool_grid_and_values_match_hand_average(budget, grid):
    """h x w tokens, row-major; each the plain mean of its adaptive-pooling cells of the 24x24 grid."""
    method = load_method("pool", budget)
    decision = method.schedule(32, V)
    assert decision.stages == [] and decision.budget == budget and decision.facts == {"grid": grid}
    features = torch.randn(V, 16, generator=torch.Generator().manual_seed(budget))
    sel = method.reduce(PreLLMContext(features, None, None, torch.Generator(), budget=budget))
    h, w = grid
    assert sel.keep.numel() == 0 and sel.merged.shape == (budget, 16)
    cells = features.reshape(24, 24, 16)
    for i in range(h):
        rows = range(math.floor(i * 24 / h), math.ceil((i + 1) * 24 / h))
        for j in range(w):
            cols = range(math.floor(j * 24 / w), math.ceil((j + 1) * 24 / w))
            expected = torch.stack([cells[r, c] for r in rows for c in cols]).mean(0)
            torch.testing.assert_close(sel.merged[i * w + j], expected, rtol=1e-5, atol=1e-6)
    if budget == V:
        assert torch.equal(sel.merged, features)  # the identity, bit for bit


@pytest.mark.parametrize("budget,message", [
    (23, (r"budget=23 has no pool grid: its closest-to-square grid 23x1 is more elongated than 4:1 "
          r"\(nearby allowed: 21 \(7x3\), 24 \(6x4\)\)")),
    (575, r"grid 25x23 exceeds the 24x24 feature grid \(nearby allowed: 552 \(24x23\), 576 \(24x24\)\)"),
    (0, r"budget=0 is outside"),
])
def test_pool_rejects_budgets_without_a_grid(budget, message):
    with pytest.raises(ValueError, match=message):
        Pool(budget).schedule(32, V)


@pytest.fixture(scope="module")
def vanilla_generation(tiny, prompts):
    model, _ = tiny
    with torch.no_grad():
        return model.generate(**prompts[0], max_new_tokens=3, do_sample=False, output_logits=True,
                              return_dict_in_generate=True)


@pytest.mark.parametrize("name,overrides", [("pool", {}), ("visionzip", {}), ("random", {"stage": "prellm"})])
def test_full_budget_equals_vanilla(tiny, prompts, vanilla_generation, name, overrides):
    """budget = 576 (pool: the 24x24 identity): logits delta = 0 and identical tokens vs model.generate."""
    model, _ = tiny
    inputs = prompts[0]
    ref = vanilla_generation
    engine, new_tokens, out, _ = run_engine(model, load_method(name, V, **overrides), inputs, max_new_tokens=3)
    assert all((a - b).abs().max().item() == 0.0 for a, b in zip(out.logits, ref.logits))
    assert torch.equal(new_tokens, ref.sequences[0, inputs["input_ids"].shape[1]:])
    assert engine.state.vision_per_layer == [V] * 32


# ------------------------------------------------------------------ blind
def test_blind_removes_the_image_and_ignores_it(tiny, prompts):
    """The LLM sees the prompt's text embeddings only (N - 576 positions, no image token); answers and logits
    are the same for two different images."""
    model, _ = tiny
    results = []
    for image in (0, 1):  # the prompt of prompts[0] with the images of prompts[0] and prompts[1]
        inputs = {**prompts[0], "pixel_values": prompts[image]["pixel_values"]}
        method = load_method("blind", 192)
        engine, new_tokens, out, embeds = run_engine(model, method, inputs, max_new_tokens=3)
        ids = inputs["input_ids"][0]
        text_ids = ids[ids != model.config.image_token_index]
        assert embeds.shape[0] == ids.shape[0] - V
        assert torch.equal(embeds, model.get_input_embeddings()(text_ids))
        assert engine.state.vision_per_layer == [0] * 32 and engine.decision.budget == 0
        results.append((new_tokens, out.logits, inputs["pixel_values"]))
    (tokens_a, logits_a, pixels_a), (tokens_b, logits_b, pixels_b) = results
    assert not torch.equal(pixels_a, pixels_b)
    assert torch.equal(tokens_a, tokens_b)
    assert all(torch.equal(a, b) for a, b in zip(logits_a, logits_b))


# ------------------------------------------------------------------ VisionZip
@pytest.mark.parametrize("budget,split", [(192, (162, 30)), (128, (108, 20)), (64, (54, 10)), (100, (84, 16)),
                                          (1, (1, 0)), (576, (576, 0))])
def test_visionzip_splits(budget, split):
    method = load_method("visionzip", budget)
    decision = method.schedule(32, V)
    assert decision.stages == [] and decision.budget == budget and decision.facts == {"split": split}


def test_visionzip_matches_eager_vision_attention_and_hand_merge(tiny, prompts):
    """Dominant = top-54 CLS attention (eager, layer -2 of the tower = attentions[-2], mean over heads) in original
    order; the 10 contextual tokens = group means of the projected features, built by a hand loop."""
    model, _ = tiny
    inputs = prompts[2]
    tower = model.model.vision_tower
    with torch.no_grad():
        model.set_attn_implementation({"vision_config": "eager"})
        try:
            vision = tower(inputs["pixel_values"], output_attentions=True, output_hidden_states=True)
        finally:
            model.set_attn_implementation({"vision_config": "sdpa"})
        features = image_features(model, inputs)  # [V, d]
        # vision_feature_layer = -2: the features are hidden_states[-2], the output of encoder layer -2
        assert model.config.vision_feature_layer == -2
        torch.testing.assert_close(model.model.multi_modal_projector(vision.hidden_states[-2][0, 1:]), features)
        cls_attn = vision.attentions[-2][0, :, 0, 1:].mean(0)  # [Hv, V+1, V+1] -> [V]
        layer = tower.encoder.layers[-2]
        x = layer.layer_norm1(vision.hidden_states[-3][0])  # the input of encoder layer -2, [V+1, dv]
        keys = layer.self_attn.k_proj(x).view(V + 1, -1, layer.self_attn.head_dim)[1:].mean(1)  # [V, dh] mean over heads

    engine, _, _, embeds = run_engine(model, load_method("visionzip", 64), inputs)
    start, _ = image_span(inputs, model)
    dominant = sorted(torch.topk(cls_attn, 54).indices.tolist())
    assert engine.state.kept[0] == dominant
    assert engine.state.vision_per_layer == [64] * 32
    assert embeds.shape[0] == inputs["input_ids"].shape[1] - V + 64
    assert torch.equal(embeds[start:start + 54], features[dominant])

    rest = [i for i in range(V) if i not in set(dominant)]  # 522 remaining patches, original order
    step = len(rest) // 10
    targets = [rest[t] for t in range(0, len(rest), step)][:10]
    groups = {t: [t] for t in targets}
    for i in rest:
        if i in groups:
            continue
        sims = [torch.nn.functional.cosine_similarity(keys[i], keys[t], dim=0).item() for t in targets]
        groups[targets[max(range(10), key=lambda j: (sims[j], -j))]].append(i)
    expected = torch.stack([features[groups[t]].mean(0) for t in targets])
    torch.testing.assert_close(embeds[start + 54:start + 64], expected, rtol=1e-4, atol=1e-5)


def test_visionzip_full_budget_keeps_everything_in_order():
    method = load_method("visionzip", V)
    gen = torch.Generator().manual_seed(0)
    ctx = PreLLMContext(torch.randn(V, 8, generator=gen), torch.rand(2, V + 1, generator=gen),
                        torch.randn(2, V + 1, 4, generator=gen), gen, budget=method.schedule(32, V).budget)
    sel = method.reduce(ctx)
    assert sel.keep.tolist() == list(range(V)) and sel.merged is None


def test_visionzip_contextual_targets_are_every_kth_remaining_token():
    """6 remaining tokens into 2 groups: step 6 // 2 = 3, targets = tokens 0 and 3; the others join the target
    with the most similar key (a tie goes to the earlier target); each group is the mean of its features."""
    metric = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.1, 0.9], [0.0, 1.0], [0.6, 0.4], [0.5, 0.5]])
    metric = metric / metric.norm(dim=-1, keepdim=True)
    features = torch.arange(6.0)[:, None] * torch.tensor([[1.0, 10.0]])  # [6, 2]
    merged = merge_contextual(features, metric, 2)
    expected = torch.stack([features[[0, 1, 4, 5]].mean(0), features[[2, 3]].mean(0)])
    torch.testing.assert_close(merged, expected)


# ------------------------------------------------------------------ random, stage=prellm
def test_random_prellm_is_seeded_per_sample(tiny, prompts):
    """B uniformly random tokens, sorted; the set is a function of the per-sample seed (engine: seed * 1000)."""
    model, _ = tiny
    inputs = prompts[0]
    method = load_method("random", 64, stage="prellm")
    assert method.pre_llm and not load_method("random", 64).pre_llm
    kept = {}
    for seed in (5, 6):
        engine, _, _, embeds = run_engine(model, method, inputs, seed=seed)
        kept[seed] = engine.state.kept[0]
        expected = torch.sort(torch.randperm(V, generator=torch.Generator().manual_seed(seed * 1000))[:64]).values
        assert kept[seed] == expected.tolist()  # same seed -> same set
        assert engine.state.vision_per_layer == [64] * 32
        assert embeds.shape[0] == inputs["input_ids"].shape[1] - V + 64
    assert kept[5] != kept[6]  # another sample -> another set
    features = image_features(model, inputs)
    start, _ = image_span(inputs, model)
    assert torch.equal(embeds[start:start + 64], features[kept[6]])


def test_engine_rejects_a_prellm_method_that_misses_its_budget(tiny, prompts):
    class ShortPool(Pool):
        def reduce(self, ctx):
            sel = super().reduce(ctx)
            sel.merged = sel.merged[1:]
            return sel

    model, _ = tiny
    with pytest.raises(RuntimeError, match=r"pool returned 0 kept \+ 63 merged image tokens, expected budget=64"):
        run_engine(model, ShortPool(64), prompts[0])


@pytest.mark.parametrize("name", ["pool", "visionzip"])
def test_prellm_scoring_time_excludes_the_vision_tower(tiny, prompts, name, monkeypatch):
    """scoring_s of a pre-LLM method is its selection / merge only: a tower pass made 0.3 s slower
    must not show up in it (it did before: ~20% "scoring" on the 7B was the tower)."""
    import time

    model, _ = tiny
    slow_tower = model.model.get_image_features

    def slower(*args, **kwargs):
        time.sleep(0.3)
        return slow_tower(*args, **kwargs)

    monkeypatch.setattr(model.model, "get_image_features", slower)
    engine = PruningEngine(model, load_method(name, 64), time_scoring=True)
    with torch.no_grad(), engine:
        engine.generate(prompts[0], max_new_tokens=1, do_sample=False)
    assert 0.0 < engine.state.scoring_s < 0.15
