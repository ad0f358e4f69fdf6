"""Analytic prefill FLOPs of the language model (docs/methods.md, "Latency, memory and FLOPs")."""

from __future__ import annotations


def layer_flops(n: int, hidden: int, intermediate: int, kv_width: int | None = None) -> float:
    """Prefill FLOPs of one decoder layer with n tokens: projections, attention, SwiGLU MLP.

    Args:
        n: tokens the layer processes.
        hidden: model width d (= query heads x head_dim).
        intermediate: SwiGLU width m.
        kv_width: width of the key and value projections, num_key_value_heads x head_dim (grouped-query
            attention: 512 on Qwen2.5-VL-7B); None = d (full multi-head attention, as LLaVA-1.5's Vicuna).
    """
    kv = hidden if kv_width is None else kv_width
    projections = 2 * n * hidden * hidden + 2 * n * hidden * kv  # q, o: d -> d; k, v: d -> kv_width
    return 2.0 * (projections + 2 * n**2 * hidden + 3 * n * hidden * intermediate)


def prefill_flops(tokens_per_layer: list[int], hidden: int, intermediate: int, kv_width: int | None = None) -> float:
    """LLM prefill FLOPs summed over layers, each with its own sequence length."""
    return sum(layer_flops(n, hidden, intermediate, kv_width) for n in tokens_per_layer)


def kv_width(text_config) -> int:
    """num_key_value_heads x head_dim of a transformers text config (= hidden_size without grouped keys)."""
    heads = text_config.num_attention_heads
    kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // heads
    return kv_heads * head_dim


def text_prefill_flops(text_config, tokens_per_layer: list[int]) -> float:
    """`prefill_flops` with the widths of a transformers text config (grouped keys counted at their width)."""
    return prefill_flops(tokens_per_layer, text_config.hidden_size, text_config.intermediate_size,
                         kv_width(text_config))
