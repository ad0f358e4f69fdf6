"""DART: keep the image tokens least similar to a few pivot tokens, so duplicates of the pivots are dropped.

Wen et al., "Stop Looking for Important Tokens in Multimodal Language Models: Duplication Matters More",
arXiv 2502.11494 (code: ZichenWen1/DART, `llava/model/language_model/modeling_llama_self.py`,
`DART.get_retained_image_token`; the same math in ModelTC/LightCompress `token_reduction/dart.py`).

One stage after layer K-1 (default K = 2); the kept set enters layer K with its original RoPE positions
(`position_ids = keep_indexs`). From layer K-1, with V the image block and T the tokens after it:

1. Pivots: the `pivot_image` image tokens and the `pivot_text` text tokens with the largest L1 norm of their
   layer-(K-1) keys after RoPE, all heads concatenated (`‖k_t‖_1`).
2. Hidden states `h = norm(x)`: the layer-(K-1) output through the model's final RMSNorm.
3. The pivots are visited in the official code's order, `list(set(pivot positions))` (CPython's set order of
   their sequence positions). Each pivot p takes the `q` not yet taken, non-pivot image tokens with the
   *lowest* cosine similarity `cos(h_p, h_v)`; `q = max_num_trunction // (pivot_image + pivot_text)`.
4. Kept: the image pivots + every taken token, in original order; text pivots are not image tokens and stay
   anyway. The official count is `pivot_image + q * (pivot_image + pivot_text)`.

Schedules:
- `paper`: the published setting for a label B (192 / 128 / 64 in the paper): K = 2, 4 + 4 pivots,
  `max_num_trunction = B` (`scripts/v1_5/eval/*.sh <ratio> <B>`), so 196 / 132 / 68 image tokens enter layers
  2..31, realizing 219.8 / 159.8 / 99.8 on LLaVA-1.5-7B;
- `matched` (default): FastV's count for the same stage, `k = round((L B - K V) / (L - K))` (166 / 98 / 30),
  so the realized budget is B (+-1); the k - pivot_image taken tokens are split over the pivots as evenly as
  possible (the first `r` pivots in visiting order take one more when P does not divide them).

Differences from the official code:
- the quota split above when P does not divide k - pivot_image (the official code can only keep
  `pivot_image + P q` tokens, a multiple of 8 plus 4 with the default pivots);
- ties in the lowest similarity (and in the pivots' norms) go to the lower index (torch.topk leaves them
  unspecified); candidates are scanned in original order, as the official `list(set(range(...)))` is;
- the image span comes from the token ids (the official scripts pass `image_token_start_index 35`);
- fewer text tokens than `pivot_text` (or a budget below `pivot_image` kept tokens) uses them all (the official
  code raises in `topk`); a stage keeping every image token prunes nothing (budget 576 is vanilla);
- keys are taken before GQA expansion (the L1 norm of the repeated keys is `groups x` this: same ranking).
Decode positions follow HF (the global next position), as in the official code.
"""

from __future__ import annotations

import torch

from harness.budget import check_budget
from harness.methods.base import Selection, StageContext, check_choice
from harness.methods.fastv import fastv_keep
from harness.schedule import Schedule, Stage

PAPER_PIVOTS = (4, 4)  # --pivot_image_token 4 --pivot_text_token 4 in every official LLaVA-1.5 script


def top_in_order_of_score(scores: torch.Tensor, k: int, largest: bool = True) -> torch.Tensor:
    """Indices of the k largest (or smallest) scores, best first; ties -> lower index."""
    order = torch.sort(scores, descending=largest, stable=True).indices
    return order[:k]


