"""Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`): dynamic resolution, M-RoPE, a tower without CLS.

The processor expands `<|image_pad|>` into `(h/14) * (w/14) / 4` tokens (2x2 patches merged), so the
count follows the image size (bounded by the processor's min/max pixels). The language model gets 3-D
position ids (temporal, height, width) from `get_rope_index`; its decoder layers receive the cos/sin
already assembled from the three axes (`mrope_section`), one row per token, so gathering rows of cos/sin
keeps every kept token at its original 3-D position. A generated token's position is the cache length
plus `rope_deltas` (the gap the image's 2-D grid left).

Pre-LLM methods get the merged image block (`image_features`, the order HF fills it in); the reduced prompt
goes to `generate` with its own position ids (`prellm_positions`): each kept token at its original 3-D
position, so a reduction keeps what M-RoPE says about where a token sits in the image, and decode continues
at the full prompt's next position (what `rope_deltas` gives an unpruned prompt).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import Qwen2_5_VLForConditionalGeneration

from harness.families import REFERENCE_TOKENS

BENCH_IMAGE = 672  # a square 672 px image: 48 x 48 patches, merged 2x2 -> 576 image tokens


@dataclass(frozen=True)
class Qwen2_5_VL:
    """Qwen2.5-VL: image-token count varies per sample; budgets are fractions budget/576 of it."""

    name: str = "qwen2_5_vl"
    model_class: type = Qwen2_5_VLForConditionalGeneration
    mrope: bool = True
    vision_cls: bool = False
    pre_llm: frozenset = frozenset({"features"})  # the merged image block; kept tokens keep their 3-D positions

    def language_model(self, model: nn.Module) -> nn.Module:
        return model.model.language_model

    def image_token_id(self, model: nn.Module) -> int:
        return model.config.image_token_id

    def image_tokens(self, model: nn.Module) -> int | None:
        return None

    def image_features(self, model: nn.Module, inputs: dict, vision_hidden: bool) -> tuple:
        """The sample's projected image block `[V, d]` (2x2-merged patches, as HF fills the prompt); no patch states."""
        if vision_hidden:
            raise ValueError("qwen2_5_vl gives pre-LLM methods no vision patch states aligned with its merged block")
        out = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
        return out.pooler_output[0], None  # one entry per image; batch 1, one image

    def row_inputs(self, model: nn.Module, inputs: dict, row: int, pad: int) -> dict:
        """Row `row`: its ids, its image's patches and grid (the processor concatenates every image's patches)."""
        ids = inputs["input_ids"]  # [B, N]
        out = {"input_ids": ids[row:row + 1, pad:]}
        has_image = (ids == model.config.image_token_id).any(dim=1).tolist()
        if has_image[row]:
            image = sum(has_image[:row])  # one image per sample with image tokens
            patches = inputs["image_grid_thw"].prod(-1).tolist()
            first = sum(patches[:image])
            out["pixel_values"] = inputs["pixel_values"][first:first + patches[image]]  # [patches, dim]
            out["image_grid_thw"] = inputs["image_grid_thw"][image:image + 1]
        return out

    def prellm_positions(self, model: nn.Module, inputs: dict, keep: torch.Tensor, n_merged: int) -> torch.Tensor:
        """`[4, 1, N']`: the sequence index 0..N'-1 (HF's text row), then the kept columns' original 3-D ids."""
        if n_merged:
            raise ValueError(f"{n_merged} merged image tokens have no M-RoPE position on qwen2_5_vl")
        ids = inputs["input_ids"]  # [1, N]
        types = (ids == model.config.image_token_id).int()  # mm_token_type_ids: 1 for image tokens
        full, _ = model.model.get_rope_index(ids, types, image_grid_thw=inputs["image_grid_thw"])  # [3, 1, N]
        index = torch.arange(keep.numel(), device=ids.device)
        return torch.cat([index[None, None], full[:, :, keep.to(ids.device)]])  # [4, 1, N']

    def decode_offset(self, model: nn.Module, row: int = 0, pad: int = 0) -> int:
        deltas = model.model.rope_deltas  # [B, 1] from the prefill's get_rope_index (relative to the padded length)
        return pad if deltas is None else int(deltas[row, 0]) + pad

    def synthetic_inputs(self, model: nn.Module, text: torch.Tensor, prefix_tokens: int,
                         generator: torch.Generator) -> dict:
        """prefix, `<|vision_start|>`, the image pads of one `BENCH_IMAGE` px square image, `<|vision_end|>`, question."""
        config, vision = model.config, model.config.vision_config
        side = BENCH_IMAGE // vision.patch_size  # patches per side
        merge = vision.spatial_merge_size
        patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
        pixels = torch.randn(side * side, patch_dim, generator=generator)  # [patches, 3 * 2 * 14 * 14]
        image = torch.full((side * side // merge**2,), config.image_token_id)
        ids = torch.cat([text[:prefix_tokens], torch.tensor([config.vision_start_token_id]), image,
                         torch.tensor([config.vision_end_token_id]), text[prefix_tokens:]])[None]
        return {"input_ids": ids, "pixel_values": pixels, "image_grid_thw": torch.tensor([[1, side, side]])}

    def vision_flops(self, model: nn.Module, inputs: dict) -> float:
        """Window-attention ViT (SwiGLU MLP, full attention in `fullatt_block_indexes`) and the 2x2 patch merger."""
        vision = model.config.vision_config
        n = int(inputs["image_grid_thw"].prod())  # patches
        d, m, merge = vision.hidden_size, vision.intermediate_size, vision.spatial_merge_size
        window = min(n, (vision.window_size // vision.patch_size) ** 2)  # tokens a windowed query sees
        full = len(vision.fullatt_block_indexes)
        per_layer = 4 * n * d * d + 3 * n * d * m
        attention = full * 2 * n * n * d + (vision.depth - full) * 2 * n * window * d
        merged, wide = n // merge**2, d * merge**2
        merger = merged * (wide * wide + wide * vision.out_hidden_size)
        return 2.0 * (vision.depth * per_layer + attention + merger)

    def tiny(self, words: list[str], num_layers: int = 28):
        return tiny(words, num_layers)

    def budget_label(self, budget: int, image_tokens: float | None) -> str:
        return f"{100 * budget / REFERENCE_TOKENS:.1f}%"  # 192/128/64 -> 33.3% / 22.2% / 11.1%


QWEN2_5_VL = Qwen2_5_VL()


QWEN_SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|image_pad|>", "<|vision_start|>", "<|vision_end|>",
                       "<|video_pad|>", "\n", "<|im_start|>", "<|im_end|>"]


def tiny(words: list[str], num_layers: int = 28):
    """(config, processor) of a tiny random Qwen2.5-VL: patch 14, 2x2 merge, window attention, M-RoPE.

    An image of h x w pixels (rounded to multiples of 28, within min/max pixels) gives (h/28) * (w/28) tokens.
    """
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    from harness.model import word_tokenizer

    tokenizer = word_tokenizer([*words, "user", "assistant"], QWEN_SPECIAL_TOKENS, image_token="<|image_pad|>",
                               extra={"video_token": "<|video_pad|>"})
    vocab = tokenizer.get_vocab()
    image_processor = Qwen2VLImageProcessor(size={"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 256})
    processor = Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                    video_processor=Qwen2VLVideoProcessor())
    config = Qwen2_5_VLConfig(
        text_config=dict(
            hidden_size=64, intermediate_size=128, num_hidden_layers=num_layers, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=len(vocab), max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
            bos_token_id=1, eos_token_id=2, pad_token_id=3,
        ),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                           fullatt_block_indexes=[1]),
        image_token_id=vocab["<|image_pad|>"], video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"], vision_end_token_id=vocab["<|vision_end|>"],
        pad_token_id=3,
    )
    return config, processor
