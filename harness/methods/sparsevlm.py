"""SparseVLM: text raters score the image tokens; pruned tokens are partly recycled into merged ones.

Zhang et al., "SparseVLM: Visual Token Sparsification for Efficient Vision-Language Model Inference",
ICML 2025; code: Gumpest/SparseVLMs (branch v1.5 for the default variant, v2.0 for `variant=v2`).

    relevance(t) = mean_v softmax_t(v . t)         input embeddings, v in the image block, t in the text
    raters       = {t : relevance(t) > mean relevance}
    score(v)     = mean_{raters} mean_heads A[t, v]   at a stage layer (its own softmax attention)

Stages after layers 2 / 6 / 15. v1.5 recycles part of the pruned tokens after each stage: the top
`int(0.3 * n_pruned) + 1` by score are clustered on their hidden states (DPC-KNN, `int(n / 10) + 1`
clusters), each cluster is averaged into one token, and the merged tokens are inserted right after the
kept image tokens (compact positions). Merged tokens are image tokens from then on: later stages score,
keep, prune and recycle them like the others, as the official code does.

v2 ("SparseVLM+", branch v2.0) divides the stage attention by a "gravity" term before it selects heads
and scores: the attention that an all-ones query and key would have after RoPE,

    gravity(i, j) = R(p_i) 1 . R(p_j) 1 / sqrt(hd) = 2 sum_f cos((p_i - p_j) theta_f) / sqrt(hd)

(`rope_weights` in the official `modelling_sparse_llama.py`), which undoes RoPE's pull toward nearby
tokens. It depends on the distance only: for LLaVA-1.5-7B (hd = 128, theta = 1e4) it lies in 1.19..11.31
for every distance 0..699. For small head dims (or long prompts) it crosses zero (hd = 32: at distance
474; hd = 16: at 91), where dividing by it flips or explodes the scores; see `gravity`.

Decoding: the v1.5 code runs every layer through its FlashAttention-2 path, which gives a generated
token each layer's own cache length as its position (`decode_positions=per_layer`); the v2.0 code runs
SDPA and removes that override, so the token takes the global next position (`global`).
"""

from __future__ import annotations

import logging

import torch

from harness.budget import check_budget
from harness.methods.base import (
    DECODE_POSITIONS,
    Selection,
    StageContext,
    check_choice,
    top_k_in_order,
)
from harness.schedule import Schedule, Stage, scaled_schedule

# Published counts (paper accounting) for LLaVA-1.5-7B, stages after layers 2 / 6 / 15.
STAGE_LAYERS = [2, 6, 15]
PUBLISHED = {
    "v1.5": {192: [300, 200, 110], 128: [303, 110, 36], 64: [66, 30, 17]},  # v1.5 branch, score.py
    "v2": {192: [300, 200, 118], 128: [238, 108, 60], 96: [246, 54, 28], 64: [66, 34, 20]},  # v2.0, USE_VERSION=2_0
}
DEFAULT_POSITIONS = {"v1.5": "compact", "v2": "original"}
DEFAULT_DECODE_POSITIONS = {"v1.5": "per_layer", "v2": "global"}

log = logging.getLogger(__name__)


