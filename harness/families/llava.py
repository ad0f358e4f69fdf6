"""LLaVA-1.5 (`LlavaForConditionalGeneration`): CLIP tower with CLS, 576 image tokens, Llama with 1-D RoPE."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import LlavaForConditionalGeneration

from harness.families import padded_row


@dataclass(frozen=True)
class Llava:
    """LLaVA-1.5: one contiguous block of (image_size / patch)^2 image tokens; budgets are token counts."""

    name: str = "llava"
    model_class: type = LlavaForConditionalGeneration
    mrope: bool = False
    vision_cls: bool = True
    pre_llm: frozenset = frozenset({"features", "vision_attention", "vision_hidden", "square_grid"})

    def language_model(self, model: nn.Module) -> nn.Module:
        return model.model.language_model

    def image_token_id(self, model: nn.Module) -> int:
        return model.config.image_token_index

    def image_tokens(self, model: nn.Module) -> int | None:
        vision = model.config.vision_config
        return (vision.image_size // vision.patch_size) ** 2

    def image_features(self, model: nn.Module, inputs: dict, vision_hidden: bool) -> tuple:
        """The 576 projected patch features (CLS dropped), and the feature layer's patch states if asked."""
        config = model.config
        out = model.model.get_image_features(
            pixel_values=inputs["pixel_values"], vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
        )
        hidden = None
        if vision_hidden:  # the feature layer's patches, before the projector
            hidden = out.hidden_states[config.vision_feature_layer][0]  # [V(+1), dv]
            hidden = hidden[1:] if config.vision_feature_select_strategy == "default" else hidden
        return out.pooler_output[0], hidden  # [V, d], [V, dv] | None

    def row_inputs(self, model: nn.Module, inputs: dict, row: int, pad: int) -> dict:
        return padded_row(inputs, row, pad)

    def prellm_positions(self, model: nn.Module, inputs: dict, keep: torch.Tensor, n_merged: int) -> None:
        return None  # HF numbers the reduced prompt 0..N'-1, as the official pre-LLM code does

    def decode_offset(self, model: nn.Module, row: int = 0, pad: int = 0) -> int:
        return 0

    def synthetic_inputs(self, model: nn.Module, text: torch.Tensor, prefix_tokens: int,
                         generator: torch.Generator) -> dict:
        """`<s>`, prefix, the 576-token image block, question; one image of the tower's size."""
        config = model.config
        vision = config.vision_config
        image = torch.full((self.image_tokens(model),), config.image_token_index)
        ids = torch.cat([torch.tensor([1]), text[:prefix_tokens], image, text[prefix_tokens:]])[None]
        pixels = torch.randn(1, 3, vision.image_size, vision.image_size, generator=generator)
        return {"input_ids": ids, "pixel_values": pixels}

    def vision_flops(self, model: nn.Module, inputs: dict) -> float:
        return clip_flops(model, crops=1, features=self.image_tokens(model))

    def tiny(self, words: list[str], num_layers: int = 32):
        from harness.model import IMAGE_TOKEN, build_word_processor, tiny_config

        processor = build_word_processor(words)
        vocab = processor.tokenizer.get_vocab()
        return tiny_config(len(vocab), vocab[IMAGE_TOKEN], num_layers), processor

    def budget_label(self, budget: int, image_tokens: float | None) -> str:
        return str(budget)


LLAVA = Llava()


def clip_flops(model: nn.Module, crops: int, features: int) -> float:
    """CLIP tower FLOPs (all layers, GELU MLP) over `crops` views, plus the 2-layer projector on `features` tokens."""
    vision, text = model.config.vision_config, model.config.text_config
    n = (vision.image_size // vision.patch_size) ** 2 + 1
    d, m = vision.hidden_size, vision.intermediate_size
    tower = vision.num_hidden_layers * 2.0 * (4 * n * d * d + 2 * n * n * d + 2 * n * d * m)
    projector = 2.0 * features * (d * text.hidden_size + text.hidden_size * text.hidden_size)
    return crops * tower + projector
