"""The attention functions the engine registers with transformers, and the attention rows it scores with.

`prunebench_sdpa` is transformers' SDPA plus a call to `engine.capture` at every language-model layer
(the engine keeps what it needs at stage layers); `prunebench_vision_sdpa` does the same for the vision
tower's feature layer (the CLS row's attention and the keys, read by pre-LLM methods). The kernel that
produces the model's outputs is always the normal SDPA one: scoring never changes what the model computes.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTN_NAME = "prunebench_sdpa"
VISION_ATTN_NAME = "prunebench_vision_sdpa"


def _attention(module, query, key, value, attention_mask, **kwargs):
    """SDPA, plus the method's attention rows at stage layers (see `PruningEngine.capture`)."""
    engine = getattr(module, "_prunebench_engine", None)
    if engine is not None:
        engine.capture(module, query, key, attention_mask)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _vision_attention(module, query, key, value, attention_mask, **kwargs):
    """SDPA for the vision tower, plus the CLS row's attention and the keys at the feature layer, for every crop
    of the tower's batch (one crop on LLaVA-1.5; the base view and every tile on LLaVA-NeXT)."""
    engine = getattr(module, "_prunebench_engine", None)
    if engine is not None and getattr(module, "_prunebench_feature_layer", False):
        t0 = engine._clock()
        cls_logits = (query[:, :, :1].float() @ key.float().transpose(-1, -2)) * kwargs["scaling"]  # [C, Hv, 1, V+1]
        engine.vision_capture = (cls_logits.softmax(-1)[:, :, 0], key)  # [C, Hv, V+1], [C, Hv, V+1, dh]
        engine.capture_s = engine._clock() - t0  # scoring work inside the tower pass
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(ATTN_NAME, _attention)
AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)
AttentionInterface.register(VISION_ATTN_NAME, _vision_attention)
AttentionMaskInterface.register(VISION_ATTN_NAME, sdpa_mask)


def attention_rows(module, query: torch.Tensor, key: torch.Tensor, rows: torch.Tensor,
                   mask: torch.Tensor | None) -> torch.Tensor:
    """Softmax attention of the query `rows` of one sample against all its keys, causal, in fp32.

    Args:
        module: the attention module (`num_key_value_groups`, `scaling`).
        query: `[1, H, n, D]` after RoPE; key: `[1, H_kv, n, D]` (not expanded for GQA).
        rows: `[R]` query indices.
        mask: a materialised `[1, 1, n, n]` mask (bool or additive), or None.

    Returns:
        `[H, R, n]`.
    """
    n = query.shape[2]
    q = query[0, :, rows].float()  # [H, R, D]
    k = repeat_kv(key, module.num_key_value_groups)[0].float()  # [H, n, D]
    logits = (q @ k.transpose(-1, -2)) * module.scaling  # [H, R, n]
    future = torch.arange(n, device=query.device)[None, :] > rows[:, None]  # [R, n] causal
    logits = logits.masked_fill(future, float("-inf"))
    if mask is not None:
        mask = mask[0, 0, rows]  # [R, n]
        logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask
    return logits.softmax(-1)