class DART:
    """DART (arXiv 2502.11494): pivot tokens by key L1 norm, keep the tokens least similar to the pivots.

    Args:
        budget: average retained image tokens over all layers (`schedule=paper`: the paper's label B).
        schedule: "matched" (realized budget = B +-1) or "paper" (`max_num_trunction = B`: B + pivot_image kept).
        K: the first layer that sees the kept set (scores come from layer K-1); 2 in the official scripts.
        pivot_image: image pivots; pivot_text: text pivots (4 and 4 in the official scripts).
        positions: "original" (the official code keeps the kept tokens' positions) or "compact".
    """

    name = "dart"
    paper_accounting = "label"  # the paper counts max_num_trunction = B
    query_rows = None  # no attention rows: keys and hidden states only
    needs_keys = True

    def __init__(self, budget: int, schedule: str = "matched", K: int = 2, pivot_image: int = PAPER_PIVOTS[0],
                 pivot_text: int = PAPER_PIVOTS[1], positions: str = "original"):
        self.budget = budget
        self.schedule_kind = check_choice("method.schedule", schedule, ("matched", "paper"))
        self.positions = check_choice("method.positions", positions, ("original", "compact"))
        self.K = int(K)
        if pivot_image < 1 or pivot_text < 0:
            raise ValueError(f"method.pivot_image={pivot_image}, method.pivot_text={pivot_text} are not allowed "
                             "(allowed: pivot_image >= 1, pivot_text >= 0)")
        self.pivot_image, self.pivot_text = int(pivot_image), int(pivot_text)

    def schedule(self, num_layers: int, num_image_tokens: int) -> Schedule:
        budget = check_budget(self.budget, num_image_tokens)
        pivots = self.pivot_image + self.pivot_text
        if self.schedule_kind == "paper":
            keep = self.pivot_image + pivots * (budget // pivots)
            if keep > num_image_tokens:
                raise ValueError(f"budget={budget} with schedule=paper keeps {keep} image tokens, more than the "
                                 f"{num_image_tokens} of this model (allowed: 1..{num_image_tokens - self.pivot_image})")
        else:
            keep = fastv_keep(budget, num_layers, num_image_tokens, self.K, self.name)
            if keep < self.pivot_image:
                lowest = -(-(self.K * num_image_tokens + (num_layers - self.K) * self.pivot_image) // num_layers)
                raise ValueError(
                    f"budget={budget} is unreachable for {self.name} with K={self.K} and {self.pivot_image} image "
                    f"pivots: it keeps {keep} tokens after layer {self.K - 1} (allowed: {lowest}..{num_image_tokens})"
                )
        return Schedule([Stage(self.K - 1, keep)], budget)

    def select(self, ctx: StageContext) -> Selection:
        start, end = ctx.image_span
        n_image, keep = end - start, ctx.stage.keep
        if keep >= n_image:
            return Selection(keep=torch.arange(n_image, device=ctx.hidden.device))
        key_norm = ctx.keys.float().abs().sum(dim=(0, 2))  # [H_kv, N, D] -> [N]: L1 over heads and dims
        n_image_pivots = min(self.pivot_image, keep)
        image_pivots = top_in_order_of_score(key_norm[start:end], n_image_pivots)  # [Pi] image indices
        text_pivots = top_in_order_of_score(key_norm[end:], min(self.pivot_text, key_norm.shape[0] - end))  # [Pt]
        # The official visiting order: a Python set of the pivots' sequence positions, listed.
        visit = list(set((image_pivots + start).tolist() + (text_pivots + end).tolist()))

        hidden = ctx.final_norm(ctx.hidden).float()  # [N, d] normed as before the LM head
        unit = hidden / hidden.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        similarity = unit[visit] @ unit[start:end].T  # [P, V]: cosine of each pivot with each image token
        available = torch.ones(n_image, dtype=torch.bool, device=similarity.device)
        available[image_pivots] = False
        base, extra = divmod(keep - n_image_pivots, len(visit))
        taken = [image_pivots]
        for i in range(len(visit)):
            quota = base + (1 if i < extra else 0)
            row = similarity[i].masked_fill(~available, float("inf"))  # [V], taken tokens and image pivots last
            picked = top_in_order_of_score(row, quota, largest=False)  # least similar first
            available[picked] = False
            taken.append(picked)
        return Selection(keep=torch.sort(torch.cat(taken)).values)
