"""The CLIP text tower paired with a LLaVA vision tower, for methods that score image tokens against the instruction.

    tower = load_text_tower("openai/clip-vit-large-patch14-336", vision_width=1024)   # LLaVA-1.5's tower
    tower = load_text_tower("/path/to/local/clip", vision_width=1024)                 # a local snapshot
    tower = load_text_tower("tiny", vision_width=32)                                  # random, for tests
    tower = load_text_tower("tiny-clip-shapes", vision_width=128)                     # under harness/assets

LLaVA checkpoints hold the vision tower only; the text tower, its projection and the vision projection come
from the CLIP checkpoint the tower was taken from (`from_pretrained`, a hub id or a local directory).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPVisionModelWithProjection,
)
from transformers.utils import logging as hf_logging

ALLOWED = "a hub id or local directory of the CLIP checkpoint of the vision tower (LLaVA-1.5: " \
          "openai/clip-vit-large-patch14-336; the embedded model: tiny-clip-shapes, under harness/assets), or " \
          "'tiny' (random weights, for tests)"


class ClipTextTower:
    """CLIP's text tower with projection, plus the vision side's post-layernorm and projection.

    Args:
        tokenizer: the CLIP tokenizer (any tokenizer for `tiny`).
        text_model: `CLIPTextModelWithProjection`.
        post_layernorm, visual_projection: from `CLIPVisionModelWithProjection` of the same checkpoint.
    """

    def __init__(self, tokenizer, text_model, post_layernorm: torch.nn.Module, visual_projection: torch.nn.Module):
        self.tokenizer = tokenizer
        self.text_model = text_model.eval().float()
        self.post_layernorm = post_layernorm.eval().float()
        self.visual_projection = visual_projection.eval().float()
        self.window = text_model.config.max_position_embeddings
        self.vision_width = post_layernorm.normalized_shape[0]

    def to(self, device: torch.device) -> ClipTextTower:
        for module in (self.text_model, self.post_layernorm, self.visual_projection):
            module.to(device)
        return self

    @torch.no_grad()
    def encode_text(self, text: str) -> torch.Tensor:
        """`[M, C]` text embeddings: the tokens cut into M windows of `max_position_embeddings`, the last one
        padded with id 0 and mask 0, each window encoded on its own (as CDPruner's `clip_encoder.py`)."""
        device = self.text_model.device
        tokens = self.tokenizer(text=text, return_tensors="pt")
        n = tokens["input_ids"].shape[1]
        segments = (n - 1) // self.window + 1
        pad = segments * self.window - n
        batch = {
            key: torch.cat([tokens[key], tokens[key].new_zeros((1, pad))], dim=1).reshape(-1, self.window).to(device)
            for key in ("input_ids", "attention_mask")
        }
        return self.text_model(**batch).text_embeds.float()  # [M, C]

    @torch.no_grad()
    def embed_patches(self, hidden: torch.Tensor) -> torch.Tensor:
        """`[V, dv]` vision hidden states (the feature layer's patches) -> `[V, C]` in CLIP's joint space."""
        return self.visual_projection(self.post_layernorm(hidden.float()))


def tiny_text_tower(vision_width: int, seed: int = 0) -> ClipTextTower:
    """A random CLIP text tower (2 layers, width 32) over the tiny test model's word tokenizer."""
    from harness.model import TINY_WORDS, build_word_processor

    tokenizer = build_word_processor(TINY_WORDS).tokenizer
    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=77, projection_dim=16,
                            bos_token_id=1, eos_token_id=2, pad_token_id=0)  # eos 2: pool at the largest id (CLIP legacy rule)
    text_model = CLIPTextModelWithProjection(config)
    post_layernorm = torch.nn.LayerNorm(vision_width)
    torch.nn.init.normal_(post_layernorm.weight, 1.0, 0.1)
    torch.nn.init.normal_(post_layernorm.bias, 0.0, 0.1)
    visual_projection = torch.nn.Linear(vision_width, config.projection_dim, bias=False)
    return ClipTextTower(tokenizer, text_model, post_layernorm, visual_projection)


def load_text_tower(location: str | None, vision_width: int | None, key: str = "method.text_encoder") -> ClipTextTower:
    """Load the text tower paired with a vision tower of width `vision_width` (None: not checked here).

    Raises:
        ValueError: naming `key`, when the location is null, cannot be loaded, or belongs to another tower width.
    """
    if not location:
        raise ValueError(f"{key}={location!r}: a CLIP text encoder paired with the vision tower is needed "
                         f"(allowed: {ALLOWED})")
    if location == "tiny":
        return tiny_text_tower(vision_width)
    from harness.model import ASSETS

    if not Path(location).is_dir() and (ASSETS / location).is_dir():
        location = str(ASSETS / location)  # a checkpoint shipped under harness/assets (tiny-clip-shapes)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # each half of a CLIPModel checkpoint reports the other half's keys as unexpected
    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
        text_model, text_info = CLIPTextModelWithProjection.from_pretrained(location, output_loading_info=True)
        vision, vision_info = CLIPVisionModelWithProjection.from_pretrained(location, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"{key}={location!r} could not be loaded ({err}) (allowed: {ALLOWED})") from err
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = sorted(text_info["missing_keys"]) + sorted(vision_info["missing_keys"])  # silenced above: checked here
    if missing:
        raise ValueError(f"{key}={location!r} lacks {len(missing)} weights of a CLIP model ({', '.join(missing[:3])}, "
                         f"...) (allowed: {ALLOWED})")
    if vision_width is not None and vision.config.hidden_size != vision_width:
        raise ValueError(f"{key}={location!r} belongs to a vision tower of width {vision.config.hidden_size}, "
                         f"not this model's {vision_width} (allowed: {ALLOWED})")
    return ClipTextTower(tokenizer, text_model, vision.vision_model.post_layernorm, vision.visual_projection)
