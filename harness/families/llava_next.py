"""LLaVA-NeXT (`LlavaNextForConditionalGeneration`): anyres tiles, a variable image block, Llama with 1-D RoPE.

The processor expands `<image>` into the packed feature count of that image: the base 24x24 view, the
unpadded tiles of its best grid (up to 2x2 tiles of 336 px for LLaVA-v1.6: 2,304 features) and one
`image_newline` row separator per row of tiles: up to 2,880 + 48 tokens, contiguous. The separators are
image tokens for the engine (they sit in the block and methods may prune them).

Pre-LLM methods get that packed block as HF builds it (base view, unpadded tiles, separators) and keep the
same fraction budget/576 of it. Methods that read one tower pass over the block (VisionZip's CLS attention,
CDPruner's patch states) or a square grid (pool) do not apply: the block mixes five crops, their unpadding
and the separators. (VisionZip's official LLaVA-NeXT code reduces every crop on its own, dominant +
contextual per crop, and drops the separators; that per-crop path is not built here.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import LlavaNextForConditionalGeneration

from harness.families import REFERENCE_TOKENS
from harness.families.llava import clip_flops


@dataclass(frozen=True)
class LlavaNext:
    """LLaVA-NeXT: image-token count varies per sample; budgets are fractions budget/576 of it."""

    name: str = "llava_next"
    model_class: type = LlavaNextForConditionalGeneration
    mrope: bool = False
    vision_cls: bool = True  # per crop
    pre_llm: frozenset = frozenset({"features"})  # the packed block only (module docstring)

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


def tiny(words: list[str], num_layers: int = 32):
    """(config, processor) of a tiny random LLaVA-NeXT: CLIP 168 px / patch 14 (144 tokens per view),
    tiles up to 2x2 of 168 px, so an image gives 144 + up to 576 tile features + row separators."""
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
    pinpoints = [[168, 336], [336, 168], [336, 336]]
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": 168}, crop_size={"height": 168, "width": 168}, image_grid_pinpoints=pinpoints,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=168, patch_size=14, projection_dim=32)
    text = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=num_layers, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=len(vocab), max_position_embeddings=4096,
                       bos_token_id=1, eos_token_id=2, pad_token_id=3)
    config = LlavaNextConfig(
        vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_index=vocab[IMAGE_TOKEN],
        image_grid_pinpoints=pinpoints, projector_hidden_act="gelu", vision_feature_layer=-2,
        vision_feature_select_strategy="default", pad_token_id=3,
    )
    return config, processor
