"""Pre-LLM methods on LLaVA-NeXT and Qwen2.5-VL (tiny random models, fp32).

Which ones run on each family and the one line for the others; on LLaVA-NeXT the reduced packed block is
spliced into a contiguously numbered prompt; on Qwen2.5-VL every kept token keeps its 3-D M-RoPE position,
so the reduced prompt equals the full one with the dropped tokens masked out of every layer; run.py at batch 2.
"""

from __future__ import annotations

import pytest
import torch
from helpers import (
    MODEL_CONF,
    PRE_LLM,
    SIZES,
    family_inputs,
    greedy_without_cache,
    image_count,
    method_for,
    official_divprune,
    run_fixtures,
)
from omegaconf import OmegaConf
from reference import hidden_by_layer, masked_reference

from harness.engine import PruningEngine
from harness.families import REFERENCE_TOKENS
from harness.model import load_model

FEATURES_ONLY = {"divprune": {}, "random": {"stage": "prellm"}, "blind": {}}  # need only the image block
CROPS_ON_NEXT = {"visionzip"}  # each crop reduced on its own, as its official LLaVA-NeXT code (test_visionzip_next.py)
NEEDS = {"cdpruner": "vision patch states aligned with the image block",
         "pool": "the image block as one square patch grid"}
GIVES = {"llava_next": "crops, features", "qwen2_5_vl": "features"}


@pytest.mark.parametrize("name", PRE_LLM)
def test_pre_llm_methods_that_cannot_run_fail_with_one_clear_line(family, name):
    fam, model, _, cfg = family
    if name in FEATURES_ONLY or (fam == "llava_next" and name in CROPS_ON_NEXT):
        assert PruningEngine(model, method_for(name, 64, cfg)).pre_llm
        return
    if name in NEEDS:
        message = (f"{name} needs {NEEDS[name]}, which model family {fam} does not give pre-LLM "
                   f"methods (it gives: {GIVES[fam]})")
    else:  # VisionZip on a tower without CLS
        message = f"{name} reads the vision CLS token's attention; the {fam} vision tower has no CLS token"
    with pytest.raises(ValueError, match=f"^{message}$".replace("(", r"\(").replace(")", r"\)")):
        PruningEngine(model, method_for(name, 64, cfg))


@pytest.mark.parametrize("size", [(200, 300), (336, 336)])  # 1x2 and 2x2 tiles: different block lengths
@pytest.mark.parametrize("name", list(FEATURES_ONLY))
def test_pre_llm_on_llava_next_keeps_the_fraction_splices_the_block_and_decodes(name, size):
    cfg = OmegaConf.load(MODEL_CONF / "tiny_llava_next.yaml")
    model, processor = load_model("llava_next", config="tiny", num_layers=4, dtype="float32", device="cpu", seed=0)
    inputs = family_inputs(processor, cfg, size)
    ids = inputs["input_ids"][0]
    where = (ids == model.config.image_token_index).nonzero().flatten()
    start, end = int(where[0]), int(where[-1]) + 1
    seen = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["inputs_embeds"][0].clone()) if not seen else None, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs)  # vanilla: the block HF fills (base view, unpadded tiles, row separators)
        block = seen.pop()[start:end]  # [V, d]
        engine = PruningEngine(model, method_for(name, 64, cfg, **FEATURES_ONLY[name]), record_kept=True)
        engine.sample_seed = 3
        with torch.no_grad(), engine:
            new_tokens, _ = engine.generate(inputs, max_new_tokens=4, do_sample=False)
        spliced = seen.pop()  # [N', d]
    finally:
        hook.remove()
    n_image = end - start
    budget = 0 if name == "blind" else round(64 * n_image / REFERENCE_TOKENS)  # the same fraction 64/576
    st = engine.state
    assert st.image_tokens == n_image and st.vision_per_layer == [budget] * 4
    kept = st.kept_image.tolist()
    if name == "divprune":
        assert kept == sorted(official_divprune(block, budget))
    elif name == "random":
        assert kept == sorted(torch.randperm(n_image, generator=torch.Generator().manual_seed(3000))[:budget].tolist())
    else:
        assert kept == []
    embeds = model.get_input_embeddings()(inputs["input_ids"])[0]
    expected = torch.cat([embeds[:start], block[kept], embeds[end:]])  # [N - V + B, d]
    torch.testing.assert_close(spliced, expected)
    assert new_tokens.tolist() == greedy_without_cache(model, expected[None], 4)


