"""VisionZip on LLaVA-NeXT: every crop reduced on its own, as VisionZip's official LLaVA-NeXT code (tiny random models, fp32).

The reference here is written from the official code's description (dvlab-research/VisionZip,
`visionzip/clip_encoder.py` and `visionzip/llava_arch.py`), slowly and apart from the engine: the vision tower in
eager attention with `output_attentions`, the keys from a hook on the feature layer's key projection, per crop the
top-k patches by CLS attention (summed over heads, as the official code) and the key-similarity contextual groups
in Python loops, then the tiles' dominant patches written into the stitched tile grid and read back row by row.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import MODEL_CONF, QUESTION, greedy_without_cache, run_fixtures
from omegaconf import OmegaConf
from PIL import Image
from transformers import LlavaNextForConditionalGeneration
from transformers.models.llava_next.modeling_llava_next import (
    get_anyres_image_grid_shape,
)

from harness.engine import PruningEngine
from harness.families.llava_next import LLAVA_NEXT, tiny
from harness.methods import load_method
from harness.model import TINY_WORDS, load_model

PROMPT = OmegaConf.load(MODEL_CONF / "tiny_llava_next.yaml").prompt
SPLIT = {16: (14, 2), 48: (41, 7), 128: (108, 20), 64: (54, 10), 32: (27, 5)}  # per-crop budget -> floor(27/32 b + 1/2), rest


def image_inputs(processor, size: tuple[int, int], seed: int = 0) -> dict:
    image = Image.fromarray((np.random.RandomState(seed).rand(*size, 3) * 255).astype("uint8"))
    inputs = dict(processor(images=image, text=PROMPT.format(question=QUESTION), return_tensors="pt"))
    inputs.pop("attention_mask", None)
    return inputs


def reference_block(model, inputs: dict, n_dominant: int, n_contextual: int) -> tuple[torch.Tensor, list[int]]:
    """The reduced image block and its kept patches (`crop * P + patch`), computed slowly from the official definition."""
    config, vision = model.config, model.config.vision_config
    side = vision.image_size // vision.patch_size
    rows, cols = get_anyres_image_grid_shape(inputs["image_sizes"][0], config.image_grid_pinpoints, vision.image_size)
    pixels = inputs["pixel_values"][0]  # [C, 3, H, W]: base view, then the tiles
    assert pixels.shape[0] == 1 + rows * cols
    tower = model.model.vision_tower
    feature_layer = tower.vision_model.encoder.layers[-2] if hasattr(tower, "vision_model") else tower.encoder.layers[-2]
    keys = []
    hook = feature_layer.self_attn.k_proj.register_forward_hook(lambda m, a, out: keys.append(out))
    model.set_attn_implementation({"vision_config": "eager"})
    try:
        with torch.no_grad():
            out = tower(pixels, output_attentions=True, output_hidden_states=True)
    finally:
        hook.remove()
        model.set_attn_implementation({"vision_config": "sdpa"})
    heads = vision.num_attention_heads
    metric = keys[0].view(*keys[0].shape[:2], heads, -1).mean(2)[:, 1:]  # [C, P, dh]: keys averaged over heads
    cls_attention = out.attentions[-2][:, :, 0, 1:].sum(1)  # [C, P]
    with torch.no_grad():
        features = model.model.multi_modal_projector(out.hidden_states[-2][:, 1:])  # [C, P, d]
    patches = features.shape[1]
    dominant, contextual = [], []
    for crop in range(features.shape[0]):
        top = sorted(cls_attention[crop].topk(n_dominant).indices.tolist())
        rest = [p for p in range(patches) if p not in top]
        unit = [metric[crop, p] / metric[crop, p].norm() for p in rest]
        step = max(1, len(rest) // n_contextual)
        targets = list(range(0, len(rest), step))[:n_contextual]
        groups = {t: [t] for t in targets}
        for i in range(len(rest)):
            if i not in groups:
                similarity = [float(unit[i] @ unit[t]) for t in targets]
                groups[targets[similarity.index(max(similarity))]].append(i)
        dominant.append(top)
        contextual.append(torch.stack([features[crop, [rest[i] for i in groups[t]]].mean(0) for t in targets]))
    grid = torch.zeros(rows * side, cols * side, features.shape[-1])
    index = torch.full((rows * side, cols * side), -1)
    for tile in range(rows * cols):
        r, c = divmod(tile, cols)
        for p in dominant[tile + 1]:
            i, j = divmod(p, side)
            grid[r * side + i, c * side + j] = features[tile + 1, p]
            index[r * side + i, c * side + j] = (tile + 1) * patches + p
    selected = index >= 0
    block = torch.cat([features[0, dominant[0]], contextual[0], grid[selected], *contextual[1:]])
    return block, dominant[0] + index[selected].tolist()


@pytest.fixture(scope="module")
def tiny_next():
    return load_model("llava_next", config="tiny", num_layers=4, dtype="float32", device="cpu", seed=0)


@pytest.mark.parametrize(("size", "crops"), [((150, 400), 3), ((336, 336), 5), ((400, 150), 3)])  # 1x2, 2x2, 2x1
@pytest.mark.parametrize("budget", [64, 192])
def test_each_crop_is_reduced_as_the_official_code_and_the_block_decodes(tiny_next, budget, size, crops):
    model, processor = tiny_next
    inputs = image_inputs(processor, size)
    ids = inputs["input_ids"][0]
    where = (ids == model.config.image_token_index).nonzero().flatten()
    start, end = int(where[0]), int(where[-1]) + 1
    per_crop = round(budget * 144 / 576)  # the fraction budget/576 of each crop's 144 patches
    n_dominant, n_contextual = SPLIT[per_crop]
    block, kept = reference_block(model, inputs, n_dominant, n_contextual)
    seen = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["inputs_embeds"][0].clone()) if not seen else None, with_kwargs=True)
    try:
        engine = PruningEngine(model, load_method("visionzip", budget), record_kept=True)
        with torch.no_grad(), engine:
            new_tokens, _ = engine.generate(inputs, max_new_tokens=4, do_sample=False)
    finally:
        hook.remove()
    assert inputs["pixel_values"].shape[1] == crops
    st = engine.state
    assert st.image_tokens == end - start  # the packed block HF would build: the fraction's denominator
    assert st.vision_per_layer == [crops * per_crop] * engine.num_layers
    assert st.n_merged == crops * n_contextual and st.kept_image.tolist() == kept
    embeds = model.get_input_embeddings()(inputs["input_ids"])[0]
    expected = torch.cat([embeds[:start], block, embeds[end:]])  # [N - V + crops * per_crop, d]
    torch.testing.assert_close(seen[0], expected, rtol=1e-5, atol=1e-5)
    assert new_tokens.tolist() == greedy_without_cache(model, expected[None], 4)


@pytest.mark.parametrize(("size", "crops"), [((672, 672), 5), ((336, 672), 3)])
def test_llava_v1_6_crops_realize_the_fields_budgets(size, crops):
    """With LLaVA-v1.6's crop geometry (336 px, 576 patches per crop): budget=128/64/32 keep 128/64/32 tokens per
    crop, 108+20 / 54+10 / 27+5, so a 2x2 grid (5 crops) gives the field's 640/320/160, a 1x2 grid 3 x B."""
    config, processor = tiny(list(TINY_WORDS), num_layers=2, image_size=336)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = LlavaNextForConditionalGeneration._from_config(config, dtype=torch.float32).eval()
    inputs = image_inputs(processor, size)
    assert inputs["pixel_values"].shape[1] == crops
    for budget in (128, 64, 32):
        engine = PruningEngine(model, load_method("visionzip", budget))
        with torch.no_grad(), engine:
            engine.generate(inputs, max_new_tokens=1, do_sample=False)
        n_dominant, n_contextual = SPLIT[budget]
        assert engine.state.vision_per_layer == [crops * budget] * 2
        assert engine.state.kept_image.numel() == crops * n_dominant and engine.state.n_merged == crops * n_contextual
        if crops == 5:
            assert engine.state.image_tokens == 576 + 4 * 576 + 48  # unpadded tiles + row separators, not kept
            assert LLAVA_NEXT.budget_label(budget, None) == str(crops * budget)


def test_a_budget_that_keeps_nothing_of_a_crop_is_one_clear_error(tiny_next):
    model, processor = tiny_next
    engine = PruningEngine(model, load_method("visionzip", 2))  # round(2 * 144 / 576) = 0 tokens per crop
    with pytest.raises(ValueError, match=r"^visionzip: budget=2 keeps none of the 144 patches of each crop "
                                         r"\(allowed: 3\.\.576\)$"):
        with torch.no_grad(), engine:
            engine.generate(image_inputs(processor, (200, 300)), max_new_tokens=1, do_sample=False)


@pytest.mark.slow
def test_run_py_runs_visionzip_on_tiny_llava_next(tmp_path):
    results, samples = run_fixtures("tiny_llava_next", "visionzip", 2, tmp_path)
    for s in samples:  # every layer sees 16 tokens (64/576 of 144 patches) per crop: 3 crops (1x2 grid) or 5 (2x2)
        assert s["vision_per_layer"][0] in (3 * 16, 5 * 16) and set(s["vision_per_layer"]) == {s["vision_per_layer"][0]}
    assert results["tokens"]["budget_label"] == "320"
