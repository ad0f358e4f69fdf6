"""CDPruner against a slow reference that follows the official `encode_images` (Theia-4869/CDPruner, llava_arch.py):
batched kernel, the fast greedy MAP loop with `cis[:i]` einsums, the picks scattered into a boolean mask; the kept
set on the embedded model once the DPP's gains vanish; plus the text-encoder loading errors."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPConfig, CLIPModel

from harness.engine import PruningEngine
from harness.methods import load_method
from harness.methods.cdpruner import CDPruner, greedy_map
from harness.text_encoder import load_text_tower

V = 576


def official_select(image_features, image_embeds, text_embeds, visual_token_num: int) -> list[int]:
    """The official code with B = 1, in fp32 (its kernel precision): image_features `[1, N, D]` (projected), image_embeds `[1, N, C]`
    (post_layernorm + visual_projection), text_embeds `[M, C]`."""
    B, N, _ = image_features.shape
    image_normalized = (image_features / image_features.norm(dim=-1, keepdim=True)).float()
    similarity = torch.matmul(image_normalized, image_normalized.transpose(1, 2))
    image_embeds = (image_embeds / image_embeds.norm(dim=-1, keepdim=True)).float()
    text_embeds = (text_embeds / text_embeds.norm(dim=-1, keepdim=True)).float()
    relevance = torch.matmul(image_embeds, text_embeds.t())
    relevance = (-relevance).mean(dim=-1)
    relevance = (relevance - relevance.min() + 1e-6) / (relevance.max() - relevance.min())
    kernel = relevance.unsqueeze(2) * similarity * relevance.unsqueeze(1)
    cis = torch.zeros((visual_token_num, B, N), dtype=torch.float32)
    di2s = torch.diagonal(kernel, dim1=1, dim2=2).clone()
    select_idx = torch.empty((visual_token_num, B), dtype=torch.long)
    for i in range(visual_token_num):
        j = torch.argmax(di2s, dim=-1)
        select_idx[i] = j
        eis = (kernel[torch.arange(B), j] - torch.einsum("tb,tbn->bn", cis[:i, torch.arange(B), j], cis[:i])) \
            / torch.sqrt(di2s[torch.arange(B), j]).unsqueeze(-1)
        cis[i, :, :] = eis
        di2s -= torch.square(eis)
        di2s[torch.arange(B), j] = -float("inf")
    select_idx = torch.sort(select_idx.t()).values
    index_masks = torch.zeros(B, N, dtype=torch.bool)
    index_masks.scatter_(1, select_idx, True)  # what the LLM gets: image_features[index_masks]
    return index_masks[0].nonzero().flatten().tolist()


def vision_parts(model, inputs):
    config = model.config
    with torch.no_grad():
        out = model.model.get_image_features(
            pixel_values=inputs["pixel_values"], vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy=config.vision_feature_select_strategy)
    return out.pooler_output[0][None], out.hidden_states[config.vision_feature_layer][:, 1:]  # [1, V, d], [1, V, dv]


@pytest.mark.parametrize("budget,index", [(64, 0), (128, 2)])
def test_selection_matches_the_official_code(tiny, prompts, budget, index):
    from helpers import QUESTIONS

    model, _ = tiny
    inputs = prompts[index]
    features, hidden = vision_parts(model, inputs)
    method = load_method("cdpruner", budget)  # text_encoder: tiny (no model config here)
    engine = PruningEngine(model, method, record_kept=True)
    with torch.no_grad(), engine:
        engine.generate(inputs, instruction=QUESTIONS[index], max_new_tokens=1, do_sample=False)
    tower = method.tower
    question = QUESTIONS[index].replace("\nAnswer the question using a single word or phrase.", "")
    with torch.no_grad():
        image_embeds = tower.visual_projection(tower.post_layernorm(hidden.float()))
        text_embeds = tower.encode_text(question)
    kept = official_select(features, image_embeds, text_embeds, budget)
    assert engine.state.kept[0] == kept
    assert engine.state.vision_per_layer == [len(kept)] * 32 and engine.state.kept_fewer == budget - len(kept)


def test_the_instruction_changes_the_selection_and_its_suffix_does_not(tiny, prompts):
    model, _ = tiny
    kept = {}
    for text in ("what colour is the star ?", "how many objects are there ?",
                 "what colour is the star ?\nAnswer the question using a single word or phrase."):
        engine = PruningEngine(model, load_method("cdpruner", 64), record_kept=True)
        with torch.no_grad(), engine:
            engine.generate(prompts[1], instruction=text, max_new_tokens=1, do_sample=False)
        kept[text] = engine.state.kept[0]
    a, b, c = kept.values()
    assert a != b and a == c


def test_greedy_map_maximises_the_determinant_step_by_step():
    """Each greedy pick is the token whose addition gives the largest log-det of the kernel's submatrix."""
    x = torch.randn(12, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float32)
    kernel = x @ x.T + 1e-3 * torch.eye(12, dtype=torch.float32)
    picks = greedy_map(kernel, 5).tolist()
    chosen: list[int] = []
    for pick in picks:
        gains = {j: torch.logdet(kernel[chosen + [j]][:, chosen + [j]]).item() for j in range(12) if j not in chosen}
        assert pick == max(gains, key=gains.get)
        chosen.append(pick)


