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
"""

from __future__ import annotations

import torch

from harness.budget import check_budget, scaled_schedule
from harness.methods.base import Selection, Stage, StageContext, check_choice, top_k_in_order

# Published counts (paper accounting) for LLaVA-1.5-7B, stages after layers 2 / 6 / 15.
STAGE_LAYERS = [2, 6, 15]
PUBLISHED = {
    "v1.5": {192: [300, 200, 110], 128: [303, 110, 36], 64: [66, 30, 17]},  # v1.5 branch, score.py
    "v2": {192: [300, 200, 118], 128: [238, 108, 60], 96: [246, 54, 28], 64: [66, 34, 20]},  # v2.0, USE_VERSION=2_0
}
DEFAULT_POSITIONS = {"v1.5": "compact", "v2": "original"}


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

    Differences from the official code (METHODS.md, "SparseVLM"; everything else follows it):
    - rater relevance is computed in fp32 (the official code: the model dtype); no scaling, as there;
      if no text token is above the mean (e.g. a single text token) all text tokens rate, where the
      official code would average over an empty set;
    - top-k ties go to the lower index (torch.topk leaves them unspecified); DPC-KNN breaks density
      ties by index instead of random noise and merges by the plain mean (see `dpc_knn_merge`);
    - a stage whose count reaches the current number of image tokens prunes nothing (budget 576 is
      vanilla); otherwise, as in the official code, at most current - 1 tokens are kept;
    - v2: the "gravity" correction (dividing the attention by a RoPE term that can approach zero) is
      left out; the scores average the `top_heads` heads with the highest rater->image attention
      (all heads if the model has fewer); no recycling; original positions by default.
    Decode positions follow HF (the global next position), see METHODS.md, "Positions".

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
    """

    name = "sparsevlm"
    query_rows = "text"

    def __init__(self, budget: int, variant: str = "v1.5", schedule: str = "matched", positions: str | None = None,
                 layers: list[int] | None = None, recycle_ratio: float = 0.3, cluster_size: int = 10,
                 knn_k: int | None = None, top_heads: int = 14):
        self.budget = budget
        self.variant = check_choice("method.variant", variant, tuple(PUBLISHED))
        self.schedule_kind = check_choice("method.schedule", schedule, ("matched", "paper"))
        positions = DEFAULT_POSITIONS[variant] if positions is None else positions
        self.positions = check_choice("method.positions", positions, ("original", "compact"))
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
        self.num_image_tokens: int | None = None
        self._raters: tuple[torch.Tensor, torch.Tensor] | None = None  # (input embeddings they came from, raters)

    # ---------------------------------------------------------------- schedule
    def merged_count(self, current: int, keep: int) -> int:
        """Merged tokens a stage adds when it keeps `keep` of `current` image tokens (0 for v2)."""
        if not self.recycle or keep >= current:
            return 0
        return recycled_clusters(current - keep, self.recycle_ratio, self.cluster_size)

    def schedule(self, num_layers: int, num_image_tokens: int) -> list[Stage]:
        budget = check_budget(self.budget, num_image_tokens)
        self.num_image_tokens = num_image_tokens
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
            return stages
        if budget == num_image_tokens:  # nothing pruned (scaling alone could swap one token for a merged copy)
            return [Stage(layer, num_image_tokens) for layer in self.layers]
        ratios = published[min(published, key=lambda b: (abs(b - budget), -b))]  # nearest published entry
        return scaled_schedule(self.name, budget, self.layers, ratios, num_layers, num_image_tokens,
                               merged=self.merged_count)

    # ---------------------------------------------------------------- selection
    def raters(self, input_embeds: torch.Tensor, image_start: int) -> torch.Tensor:
        """Indices (into the text tokens after the image block) of the raters, from the input embeddings.

        Args:
            input_embeds: `[N0, d]` the language model's input (full prompt, all V image tokens).
            image_start: first image position; the image block is `[image_start, image_start + V)`.
        """
        text_start = image_start + self.num_image_tokens
        image = input_embeds[image_start:text_start].float()  # [V, d]
        text = input_embeds[text_start:].float()  # [T, d]
        relevance = (image @ text.T).softmax(-1).mean(0)  # [V, T] -> softmax over T -> mean over V: [T]
        raters = (relevance > relevance.mean()).nonzero().flatten()
        return raters if raters.numel() else torch.arange(text.shape[0], device=text.device)

    def scores(self, attn: torch.Tensor, raters: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """Score of each current image token: rater rows, image columns, mean over (selected) heads and raters.

        Args:
            attn: `[H, R, N]` softmax attention of the text rows (row 0 = first token after the image block).
        """
        rater_to_image = attn[:, raters, start:end]  # [H, raters, V']
        if self.variant == "v2" and self.top_heads < attn.shape[0]:
            per_head = rater_to_image.sum((1, 2))  # [H] total rater->image attention
            heads = torch.sort(per_head, descending=True, stable=True).indices[: self.top_heads]
            rater_to_image = rater_to_image[heads]
        return rater_to_image.mean(0).mean(0)  # [V']

    def select(self, ctx: StageContext) -> Selection:
        start, end = ctx.image_span
        n_current = end - start
        n_text = ctx.attn.shape[1]
        if self.num_image_tokens is None or ctx.input_embeds.shape[0] - start - self.num_image_tokens != n_text:
            raise RuntimeError("sparsevlm: the input embeddings do not hold the original image block + the text rows")
        if self._raters is None or self._raters[0] is not ctx.input_embeds:  # once per sample
            self._raters = (ctx.input_embeds, self.raters(ctx.input_embeds, start))
        scores = self.scores(ctx.attn, self._raters[1], start, end)  # [V']
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