def filled_block(model, inputs: dict, start: int, end: int) -> torch.Tensor:
    """The image block `[V, d]` HF itself fills into the prompt's embeddings (a vanilla forward)."""
    seen = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["inputs_embeds"][0, start:end].clone()), with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        hook.remove()
    return seen[0]


@pytest.mark.parametrize("name", list(FEATURES_ONLY))
def test_pre_llm_on_qwen_keeps_each_kept_token_at_its_3d_position(name):
    """Qwen2.5-VL, two image sizes (64 and 120 tokens): the kept set at the fraction 192/576 (DivPrune's official
    selection on HF's merged block, random's seeded draw, none for blind) is the whole reduction: the reduced
    prompt gives the tokens and logits of the full prompt with the dropped image tokens masked out of every layer
    (the shared masked-eager reference, HF's own M-RoPE positions, decode included). Budget 576 is vanilla bit
    for bit (the same embeddings at the same positions)."""
    cfg = OmegaConf.load(MODEL_CONF / "tiny_qwen2_5_vl.yaml")
    model, processor = load_model("qwen2_5_vl", config="tiny", num_layers=4, dtype="float32", device="cpu", seed=0)
    kwargs = dict(max_new_tokens=4, do_sample=False, output_logits=True)
    for seed, size in enumerate(SIZES["qwen2_5_vl"]):
        inputs = family_inputs(processor, cfg, size, seed)
        n, v = inputs["input_ids"].shape[1], image_count(model, inputs)
        start = int((inputs["input_ids"][0] == model.config.image_token_id).nonzero()[0])
        budget = 0 if name == "blind" else round(192 * v / REFERENCE_TOKENS)
        engine = PruningEngine(model, method_for(name, 192, cfg, **FEATURES_ONLY[name]), record_kept=True)
        engine.sample_seed = 3
        with torch.no_grad(), engine:
            new_tokens, out = engine.generate(inputs, **kwargs)
        st = engine.state
        assert st.image_tokens == v and st.vision_per_layer == [budget] * 4
        kept = st.kept_image.tolist()
        if name == "divprune":
            assert kept == sorted(official_divprune(filled_block(model, inputs, start, start + v), budget))
        elif name == "random":
            assert kept == sorted(torch.randperm(v, generator=torch.Generator().manual_seed(3000))[:budget].tolist())
        else:
            assert kept == []
        ref = masked_reference(model, inputs, hidden_by_layer({0: kept}, (start, start + v), n, 4), max_new_tokens=4)
        assert torch.equal(new_tokens, ref.sequences[0, n:])
        for step, ref_step in zip(out.logits, ref.logits):
            assert (step - ref_step).abs().max().item() < 1e-5
        if name == "blind":
            continue
        with torch.no_grad():
            vanilla = model.generate(**inputs, **kwargs, return_dict_in_generate=True)
            engine = PruningEngine(model, method_for(name, REFERENCE_TOKENS, cfg, **FEATURES_ONLY[name]))
            with engine:
                new_tokens, out = engine.generate(inputs, **kwargs)
        assert torch.equal(new_tokens, vanilla.sequences[0, n:])
        assert all(torch.equal(a, b) for a, b in zip(out.logits, vanilla.logits))


@pytest.mark.slow
@pytest.mark.parametrize("model,label,layers", [("tiny_llava_next", "320", 32), ("tiny_qwen2_5_vl", "11.1%", 28)])
def test_run_py_runs_a_pre_llm_method_on_each_family(tmp_path, model, label, layers):
    results, samples = run_fixtures(model, "divprune", 2, tmp_path, "batch_size=2", "warmup=0", "latency_samples=1")
    for s in samples:  # every layer sees this sample's round(64 * V / 576) image tokens
        assert s["vision_per_layer"] == [round(64 * s["image_tokens"] / 576)] * layers
    assert any("batch" in s for s in samples)  # batch 1 for the latency sample, then batches of 2
    assert results["tokens"]["budget_label"] == label
