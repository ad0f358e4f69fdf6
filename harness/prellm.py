"""The pre-LLM path: a method reduces the image features before the language model sees them.

For one sample, the engine runs the vision tower through the model's family (`ModelFamily.image_features`:
LLaVA-1.5's 576 patches, LLaVA-NeXT's packed anyres block; capturing the CLS attention and keys at the
feature layer when the method reads them), hands the method a `PreLLMContext` with this sample's budget
(LLaVA-1.5: `budget`; a family whose image-token count varies: the same fraction budget/576 of this
sample's block, as in-LLM methods), splices the kept + merged features into the prompt's embeddings in
place of the image block, and generates from `inputs_embeds`. A method whose official port reduces each
tower crop on its own (VisionZip on LLaVA-NeXT) gets one `PreLLMContext` per crop instead, at the fraction
budget/576 of that crop's patches, and the family lays the crops out (`reduce_crops`). Every layer then sees the reduced block
(`vision_per_layer` is the sample's budget at every layer, or the fewer distinct tokens a method that declares
`may_keep_fewer` kept; never a token twice: `harness.selection.check_kept`). Positions come from the family
(`ModelFamily.prellm_positions`): with 1-D RoPE (LLaVA-1.5, LLaVA-NeXT) the reduced prompt is numbered
0..N'-1 and decode continues from N', as the official pre-LLM code does; under Qwen2.5-VL's 3-D M-RoPE every
kept token keeps its original (temporal, height, width) position and decode continues where the full prompt's
would, as its in-LLM methods do (a renumbering of 3-D positions is not defined).
"""

from __future__ import annotations

import torch

from harness import layout
from harness.families import REFERENCE_TOKENS, reduces_crops, scaled_budget
from harness.methods.base import PreLLMContext, Selection
from harness.selection import check_kept, check_prellm_count
from harness.state import PrefillState


def prellm_generate(engine, inputs: dict, instruction: str | None, **kwargs) -> tuple[torch.Tensor, dict]:
    """Generate with the image block reduced by `engine.method.reduce` (see `PruningEngine.generate`).

    Returns (new token ids `[n_new]`, generate's output dict); `engine.state` holds the sample's record.
    """
    embeds, positions, engine.state = reduce_sample(engine, inputs, instruction, engine.sample_seed)
    if positions is not None:
        kwargs["position_ids"] = positions
    out = engine.model.generate(inputs_embeds=embeds, **kwargs, return_dict_in_generate=True)
    return out.sequences[0], out  # with inputs_embeds alone, generate returns only the new tokens


def prellm_generate_batch(engine, inputs: dict, seeds: list[int], instructions: list[str | None],
                          **kwargs) -> tuple[torch.Tensor, dict]:
    """A left-padded batch: each sample reduced alone, the reduced prompts left-padded again and generated together.

    Returns (new token ids `[B, T]`, generate's output dict); `engine.states[b]` holds row b's record.
    """
    ids = inputs["input_ids"]
    pads = layout.left_pads(inputs.get("attention_mask"), ids.shape[0], ids.shape[1])
    rows, row_positions, states = [], [], []
    for b, pad in enumerate(pads):
        row = engine.family.row_inputs(engine.model, inputs, b, pad)
        embeds, positions, st = reduce_sample(engine, row, instructions[b], seeds[b])
        rows.append(embeds)
        row_positions.append(positions)
        states.append(st)
    embeds, new_pads = layout.left_pad(rows)  # [B, N', d]
    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    for b, pad in enumerate(new_pads):
        mask[b, :pad] = 0
    if any(p is not None for p in row_positions):  # each row's own ids, left-padded with 0 as HF pads them
        like = next(p for p in row_positions if p is not None)  # [R, 1, N'_b]
        ids = [default_positions(e.shape[1], like) if p is None else p for e, p in zip(rows, row_positions)]
        padded, _ = layout.left_pad([p.permute(1, 2, 0) for p in ids])  # [B, N', R]
        kwargs["position_ids"] = padded.permute(2, 0, 1).contiguous()  # [R, B, N']
    engine.states = states
    out = engine.model.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs, return_dict_in_generate=True)
    return out.sequences, out


def default_positions(n: int, like: torch.Tensor) -> torch.Tensor:
    """The ids HF gives an n-token text-only prompt, in the layout of `like` `[R, 1, N]`: 0..n-1 on every row."""
    return torch.arange(n, device=like.device).expand(like.shape[0], 1, n)


