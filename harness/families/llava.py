"""LLaVA-1.5 (`LlavaForConditionalGeneration`): CLIP tower with CLS, 576 image tokens, Llama with 1-D RoPE."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from transformers import LlavaForConditionalGeneration


@dataclass(frozen=True)
class Llava:
    """LLaVA-1.5: one contiguous block of (image_size / patch)^2 image tokens; budgets are token counts."""

    name: str = "llava"
    model_class: type = LlavaForConditionalGeneration
    mrope: bool = False
    vision_cls: bool = True
    pre_llm: bool = True

    def language_model(self, model: nn.Module) -> nn.Module:
        return model.model.language_model

    def image_token_id(self, model: nn.Module) -> int:
        return model.config.image_token_index

    def image_tokens(self, model: nn.Module) -> int | None:
        vision = model.config.vision_config
        return (vision.image_size // vision.patch_size) ** 2

    def decode_offset(self, model: nn.Module) -> int:
        return 0

    def tiny(self, words: list[str], num_layers: int = 32):
        from harness.model import IMAGE_TOKEN, build_word_processor, tiny_config

        processor = build_word_processor(words)
        vocab = processor.tokenizer.get_vocab()
        return tiny_config(len(vocab), vocab[IMAGE_TOKEN], num_layers), processor

    def budget_label(self, budget: int, image_tokens: float | None) -> str:
        return str(budget)


LLAVA = Llava()
