"""Analytic prefill FLOPs of the language model (docs/methods.md, "Latency, memory and FLOPs")."""

from __future__ import annotations


def layer_flops(n: int, hidden: int, intermediate: int) -> float:
    """Prefill FLOPs of one decoder layer with n tokens: projections, attention, SwiGLU MLP."""
    return 2.0 * (4 * n * hidden**2 + 2 * n**2 * hidden + 3 * n * hidden * intermediate)


def prefill_flops(tokens_per_layer: list[int], hidden: int, intermediate: int) -> float:
    """LLM prefill FLOPs summed over layers, each with its own sequence length."""
    return sum(layer_flops(n, hidden, intermediate) for n in tokens_per_layer)
