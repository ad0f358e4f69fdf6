"""The pre-LLM path: a method reduces the image features before the language model sees them.

The engine runs the vision tower (capturing the CLS attention and keys at the feature layer when the
method reads them), hands the method a `PreLLMContext`, splices the kept + merged features into the
prompt's embeddings in place of the image block, and generates from `inputs_embeds`. Every layer then
sees the reduced block (`vision_per_layer` is the budget at every layer).
"""

from __future__ import annotations

import torch

from harness.methods.base import PreLLMContext


def prellm_generate(engine, inputs: dict, instruction: str | None, **kwargs) -> tuple[torch.Tensor, dict]:
    """Generate with the image block reduced by `engine.method.reduce` (see `PruningEngine.generate`).

    Returns (new token ids `[n_new]`, generate's output dict); `engine.state` holds the sample's record.
    """
    input_ids = inputs["input_ids"]
    t0 = engine._clock()
    st = engine._new_state(input_ids[0], engine.sample_seed)
    start, end = st.image_span
    embeds = engine.model.get_input_embeddings()(input_ids)  # [1, N, d]
    kept_image = torch.arange(0, device=input_ids.device)
    n_merged = 0
    if end > start and engine.decision.budget == 0:  # no image token survives (blind): skip the vision tower
        embeds = torch.cat([embeds[:, :start], embeds[:, end:]], dim=1)
    elif end > start:
        engine.vision_capture, engine.capture_s = None, 0.0
        config = engine.model.config
        t_tower = engine._clock()
        vision = engine.model.model.get_image_features(
            pixel_values=inputs["pixel_values"], vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
        )
        features = vision.pooler_output[0]  # [V, d]
        t0 += engine._clock() - t_tower - engine.capture_s  # the tower and projector are not scoring
        cls_attn, keys = engine.vision_capture or (None, None)
        vision_hidden = None
        if getattr(engine.method, "needs_vision_hidden", False):  # the feature layer's patches, before the projector
            vision_hidden = vision.hidden_states[config.vision_feature_layer][0]  # [V(+1), dv]
            vision_hidden = vision_hidden[1:] if config.vision_feature_select_strategy == "default" else vision_hidden
        generator = torch.Generator().manual_seed(engine.sample_seed * 1000)
        ctx = PreLLMContext(features, cls_attn, keys, generator, engine.decision.budget, vision_hidden, instruction)
        sel = engine.method.reduce(ctx)
        kept_image = sel.keep.to(input_ids.device)
        parts = [features[kept_image]]
        if sel.merged is not None and sel.merged.shape[0]:
            n_merged = sel.merged.shape[0]
            parts.append(sel.merged.to(features.dtype))
        image = torch.cat(parts).to(embeds.dtype)  # [B, d]
        if image.shape[0] != engine.decision.budget:
            raise RuntimeError(
                f"{engine.method.name} returned {kept_image.numel()} kept + {n_merged} merged image tokens, "
                f"expected budget={engine.decision.budget}"
            )
        embeds = torch.cat([embeds[:, :start], image[None], embeds[:, end:]], dim=1)
    n_image = kept_image.numel() + n_merged
    st.image_span = (start, start + n_image)
    st.kept_image, st.n_merged, st.pruned = kept_image, n_merged, end > start
    st.vision_per_layer = [n_image] * engine.num_layers
    st.tokens_per_layer = [embeds.shape[1]] * engine.num_layers
    if engine.record_kept:
        st.kept[0] = kept_image.tolist()
    st.scoring_s += engine._clock() - t0
    engine.state = st
    out = engine.model.generate(inputs_embeds=embeds, **kwargs, return_dict_in_generate=True)
    return out.sequences[0], out  # with inputs_embeds alone, generate returns only the new tokens