def test_missing_text_encoder_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"method.text_encoder=None: a CLIP text encoder paired with the vision "
                                         r"tower is needed \(allowed: a hub id or local directory"):
        CDPruner(64, text_encoder=None).schedule(32, V)
    with pytest.raises(ValueError, match=r"method.text_encoder='.*nowhere' could not be loaded"):
        CDPruner(64, text_encoder=str(tmp_path / "nowhere")).schedule(32, V)
    CDPruner(V, text_encoder=None).schedule(32, V)  # nothing is pruned: no encoder needed


def test_loads_a_local_clip_checkpoint_and_checks_the_tower_width(tiny, tmp_path):
    """A tiny random CLIPModel saved with save_pretrained (+ a tokenizer) loads through from_pretrained."""
    _, processor = tiny
    config = CLIPConfig(
        text_config={"vocab_size": len(processor.tokenizer), "hidden_size": 16, "intermediate_size": 32,
                     "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 77,
                     "projection_dim": 8},
        vision_config={"hidden_size": 24, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 28, "patch_size": 14, "projection_dim": 8},
        projection_dim=8)
    CLIPModel(config).save_pretrained(tmp_path / "clip")
    processor.tokenizer.save_pretrained(tmp_path / "clip")
    tower = load_text_tower(str(tmp_path / "clip"), 24)
    assert tower.encode_text("what colour is the star ?").shape == (1, 8)
    assert tower.embed_patches(torch.randn(V, 24)).shape == (V, 8)
    with pytest.raises(ValueError, match=r"belongs to a vision tower of width 24, not this model's 32"):
        load_text_tower(str(tmp_path / "clip"), 32)


@pytest.fixture(scope="module")
def shapes_model():
    from harness.model import load_llava

    return load_llava(pretrained="tiny-llava-shapes", dtype="float32", device="cpu")


def shapes_gqa_inputs(processor, n: int = 2):
    from harness.generation import model_inputs
    from harness.shapes import data

    rows = data.make_split("gqa", None, data.EVAL_SEEDS["gqa"], n)
    return [(model_inputs(processor, [f"USER: <image>\n{data.prompt('gqa', r['question'])} ASSISTANT:"], [r["image"]],
                          torch.device("cpu"), torch.float32), data.prompt("gqa", r["question"])) for r in rows]


@pytest.mark.parametrize("budget", [192, 128])
def test_the_default_model_gets_each_kept_token_once_and_the_shortfall_is_recorded(shapes_model, budget):
    """The embedded model's projected features are 64-dim, so the DPP kernel has rank <= 64 and its greedy gains
    vanish long before 128 picks; the official loop then repeats picks, and its mask keeps each once: the LLM gets
    the distinct picks (about 70), the record counts them, and the shortfall is recorded (never 128 with tokens 0
    and 1 fed ~30 times each)."""
    model, processor = shapes_model
    method = load_method("cdpruner", budget, text_encoder="tiny")  # the kernel's rank, not the text tower, is at issue
    for inputs, question in shapes_gqa_inputs(processor):
        engine = PruningEngine(model, method, record_kept=True)
        with torch.no_grad(), engine:
            engine.generate(inputs, instruction=question, max_new_tokens=1, do_sample=False)
        st = engine.state
        kept = st.kept[0]
        assert len(kept) == len(set(kept)), "a kept set never repeats a token"
        assert 64 <= len(kept) < budget
        assert st.vision_per_layer == [len(kept)] * 32 and st.kept_fewer == budget - len(kept)
        assert len(kept) == len(set(greedy_map_picks(method, inputs, question, model)))


def greedy_map_picks(method, inputs, question, model) -> list[int]:
    """The raw greedy picks of the official loop on this sample (repeats included)."""
    from harness.methods.cdpruner import ANSWER_SUFFIX, conditional_kernel

    features, hidden = vision_parts(model, inputs)
    tower = method.tower
    kernel = conditional_kernel(features[0], tower.embed_patches(hidden[0]),
                                tower.encode_text(question.replace(ANSWER_SUFFIX, "")))
    return greedy_map(kernel, method.budget).tolist()