def reduce_crops(engine, inputs: dict, instruction: str | None,
                 seed: int) -> tuple[torch.Tensor, torch.Tensor, int, float, int]:
    """One sample's image reduced crop by crop (`ModelFamily.reduce_crops`; VisionZip on LLaVA-NeXT).

    Every crop gets the method at that crop's budget, the same fraction budget/576 of its P patches (the budget
    itself on LLaVA-v1.6's 576-patch crops: 128 -> 5 x 128 = 640 for a 2x2 grid), its own CLS attention and keys.

    Returns:
        (image block `[n, d]`, kept patches `[k]` as `crop * P + patch`, merged count, seconds of tower + projector,
        image tokens asked for and not kept).
    """
    method = engine.method
    engine.vision_capture, engine.capture_s = None, 0.0
    reduce_s = 0.0
    shortfall = [0]  # image tokens asked for and not kept, over the crops

    def reduce_crop(crop: int, features: torch.Tensor) -> Selection:  # features: [P, d]
        nonlocal reduce_s
        t = engine._clock()
        patches = features.shape[0]
        if scaled_budget(method.budget, patches) == 0:
            least = next(b for b in range(1, REFERENCE_TOKENS + 1) if scaled_budget(b, patches) > 0)
            raise ValueError(f"{method.name}: budget={method.budget} keeps none of the {patches} patches of each "
                             f"crop (allowed: {least}..{REFERENCE_TOKENS})")
        crop_method = engine._schedule_for(patches)[0]  # budget/576 of this crop's patches
        budget = crop_method.schedule(engine.num_layers, patches).budget
        cls_attn, keys = engine.vision_capture  # [C, Hv, P+1], [C, Hv, P+1, dh]: every crop's own pass
        generator = torch.Generator().manual_seed(seed * 1000 + crop)
        sel = crop_method.reduce(PreLLMContext(features, cls_attn[crop], keys[crop], generator, budget,
                                               None, instruction))
        n_merged = 0 if sel.merged is None else sel.merged.shape[0]
        check_kept(method.name, sel.keep, patches, f" for crop {crop}")
        shortfall[0] += check_prellm_count(crop_method, sel.keep.numel(), n_merged, budget, f" for crop {crop}")
        reduce_s += engine._clock() - t
        return sel

    t_tower = engine._clock()
    image, kept, n_merged = engine.family.reduce_crops(engine.model, inputs, reduce_crop)
    return image, kept, n_merged, engine._clock() - t_tower - reduce_s - engine.capture_s, shortfall[0]


def reduce_sample(engine, inputs: dict, instruction: str | None,
                  seed: int) -> tuple[torch.Tensor, torch.Tensor | None, PrefillState]:
    """One sample (batch 1): its prompt embeddings with the image block reduced, `[1, N', d]`, their position ids
    for `generate` (None: HF's 0..N'-1; `ModelFamily.prellm_positions`) and its state (image span, kept indices
    into the sample's image block, tokens per layer)."""
    input_ids = inputs["input_ids"]
    t0 = engine._clock()
    st = engine._new_state(input_ids[0], seed)
    start, end = st.image_span
    budget = st.method.schedule(engine.num_layers, end - start).budget if end > start else 0
    embeds = engine.model.get_input_embeddings()(input_ids)  # [1, N, d]
    kept_image = torch.arange(0, device=input_ids.device)
    n_merged = shortfall = 0
    if end > start and budget == 0:  # no image token survives (blind): skip the vision tower
        embeds = torch.cat([embeds[:, :start], embeds[:, end:]], dim=1)
    elif end > start and reduces_crops(engine.family, engine.method):
        image, kept_image, n_merged, tower_s, shortfall = reduce_crops(engine, inputs, instruction, seed)
        t0 += tower_s  # the tower and projector are not scoring
        embeds = torch.cat([embeds[:, :start], image[None].to(embeds.dtype), embeds[:, end:]], dim=1)
    elif end > start:
        engine.vision_capture, engine.capture_s = None, 0.0
        t_tower = engine._clock()
        features, vision_hidden = engine.family.image_features(
            engine.model, inputs, getattr(engine.method, "needs_vision_hidden", False))  # [V, d], [V, dv] | None
        t0 += engine._clock() - t_tower - engine.capture_s  # the tower and projector are not scoring
        if features.shape[0] != end - start:
            raise RuntimeError(f"the vision tower gave {features.shape[0]} features for {end - start} image tokens")
        cls_attn, keys = engine.vision_capture or (None, None)  # [1, Hv, V+1], [1, Hv, V+1, dh]: one crop
        cls_attn, keys = (None, None) if cls_attn is None else (cls_attn[0], keys[0])
        generator = torch.Generator().manual_seed(seed * 1000)
        ctx = PreLLMContext(features, cls_attn, keys, generator, budget, vision_hidden, instruction)
        sel = st.method.reduce(ctx)
        kept_image = sel.keep.to(input_ids.device)
        check_kept(st.method.name, kept_image, features.shape[0])  # sorted, in range, never a token twice
        parts = [features[kept_image]]
        if sel.merged is not None and sel.merged.shape[0]:
            n_merged = sel.merged.shape[0]
            parts.append(sel.merged.to(features.dtype))
        shortfall = check_prellm_count(st.method, kept_image.numel(), n_merged, budget)
        image = torch.cat(parts).to(embeds.dtype)  # [B', d], B' <= B distinct tokens
        embeds = torch.cat([embeds[:, :start], image[None], embeds[:, end:]], dim=1)
    n_image = kept_image.numel() + n_merged
    positions = None
    if end > start:
        prompt = torch.arange(input_ids.shape[1], device=input_ids.device)
        keep = torch.cat([prompt[:start], start + kept_image, prompt[end:]])  # [N'] prompt columns kept, in order
        positions = engine.family.prellm_positions(engine.model, inputs, keep, n_merged)
    st.image_span = (start, start + n_image)
    st.kept_image, st.n_merged, st.kept_fewer = kept_image, n_merged, shortfall
    st.vision_per_layer = [n_image] * engine.num_layers
    st.tokens_per_layer = [embeds.shape[1]] * engine.num_layers
    if engine.record_kept:
        st.kept[0] = kept_image.tolist()
    st.scoring_s += engine._clock() - t0
    return embeds, positions, st
