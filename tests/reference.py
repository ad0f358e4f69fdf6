"""The one slow reference for every method and family: eager attention over the full prompt, pruned tokens hidden.

A pruned token is not removed: from the layer its removal takes effect on, no query may attend to it
(its column is masked for every query, in prefill and in decode). Positions stay the original ones, so
this is the reference of every run with `positions=original` and `decode_positions=global`. The function
is plain softmax attention, independent of SDPA and of the engine's hooks.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "test_masked_eager"
HIDDEN: dict[int, torch.Tensor] = {}  # layer -> [N] bool, prompt positions no query may attend to


def masked_eager(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Plain softmax attention over the full sequence, hiding HIDDEN[layer] columns from every query."""
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    q_len, k_len = query.shape[2], key.shape[2]
    logits = (query @ key.transpose(-1, -2)) * scaling  # [1, H, Q, K]
    q_pos = torch.arange(k_len - q_len, k_len)[:, None]
    blocked = torch.arange(k_len)[None, :] > q_pos  # [Q, K] causal
    hidden = HIDDEN.get(module.layer_idx)
    if hidden is not None:
        blocked = blocked | torch.nn.functional.pad(hidden, (0, k_len - hidden.numel()))[None, :]
    probs = logits.masked_fill(blocked, float("-inf")).softmax(-1)
    return (probs @ value).transpose(1, 2).contiguous(), probs


AttentionInterface.register(NAME, masked_eager)
AttentionMaskInterface.register(NAME, sdpa_mask)


def hidden_by_layer(kept: dict[int, list[int]], span: tuple[int, int], prompt_len: int, num_layers: int) -> dict:
    """Per layer, the image positions a run with these kept sets removed (`kept`: layer entered -> image indices)."""
    start, end = span
    out, current = {}, None
    for layer in range(num_layers):
        if layer in kept:
            current = torch.zeros(prompt_len, dtype=torch.bool)
            current[start:end] = True
            current[torch.tensor(kept[layer], dtype=torch.long) + start] = False
        if current is not None:
            out[layer] = current
    return out


@torch.no_grad()
def masked_reference(model, inputs: dict, hidden: dict[int, torch.Tensor], max_new_tokens: int):
    """`generate` with every token present and `hidden[layer]` columns masked at each layer."""
    HIDDEN.clear()
    HIDDEN.update(hidden)
    model.set_attn_implementation({"text_config": NAME})
    try:
        return model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                              output_logits=True, return_dict_in_generate=True)
    finally:
        model.set_attn_implementation({"text_config": "sdpa"})
        HIDDEN.clear()
