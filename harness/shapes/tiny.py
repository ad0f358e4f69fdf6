"""The tiny LLaVA of the shapes benchmark: its config, CLIP pixels and the tower's feature layer."""

from __future__ import annotations

import numpy as np
import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

from harness.model import IMAGE_TOKEN
from harness.shapes import data

N_PATCHES = data.GRID * data.GRID  # 576 image tokens
MAX_NEW_TOKENS = 3  # as the shapes task YAMLs


def build_model(processor, seed: int) -> LlavaForConditionalGeneration:
    """The tiny LLaVA with seeded random weights, fp32, SDPA attention."""
    tokenizer = processor.tokenizer
    vocab = tokenizer.get_vocab()
    vision = CLIPVisionConfig(
        hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
        image_size=336, patch_size=14, projection_dim=64,
    )  # fmt: skip
    text = LlamaConfig(
        hidden_size=64, intermediate_size=170, num_hidden_layers=32, num_attention_heads=2,
        num_key_value_heads=2, head_dim=32, vocab_size=len(vocab), max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )  # fmt: skip
    config = LlavaConfig(
        vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_index=vocab[IMAGE_TOKEN],
        projector_hidden_act="gelu", vision_feature_layer=-2, vision_feature_select_strategy="default",
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )  # fmt: skip
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).float()
    with torch.no_grad():  # position embeddings x8: at norm ~0.5 they are swamped by content features
        model.model.vision_tower.embeddings.position_embedding.weight.mul_(8.0)  # (norm ~70): row/col unlearnable
    assert model.lm_head.weight is model.get_input_embeddings().weight, "embeddings must be tied"
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    gen.do_sample, gen.max_new_tokens = False, MAX_NEW_TOKENS
    return model


def pixel_values(images: list, processor) -> torch.Tensor:
    """CLIP-normalised pixels [B, 3, 336, 336]; equals the processor's output (336 px images, no resize)."""
    ip = processor.image_processor
    mean = torch.tensor(ip.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(ip.image_std).view(1, 3, 1, 1)
    arr = np.stack([np.array(image, dtype=np.float32) for image in images]) / 255.0  # [B, H, W, 3]
    return (torch.from_numpy(arr).permute(0, 3, 1, 2) - mean) / std


def tower_hidden(model: LlavaForConditionalGeneration, pixels: torch.Tensor) -> torch.Tensor:
    """The tower's hidden states at `vision_feature_layer` (CLS first): [B, 577, 128].

    Runs only the layers needed (3 of 4 for layer -2); equal to `hidden_states[-2]` of the tower.
    """
    tower = model.model.vision_tower
    hidden = tower.pre_layrnorm(tower.embeddings(pixels))
    n_layers = len(tower.encoder.layers) + 1 + model.config.vision_feature_layer
    for layer in tower.encoder.layers[:n_layers]:
        hidden = layer(hidden, None)
    return hidden