def gravity(cos: torch.Tensor, sin: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """v2's gravity term between query rows and key columns, from the RoPE the stage layer applied.

    RoPE of an all-ones vector is `cos + rotate_half(1) * sin` (rotate_half(1) = -1 on the first half,
    +1 on the second); the term is the dot product of two such vectors over sqrt(hd), computed in fp32
    from the layer's own cos/sin (the official code: in the model dtype).

    Guard (applied by the caller, `SparseVLM.scores`): the term is clamped from below at `gravity_floor`
    (default 0.1) times its distance-0 value, its maximum, so it never reaches zero or turns negative
    and no score is boosted more than 10x relative to distance 0. For LLaVA-1.5-7B that floor is 1.13
    and the term stays above it up to distance 720 (>= 1.19 up to 699): on its prompts the guard does
    not bind and the correction is exactly the official one. It binds on models with small head dims
    (the embedded model, hd = 32: from distance 267), and a warning says so once per run.

    Args:
        cos, sin: `[N, hd]` the stage layer's RoPE for the current sequence.
        rows, cols: `[R]` query and `[C]` key indices into the current sequence.

    Returns:
        `[R, C]` the term, and its distance-0 value (a scalar tensor).
    """
    hd = cos.shape[-1]
    sign = torch.ones(hd, device=cos.device)
    sign[: hd // 2] = -1.0
    ones_rotated = cos.float() + sign * sin.float()  # [N, hd]: R(p) applied to an all-ones vector
    term = ones_rotated[rows] @ ones_rotated[cols].T / hd**0.5  # [R, C]
    at_zero = ones_rotated[0].square().sum() / hd**0.5  # distance 0: sqrt(hd) for plain RoPE
    return term, at_zero


def recycled_clusters(n_pruned: int, recycle_ratio: float = 0.3, cluster_size: int = 10) -> int:
    """Merged tokens a stage adds when it prunes `n_pruned` tokens (v1.5): `int((int(0.3 n) + 1) / 10) + 1`.

    The top `int(recycle_ratio * n_pruned) + 1` pruned tokens (at most all of them) are clustered into
    `int(n_recycled / cluster_size) + 1` clusters; nothing is merged when nothing is pruned.
    """
    if n_pruned <= 0:
        return 0
    n_recycled = min(n_pruned, int(n_pruned * recycle_ratio) + 1)
    return min(n_recycled, int(n_recycled / cluster_size) + 1)


def dpc_knn_merge(x: torch.Tensor, num_clusters: int, k: int | None = None) -> torch.Tensor:
    """Density-peak clustering with k nearest neighbours (DPC-KNN), then the plain mean of each cluster.

    As `cluster_and_merge` in the official code: distances `||x_i - x_j|| / sqrt(d)`; density
    `rho_i = exp(-mean of the squared distances to the k nearest points, i itself included)`;
    `delta_i` = distance to the nearest point of higher density (for the densest point: the largest
    distance of all); centers = the `num_clusters` highest `rho * delta`, in that order; every point
    joins its nearest center (a center joins itself). Differences: density ties are broken by index
    (the lower index counts as denser) instead of adding 1e-6 random noise, and clusters are plain
    means (the official divides by the cluster size + 1e-6); computed in fp32.

    Args:
        x: `[n, d]` points (hidden states of the recycled tokens, in their order).
        num_clusters: clusters to return (1..n).
        k: neighbours for the density, `min(k, n)`; None = `num_clusters`, as in the official code.

    Returns:
        `[num_clusters, d]` cluster means (fp32), ordered by decreasing center score `rho * delta`.
    """
    n, d = x.shape
    if not 1 <= num_clusters <= n:
        raise ValueError(f"num_clusters={num_clusters} must be within 1..{n}")
    k = min(num_clusters if k is None else k, n)
    x = x.float()
    dist = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist") / d**0.5  # [n, n], exact zeros on the diagonal
    nearest = torch.topk(dist, k, dim=-1, largest=False).values  # [n, k]
    density = (-(nearest**2).mean(-1)).exp()  # [n]
    index = torch.arange(n, device=x.device)
    # denser[i, j]: j is denser than i (equal densities: the lower index is denser)
    denser = (density[None, :] > density[:, None]) | (
        (density[None, :] == density[:, None]) & (index[None, :] < index[:, None])
    )
    delta = torch.where(denser, dist, dist.max()).min(-1).values  # [n]; the densest point gets the largest distance
    score = delta * density
    centers = torch.sort(score, descending=True, stable=True).indices[:num_clusters]  # ties -> lower index
    assign = dist[centers].argmin(0)  # [n]: nearest center (first in center order on ties)
    assign[centers] = torch.arange(num_clusters, device=x.device)  # a center joins its own cluster
    sums = torch.zeros(num_clusters, d, dtype=x.dtype, device=x.device).index_add_(0, assign, x)
    sizes = torch.bincount(assign, minlength=num_clusters).to(x.dtype)  # >= 1: each holds its center
    return sums / sizes[:, None]


class SparseVLM:
    """SparseVLM (ICML 2025): rater-text attention scores at layers 2/6/15, v1.5 recycling or v2.

    Differences from the official code (docs/methods.md, "SparseVLM"; everything else follows it):
    - rater relevance is computed in fp32 (the official code: the model dtype); no scaling, as there;
      if no text token is above the mean (e.g. a single text token) all text tokens rate, where the
      official code would average over an empty set;
    - top-k ties go to the lower index (torch.topk leaves them unspecified); DPC-KNN breaks density
      ties by index instead of random noise and merges by the plain mean (see `dpc_knn_merge`);
    - a stage whose count reaches the current number of image tokens prunes nothing (budget 576 is
      vanilla); otherwise, as in the official code, at most current - 1 tokens are kept;
    - v2: the rater rows' attention is divided by the gravity term (fp32, guarded; see `gravity`), then
      the scores average the `top_heads` heads with the highest corrected rater->image attention (all
      heads if the model has fewer); no recycling; original positions by default. The official code
      divides the whole `[H, N, N]` attention; only the rater rows x image columns reach the scores.

    Args:
        budget: average retained image tokens over all layers (merged tokens included).
        variant: "v1.5" (recycling, compact positions) or "v2" (no recycling, head selection, original positions).
        schedule: "matched" (published layers and ratios, scaled so the realized budget is `budget`) or
            "paper" (the published counts exactly; their realized budget is higher than the label).
        positions: "compact", "original", or None for the variant's default (v1.5: compact, v2: original).
            v1.5 needs compact: merged tokens have no original position.
        layers: stage layers (default 2, 6, 15 for 32-layer LLaVA-1.5-7B).
        recycle_ratio: v1.5: the top `int(recycle_ratio * n_pruned) + 1` pruned tokens are recycled.
        cluster_size: v1.5: `int(n_recycled / cluster_size) + 1` clusters.
        knn_k: v1.5: neighbours of the DPC-KNN density; None = the number of clusters (official code).
        top_heads: v2: heads averaged for the scores (14 in the official code).
        decode_positions: "per_layer" (a generated token's position at each layer is that layer's cache
            length), "global" (HF's next position), or None for the variant's default (v1.5: per_layer,
            v2: global), as each official branch decodes.
        gravity: v2: divide the stage attention by the gravity term (the official v2.0 code does).
        gravity_floor: v2: the guard, a fraction of the term's distance-0 value in (0, 1); see `gravity`.
    """

    name = "sparsevlm"
    paper_accounting = "stage_layer_reduced"  # the official code counts a stage layer with the reduced count
    query_rows = "text"

    def __init__(self, budget: int, variant: str = "v1.5", schedule: str = "matched", positions: str | None = None,
                 layers: list[int] | None = None, recycle_ratio: float = 0.3, cluster_size: int = 10,
                 knn_k: int | None = None, top_heads: int = 14, decode_positions: str | None = None,
                 gravity: bool = True, gravity_floor: float = 0.1):
        self.budget = budget
        self.variant = check_choice("method.variant", variant, tuple(PUBLISHED))
        self.schedule_kind = check_choice("method.schedule", schedule, ("matched", "paper"))
        positions = DEFAULT_POSITIONS[variant] if positions is None else positions
        self.positions = check_choice("method.positions", positions, ("original", "compact"))
        decode_positions = DEFAULT_DECODE_POSITIONS[variant] if decode_positions is None else decode_positions
        self.decode_positions = check_choice("method.decode_positions", decode_positions, DECODE_POSITIONS)
        if not isinstance(gravity, bool):
            raise ValueError(f"method.gravity={gravity!r} is not allowed (allowed: true, false)")
        if isinstance(gravity_floor, bool) or not isinstance(gravity_floor, (int, float)) or not 0 < gravity_floor < 1:
            raise ValueError(f"method.gravity_floor={gravity_floor} is not allowed (allowed: 0 < gravity_floor < 1)")
        self.use_gravity = gravity and variant == "v2"
        self.gravity_floor = float(gravity_floor)
        self._guard_reported = False
        self.recycle = variant == "v1.5"
        if self.recycle and self.positions != "compact":
            raise ValueError(
                f"method.positions={positions!r} is not allowed with variant=v1.5: its merged tokens have no original "
                "position (allowed: compact; or variant=v2)"
            )
        self.layers = list(layers) if layers is not None else STAGE_LAYERS
        if len(self.layers) != len(STAGE_LAYERS):
            raise ValueError(f"method.layers={self.layers} must name {len(STAGE_LAYERS)} stage layers (one per published count)")
        if not 0 <= recycle_ratio <= 1:
            raise ValueError(f"method.recycle_ratio={recycle_ratio} is not allowed (allowed: 0..1)")
        if int(cluster_size) < 1 or (knn_k is not None and int(knn_k) < 1) or int(top_heads) < 1:
            raise ValueError(f"method.cluster_size={cluster_size}, knn_k={knn_k}, top_heads={top_heads} must be >= 1")
        self.recycle_ratio = float(recycle_ratio)
        self.cluster_size = int(cluster_size)
        self.knn_k = None if knn_k is None else int(knn_k)
        self.top_heads = int(top_heads)
        self._raters: tuple[torch.Tensor, torch.Tensor] | None = None  # (input embeddings they came from, raters)

    # ---------------------------------------------------------------- schedule
    def merged_count(self, current: int, keep: int) -> int:
        """Merged tokens a stage adds when it keeps `keep` of `current` image tokens (0 for v2)."""
        if not self.recycle or keep >= current:
            return 0
        return recycled_clusters(current - keep, self.recycle_ratio, self.cluster_size)

    def schedule(self, num_layers: int, num_image_tokens: int) -> Schedule:
        budget = check_budget(self.budget, num_image_tokens)
        published = PUBLISHED[self.variant]
        if self.schedule_kind == "paper":
            if budget not in published:
                raise ValueError(
                    f"budget={budget} has no published SparseVLM {self.variant} schedule (allowed: {sorted(published)})"
                )
            stages, current = [], num_image_tokens
            for layer, count in zip(self.layers, published[budget]):
                keep = min(count, current - 1)  # the official code keeps at most current - 1
                stages.append(Stage(layer, keep, self.merged_count(current, keep)))
                current = stages[-1].count
            return Schedule(stages, budget)
        if budget == num_image_tokens:  # nothing pruned (scaling alone could swap one token for a merged copy)
            return Schedule([Stage(layer, num_image_tokens) for layer in self.layers], budget)
        ratios = published[min(published, key=lambda b: (abs(b - budget), -b))]  # nearest published entry
        stages = scaled_schedule(self.name, budget, self.layers, ratios, num_layers, num_image_tokens,
                                 merged=self.merged_count)
        return Schedule(stages, budget)

    # ---------------------------------------------------------------- selection
    def raters(self, input_embeds: torch.Tensor, image_start: int, n_text: int) -> torch.Tensor:
        """Indices (into the text tokens after the image block) of the raters, from the input embeddings.

        Args:
            input_embeds: `[N0, d]` the language model's input (full prompt, all V image tokens).
            image_start: first image position; n_text: tokens after the image block (its last `n_text` rows).
        """
        text_start = input_embeds.shape[0] - n_text
        image = input_embeds[image_start:text_start].float()  # [V, d]
        text = input_embeds[text_start:].float()  # [T, d]
        relevance = (image @ text.T).softmax(-1).mean(0)  # [V, T] -> softmax over T -> mean over V: [T]
        raters = (relevance > relevance.mean()).nonzero().flatten()
        return raters if raters.numel() else torch.arange(text.shape[0], device=text.device)

    def scores(self, attn: torch.Tensor, raters: torch.Tensor, start: int, end: int,
               rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Score of each current image token: rater rows, image columns, mean over (selected) heads and raters.

        Args:
            attn: `[H, R, N]` softmax attention of the text rows (row 0 = first token after the image block).
            rope: `(cos, sin)` `[N, hd]` of the stage layer; needed by v2's gravity correction.
        """
        rater_to_image = attn[:, raters, start:end]  # [H, raters, V']
        if self.use_gravity:
            if rope is None:
                raise RuntimeError("sparsevlm v2: the gravity correction needs the stage layer's RoPE (cos, sin)")
            cols = torch.arange(start, end, device=attn.device)
            term, at_zero = gravity(*rope, end + raters, cols)  # [raters, V']
            limit = self.gravity_floor * at_zero
            if not self._guard_reported and bool((term < limit).any()):
                log.warning("sparsevlm v2: the gravity term fell below %.2f x its distance-0 value (head dim %d, "
                            "min %.3f); clamped there", self.gravity_floor, rope[0].shape[-1], float(term.min()))
                self._guard_reported = True
            rater_to_image = rater_to_image / term.clamp_min(limit)  # [H, raters, V'] corrected
        if self.variant == "v2" and self.top_heads < attn.shape[0]:
            per_head = rater_to_image.sum((1, 2))  # [H] total rater->image attention
            heads = torch.sort(per_head, descending=True, stable=True).indices[: self.top_heads]
            rater_to_image = rater_to_image[heads]
        return rater_to_image.mean(0).mean(0)  # [V']

    def select(self, ctx: StageContext) -> Selection:
        start, end = ctx.image_span
        n_current = end - start
        n_text = ctx.attn.shape[1]
        if ctx.input_embeds.shape[0] - start - n_text < n_current:
            raise RuntimeError("sparsevlm: the input embeddings do not hold the original image block + the text rows")
        if self._raters is None or self._raters[0] is not ctx.input_embeds:  # once per sample
            self._raters = (ctx.input_embeds, self.raters(ctx.input_embeds, start, n_text))
        scores = self.scores(ctx.attn, self._raters[1], start, end, ctx.rope)  # [V']
        keep_count = min(ctx.stage.keep, n_current)
        keep = top_k_in_order(scores, keep_count)
        if not self.recycle or keep_count == n_current:
            return Selection(keep=keep)
        # v1.5 recycling: the best-scored pruned tokens, clustered on the stage layer's output.
        is_pruned = torch.ones(n_current, dtype=torch.bool, device=scores.device)
        is_pruned[keep] = False
        pruned = is_pruned.nonzero().flatten()  # [P] ascending
        n_recycled = min(pruned.numel(), int(pruned.numel() * self.recycle_ratio) + 1)
        order = torch.sort(scores[pruned], descending=True, stable=True).indices[:n_recycled]  # as topk: best first
        recycled = ctx.hidden[start + pruned[order]]  # [n_recycled, d] post-layer hidden states
        num_clusters = recycled_clusters(pruned.numel(), self.recycle_ratio, self.cluster_size)
        return Selection(keep=keep, merged=dpc_knn_merge(recycled, num_clusters, self.knn_k))
