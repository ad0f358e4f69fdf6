"""SparseVLM's arithmetic against plain-loop references: v2's RoPE gravity term, the gravity-weighted scores,
DPC-KNN merging. The reference helpers here are shared with tests/test_sparsevlm.py.
"""

from __future__ import annotations

import functools
import logging
import math

import pytest
import torch
from transformers.models.llama.configuration_llama import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from harness.methods.sparsevlm import SparseVLM, dpc_knn_merge, gravity

V = 576
FLOOR = 0.1  # the default gravity guard


# ------------------------------------------------------------------ references
@functools.cache
def rotate_ones(position: int, hd: int, theta: float) -> tuple[float, ...]:
    """RoPE of an all-ones vector at `position`: pair (d, d + hd/2) turned by position * theta^(-2d/hd), float64."""
    out = [0.0] * hd
    for d in range(hd // 2):
        angle = position * theta ** (-2 * d / hd)
        out[d] = math.cos(angle) - math.sin(angle)  # x_d cos - x_{d+hd/2} sin
        out[d + hd // 2] = math.cos(angle) + math.sin(angle)  # x_{d+hd/2} cos + x_d sin
    return tuple(out)


def reference_gravity(pos_q: int, pos_k: int, hd: int, theta: float, floor: float | None = FLOOR) -> float:
    """The official v2.0 `rope_weights` for one query/key pair: all-ones query and key rotated by RoPE at their
    positions, dot product / sqrt(hd); then the guard: at least `floor` times the value at distance 0 (sqrt(hd))."""
    q, k = rotate_ones(pos_q, hd, theta), rotate_ones(pos_k, hd, theta)
    value = sum(a * b for a, b in zip(q, k)) / math.sqrt(hd)
    return value if floor is None else max(value, floor * math.sqrt(hd))


def gravity_matrix(row_positions: list[int], col_positions: list[int], hd: int, theta: float) -> torch.Tensor:
    """reference_gravity (guarded) for every (row, column) pair, `[R, C]` float64."""
    return torch.tensor([[reference_gravity(p, q, hd, theta) for q in col_positions] for p in row_positions],
                        dtype=torch.float64)


def reference_scores(attn: torch.Tensor, raters: list[int], text_start: int, start: int, end: int,
                     top_heads: int | None = None, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over (the top_heads highest rater->image) heads and over raters of A[text_start + t, start:end],
    each divided by `weights[rater, column]` first if given (v2's gravity)."""
    if weights is not None:
        attn = attn.double().clone()
        for a, t in enumerate(raters):
            attn[:, text_start + t, start:end] /= weights[a]
    heads = list(range(attn.shape[0]))
    if top_heads is not None and top_heads < len(heads):
        total = [sum(float(attn[h, text_start + t, start:end].sum()) for t in raters) for h in heads]
        heads = sorted(heads, key=lambda h: (-total[h], h))[:top_heads]
    scores = torch.zeros(end - start, dtype=torch.float64)
    for h in heads:
        for t in raters:
            scores += attn[h, text_start + t, start:end].double()
    return scores / (len(heads) * len(raters))


def top_k(scores: torch.Tensor, k: int) -> list[int]:
    values = scores.tolist()
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    return sorted(order[:k])


def reference_dpc(x: torch.Tensor, num_clusters: int, k: int | None = None) -> torch.Tensor:
    """DPC-KNN with loops (float64): density from the k nearest (self included), ties -> lower index is denser."""
    x = x.double()
    n, d = x.shape
    k = min(num_clusters if k is None else k, n)
    dist = (((x[:, None] - x[None]) ** 2).sum(-1).sqrt() / math.sqrt(d)).tolist()  # [n][n]
    density = [math.exp(-sum(v * v for v in sorted(row)[:k]) / k) for row in dist]
    largest = max(max(row) for row in dist)
    delta = []
    for i in range(n):
        denser = [dist[i][j] for j in range(n) if density[j] > density[i] or (density[j] == density[i] and j < i)]
        delta.append(min(denser) if denser else largest)
    centers = sorted(range(n), key=lambda i: (-delta[i] * density[i], i))[:num_clusters]
    members = [[] for _ in centers]
    for i in range(n):
        cluster = centers.index(i) if i in centers else min(range(num_clusters), key=lambda a: (dist[centers[a]][i], a))
        members[cluster].append(i)
    return torch.stack([x[m].mean(0) for m in members])



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
    ref = reference_scores(full, raters, end, start, end, top_heads=14, weights=weights)
    assert (scores.double() - ref).abs().max().item() < 1e-7
    plain = SparseVLM(192, variant="v2", gravity=False).scores(attn, torch.tensor(raters), start, end, (cos, sin))
    assert (plain.double() - reference_scores(full, raters, end, start, end, top_heads=14)).abs().max().item() < 1e-7
    assert top_k(scores, 300) != top_k(plain, 300)
    assert not method._guard_reported
