"""LLaVA-NeXT (`LlavaNextForConditionalGeneration`): anyres tiles, a variable image block, Llama with 1-D RoPE.

The processor expands `<image>` into the packed feature count of that image: the base 24x24 view, the
unpadded tiles of its best grid (up to 2x2 tiles of 336 px for LLaVA-v1.6: 2,304 features) and one
`image_newline` row separator per row of tiles: up to 2,880 + 48 tokens, contiguous. The separators are
image tokens for the engine (they sit in the block and methods may prune them).

Pre-LLM methods get that packed block as HF builds it (base view, unpadded tiles, separators) and keep the
same fraction budget/576 of it. Methods that read patch states aligned with the block (CDPruner) or a square
grid (pool) do not apply: the block mixes five crops, their unpadding and the separators.

A method whose official LLaVA-NeXT code reduces each crop on its own (`per_crop`: VisionZip) gets the crops
instead (`reduce_crops`): one tower pass over the base view and the tiles, each crop with its own CLS
attention and keys at the feature layer, reduced one by one, then laid out as VisionZip's official code does
(dvlab-research/VisionZip, `visionzip/llava_arch.py`, `prepare_inputs_labels_for_multimodal_visionzip` and
`restore_image_features_sorted`): the base view's tokens first (its dominant patches in patch order, then its
contextual tokens); then the tiles' dominant patches in raster order of the stitched tile grid (rows of the
whole grid, not tile by tile); then every tile's contextual tokens, tile after tile. Nothing is unpadded and
no row separator is added.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import LlavaNextForConditionalGeneration
from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape

from harness.families import REFERENCE_TOKENS, padded_row
from harness.families.llava import clip_flops
from harness.methods.base import Selection


@dataclass(frozen=True)
class LlavaNext:
    """LLaVA-NeXT: image-token count varies per sample; budgets are fractions budget/576 of it."""

    name: str = "llava_next"
    model_class: type = LlavaNextForConditionalGeneration
    mrope: bool = False
    vision_cls: bool = True  # per crop
    pre_llm: frozenset = frozenset({"features", "crops"})  # the packed block, or crop by crop (module docstring)

    def language_model(self, model: nn.Module) -> nn.Module:
        return model.model.language_model

    def image_token_id(self, model: nn.Module) -> int:
        return model.config.image_token_index

    def image_tokens(self, model: nn.Module) -> int | None:
        return None

    def image_features(self, model: nn.Module, inputs: dict, vision_hidden: bool) -> tuple:
        """The packed image block (base view, unpadded tiles, row separators) `[V, d]`; no patch states."""
        if vision_hidden:
            raise ValueError("llava_next gives pre-LLM methods no patch states aligned with its packed image block")
        config = model.config
        out = model.model.get_image_features(
            pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"],
            vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
        )
        return out.pooler_output[0], None  # [V, d]: one entry per image; batch 1, one image

    def reduce_crops(self, model: nn.Module, inputs: dict,
                     reduce_crop: Callable[[int, torch.Tensor], Selection]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """One sample's image reduced crop by crop, laid out as VisionZip's official LLaVA-NeXT code (module docstring).

        Returns:
            (image block `[n, d]`, kept patches `[k]` in block order as `crop * P + patch`, merged token count).
        """
        config, vision = model.config, model.config.vision_config
        side = vision.image_size // vision.patch_size  # patches per crop side (24 on LLaVA-v1.6)
        rows, cols = get_anyres_image_grid_shape(inputs["image_sizes"][0], config.image_grid_pinpoints,
                                                 vision.image_size)  # tile grid
        pixels = inputs["pixel_values"]
        pixels = pixels[0] if pixels.dim() == 5 else pixels  # [C', 3, H, W]
        pixels = pixels[: 1 + rows * cols]  # base view, then the tiles row by row (a batch pads extra crops)
        out = model.model.vision_tower(pixels, output_hidden_states=True)  # every crop its own pass
        hidden = out.hidden_states[config.vision_feature_layer]  # [C, 1+P, dv]
        if config.vision_feature_select_strategy == "default":
            hidden = hidden[:, 1:]  # [C, P, dv]: CLS dropped
        features = model.model.multi_modal_projector(hidden)  # [C, P, d]
        patches = features.shape[1]
        if patches != side * side:
            raise ValueError(f"reducing crop by crop needs vision_feature_select_strategy='default' (one CLS token "
                             f"per crop), not {config.vision_feature_select_strategy!r}")
        selections = [reduce_crop(crop, features[crop]) for crop in range(features.shape[0])]
        base, device = selections[0], features.device
        tile_kept = torch.cat([sel.keep.to(device) + crop * patches  # [k_tiles] as crop * P + patch
                               for crop, sel in enumerate(selections) if crop > 0])
        tile, patch = tile_kept // patches - 1, tile_kept % patches
        row = (tile // cols) * side + patch // side  # row and column in the stitched tile grid
        col = (tile % cols) * side + patch % side
        tile_kept = tile_kept[(row * cols * side + col).argsort()]  # raster order over the whole grid
        flat = features.reshape(-1, features.shape[-1])  # [C * P, d]
        merged = [flat[:0] if sel.merged is None else sel.merged.to(flat.dtype) for sel in selections]  # [M_c, d]
        image = torch.cat([flat[base.keep.to(device)], merged[0], flat[tile_kept], *merged[1:]])  # [n, d]
        kept = torch.cat([base.keep.to(device), tile_kept])  # [k]
        return image, kept, sum(m.shape[0] for m in merged)

    def row_inputs(self, model: nn.Module, inputs: dict, row: int, pad: int) -> dict:
        return padded_row(inputs, row, pad)

    def prellm_positions(self, model: nn.Module, inputs: dict, keep: torch.Tensor, n_merged: int) -> None:
        return None  # HF numbers the reduced prompt 0..N'-1, as the official pre-LLM code does

    def decode_offset(self, model: nn.Module, row: int = 0, pad: int = 0) -> int:
        return 0

    def synthetic_inputs(self, model: nn.Module, text: torch.Tensor, prefix_tokens: int,
                         generator: torch.Generator) -> dict:
        """One square image of the largest square grid (672 px on LLaVA-v1.6: 2x2 tiles, 576 + 2,304 features + 48
        row separators = 2,928 tokens); its packed count comes from the model itself."""
        config = model.config
        side = config.vision_config.image_size
        image_px = max(h for h, w in config.image_grid_pinpoints if h == w)  # the largest square grid (672 px)
        grid = image_px // side
        pixels = torch.randn(1, 1 + grid * grid, 3, side, side, generator=generator)  # base view + tiles
        sizes = torch.tensor([[image_px, image_px]])
        device, dtype = next(model.parameters()).device, model.dtype
        with torch.no_grad():
            features = model.model.get_image_features(
                pixel_values=pixels.to(device, dtype), image_sizes=sizes.to(device),
                vision_feature_layer=config.vision_feature_layer,
                vision_feature_select_strategy=config.vision_feature_select_strategy,
            ).pooler_output
        image = torch.full((features[0].shape[0],), config.image_token_index)
        ids = torch.cat([torch.tensor([1]), text[:prefix_tokens], image, text[prefix_tokens:]])[None]
        return {"input_ids": ids, "pixel_values": pixels, "image_sizes": sizes}

    def vision_flops(self, model: nn.Module, inputs: dict) -> float:
        features = int((inputs["input_ids"] == model.config.image_token_index).sum())
        return clip_flops(model, crops=inputs["pixel_values"].shape[1], features=features)

    def tiny(self, words: list[str], num_layers: int = 32):
        return tiny(words, num_layers)

    def budget_label(self, budget: int, image_tokens: float | None) -> str:
        # The field quotes LLaVA-NeXT budgets at its full 2,880 image features: 5x the LLaVA-1.5 count.
        return str(round(budget * 2880 / REFERENCE_TOKENS))


LLAVA_NEXT = LlavaNext()


def tiny(words: list[str], num_layers: int = 32, image_size: int = 168):
    """(config, processor) of a tiny random LLaVA-NeXT: CLIP 168 px / patch 14 (144 tokens per view),
    tiles up to 2x2 of 168 px, so an image gives 144 + up to 576 tile features + row separators.
    `image_size=336` gives LLaVA-v1.6's crop geometry (576 patches per crop, up to 2x2 tiles of 336 px)."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    from harness.model import IMAGE_TOKEN, word_tokenizer

    tokenizer = word_tokenizer(words)
    vocab = tokenizer.get_vocab()
    pinpoints = [[image_size, 2 * image_size], [2 * image_size, image_size], [2 * image_size, 2 * image_size]]
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        image_grid_pinpoints=pinpoints,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=image_size, patch_size=14, projection_dim=32)
    text = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=num_layers, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=len(vocab), max_position_embeddings=4096,
                       bos_token_id=1, eos_token_id=2, pad_token_id=3)
    config = LlavaNextConfig(
        vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_index=vocab[IMAGE_TOKEN],
        image_grid_pinpoints=pinpoints, projector_hidden_act="gelu", vision_feature_layer=-2,
        vision_feature_select_strategy="default", pad_token_id=3,
    )
    return config, processor
