"""SparseVLM's arithmetic against plain-loop references: v2's RoPE gravity term, the gravity-weighted scores,
DPC-KNN merging. The references (plain loops) are in tests/helpers.py, shared with tests/test_sparsevlm.py.
"""

from __future__ import annotations

import logging
import math

import pytest
import torch
from helpers import SPARSEVLM_FLOOR as FLOOR
from helpers import gravity_matrix, reference_dpc, reference_gravity, sparsevlm_scores, top_k
from transformers.models.llama.configuration_llama import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from harness.methods.sparsevlm import SparseVLM, dpc_knn_merge, gravity

V = 576


# ------------------------------------------------------------------ DPC-KNN
@pytest.mark.parametrize("n,k", [(1, None), (2, None), (7, None), (30, None), (83, None), (40, 5), (25, 100)])
def test_dpc_knn_matches_loop_reference(n, k):
    x = torch.randn(n, 12, generator=torch.Generator().manual_seed(n))
    clusters = int(n / 10) + 1
    assert torch.allclose(dpc_knn_merge(x, clusters, k).double(), reference_dpc(x, clusters, k), atol=1e-5)


def test_dpc_knn_breaks_density_ties_by_index():
    """Exact duplicates have equal densities: the lower index counts as denser (official: random noise)."""
    x = torch.randn(20, 8, generator=torch.Generator().manual_seed(0))
    x[5] = x[2]
    x[11] = x[2]
    x[17] = x[9]
    merged = dpc_knn_merge(x, 3)
    assert torch.allclose(merged.double(), reference_dpc(x, 3), atol=1e-5)
    assert torch.equal(merged, dpc_knn_merge(x, 3))  # deterministic


# ------------------------------------------------------------------ v2: the gravity term
def rope(hd: int, positions: torch.Tensor, theta: float = 1e4) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin `[n, hd]` (fp32) as transformers' Llama computes them for these positions."""
    config = LlamaConfig(hidden_size=hd * 4, num_attention_heads=4, rope_parameters={"rope_type": "default", "rope_theta": theta})
    cos, sin = LlamaRotaryEmbedding(config)(torch.zeros(1, 1, hd * 4), position_ids=positions[None])
    return cos[0], sin[0]


def test_gravity_is_the_official_rope_weights_on_the_7b_layout():
    """head_dim 128, theta 1e4: the term equals RoPE-rotated all-ones vectors (float64 loops) and lies in
    1.19..11.31 for every distance 0..699, above the guard (1.13) everywhere: the guard does not bind."""
    positions = torch.arange(700)
    cos, sin = rope(128, positions)
    rows = torch.tensor([699, 650, 400])
    term, at_zero = gravity(cos, sin, rows, positions)  # [3, 700]
    ref = gravity_matrix(rows.tolist(), positions.tolist(), 128, 1e4)
    unguarded = torch.tensor([[reference_gravity(int(p), int(q), 128, 1e4, floor=None) for q in positions]
                              for p in rows], dtype=torch.float64)
    assert torch.equal(ref, unguarded)  # the guard never binds here
    assert (term.double() - ref).abs().max().item() < 1e-4
    assert at_zero.item() == pytest.approx(math.sqrt(128), abs=1e-5)
    by_distance = term[0].flip(0)  # row 699: distances 0..699
    assert by_distance.max().item() == pytest.approx(11.3137, abs=1e-3) and by_distance.argmax().item() == 0
    assert by_distance.min().item() == pytest.approx(1.191, abs=1e-3)
    assert by_distance.min().item() > FLOOR * at_zero.item()


def test_gravity_crosses_zero_for_small_head_dims_and_the_guard_clamps(caplog):
    """head_dim 16 (the tiny test model): the term turns negative from distance 91; the scores divide by the
    term clamped at 0.1 x sqrt(16) = 0.4, never by zero or a negative value, and a warning says so once."""
    positions = torch.arange(300)
    cos, sin = rope(16, positions)
    term, _ = gravity(cos, sin, torch.tensor([299]), positions)
    distances = term[0].flip(0)
    assert distances[:91].min().item() > 0 and distances[91].item() < 0
    method = SparseVLM(64, variant="v2", top_heads=1)
    attn = torch.full((1, 10, 300), 1.0 / 300)  # [H, T, N]: uniform rows; text block from 290
    with caplog.at_level(logging.WARNING, logger="harness.methods.sparsevlm"):
        scores = method.scores(attn, torch.tensor([9]), 0, 290, (cos, sin))  # rater row = position 299
        method.scores(attn, torch.tensor([9]), 0, 290, (cos, sin))
    expected = torch.tensor([(1.0 / 300) / reference_gravity(299, q, 16, 1e4) for q in range(290)], dtype=torch.float64)
    assert (scores.double() - expected).abs().max().item() < 1e-7
    assert scores.min().item() > 0 and scores.max().item() == pytest.approx((1.0 / 300) / 0.4, rel=1e-5)
    assert sum("gravity term fell below 0.10" in r.message for r in caplog.records) == 1


def test_v2_scores_divide_by_gravity_before_the_head_selection():
    """32 heads, head_dim 128, a random causal attention over a 35 + 576 + 40 token prompt: the v2 scores are
    the loop reference (rater rows / official gravity, top-14 heads by corrected sum, means); they keep
    another set than the uncorrected scores."""
    torch.manual_seed(0)
    start, n_text = 35, 40
    end, n = start + V, start + V + n_text
    logits = torch.randn(32, n_text, n) * 2  # [H, T, N] rows = the text tokens
    future = torch.arange(n)[None, :] > torch.arange(end, n)[:, None]
    attn = logits.masked_fill(future, float("-inf")).softmax(-1)
    cos, sin = rope(128, torch.arange(n))
    raters = [1, 4, 9, 16, 25, 33, 39]
    method = SparseVLM(192, variant="v2")
    scores = method.scores(attn, torch.tensor(raters), start, end, (cos, sin))
    weights = gravity_matrix([end + t for t in raters], list(range(start, end)), 128, 1e4)
    full = torch.cat([torch.zeros(32, end, n), attn], dim=1)  # [H, N, N]: rows indexed by position
    ref = sparsevlm_scores(full, raters, end, start, end, top_heads=14, weights=weights)
    assert (scores.double() - ref).abs().max().item() < 1e-7
    plain = SparseVLM(192, variant="v2", gravity=False).scores(attn, torch.tensor(raters), start, end, (cos, sin))
    assert (plain.double() - sparsevlm_scores(full, raters, end, start, end, top_heads=14)).abs().max().item() < 1e-7
    assert top_k(scores, 300) != top_k(plain, 300)
    assert not method._guard_reported
