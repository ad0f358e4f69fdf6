"""DivPrune: keep the most diverse image tokens, chosen greedily by max-min cosine distance, before the LLM.

Alvar et al., "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models", CVPR 2025 (code:
vbdi/divprune, `LLaVA/llava/model/llava_arch.py`, `DivPrune` and `prepare_inputs_labels_for_multimodal`).
Pre-LLM: every decoder layer sees the same B image tokens.

On the projected image features `x_1..x_V` (what fills the image block), with the cosine distance
`D[i, j] = 1 - cos(x_i, x_j)`:

1. the first token is the one farthest from its nearest neighbour: `argmax_j` of the second-smallest value of
   column j of D (the smallest is its distance to itself, 0);
2. each next token maximises the distance to the selected set: `argmax_j min_{s in S} D[s, j]`;
3. after B picks the kept tokens are spliced back in original order at contiguous positions (the official code
   gathers `inputs_embeds` and lets the LLM number the shorter sequence 0..N'-1, as the engine does).

`argmax` ties go to the lower index (as `torch.argmax`). The running minimum over the selected rows is the
official `min(D[S], dim=0)` computed incrementally: the same values, O(B V) instead of O(B^2 V).

Published setting: `SUBSET_RATIO=0.098` for LLaVA-1.5 (`run_Divprune.sh`): `int(round(0.098 * 576))` = 56
tokens, `schedule: paper`; later papers compare it at 192 / 128 / 64 tokens, which `schedule: matched` (the
default: B tokens) gives.

Differences from the official code:
- D is computed in fp32 (the official code: the model dtype, fp16 on GPU);
- a token already selected is never picked again: the official argmax can return a selected token (distance 0
  to itself) once every remaining token duplicates a selected one exactly, and then feeds it to the LLM twice;
- at B = V every token is kept in original order (nothing is pruned), which equals vanilla.
"""

from __future__ import annotations

import torch

from harness.budget import check_budget
from harness.methods.base import PreLLMContext, Selection, check_choice
from harness.schedule import Schedule

PAPER_RATIO = 0.098  # run_Divprune.sh: SUBSET_RATIO=0.098 -> 56 of 576 tokens


def cosine_distance(features: torch.Tensor) -> torch.Tensor:
    """`1 - cos(x_i, x_j)` for the rows of `features` `[V, d]` -> `[V, V]` (fp32)."""
    unit = features.float() / features.float().norm(dim=-1, keepdim=True)
    return 1.0 - unit @ unit.T


def max_min_select(distance: torch.Tensor, k: int) -> torch.Tensor:
    """DivPrune's greedy max-min selection: `[k]` indices in pick order.

    Args:
        distance: `[V, V]` symmetric distances with zeros on the diagonal.
        k: picks (1 <= k <= V).
    """
    n = distance.shape[0]
    chosen = torch.empty(k, dtype=torch.long, device=distance.device)
    # First pick: the largest nearest-neighbour distance (second-smallest of each column; the smallest is itself).
    nearest = torch.topk(distance, min(2, n), dim=0, largest=False).values[-1]  # [V]
    chosen[0] = torch.argmax(nearest)
    to_selected = distance[chosen[0]].clone()  # [V]: min distance of each token to the selected set
    taken = torch.zeros(n, dtype=torch.bool, device=distance.device)
    taken[chosen[0]] = True
    for i in range(1, k):
        chosen[i] = torch.argmax(to_selected.masked_fill(taken, float("-inf")))
        taken[chosen[i]] = True
        to_selected = torch.minimum(to_selected, distance[chosen[i]])
    return chosen


class DivPrune:
    """DivPrune (CVPR 2025): greedy max-min cosine diversity over the projected image features, before the LLM.

    Args:
        budget: image tokens the language model sees (all layers).
        schedule: "matched" (keep `budget` tokens) or "paper" (the published ratio: `round(ratio * V)` tokens;
            `budget` must equal that count, 56 on LLaVA-1.5).
        ratio: the kept share for `schedule=paper` (0.098 in the official script).
    """

    name = "divprune"
    pre_llm = True
    needs_vision_attention = False

    def __init__(self, budget: int, schedule: str = "matched", ratio: float = PAPER_RATIO):
        self.budget = budget
        self.schedule_kind = check_choice("method.schedule", schedule, ("matched", "paper"))
        if not 0.0 < float(ratio) <= 1.0:
            raise ValueError(f"method.ratio={ratio!r} is not allowed (allowed: 0 < ratio <= 1)")
        self.ratio = float(ratio)

    def schedule(self, num_layers: int, num_image_tokens: int) -> Schedule:
        budget = check_budget(self.budget, num_image_tokens)
        if self.schedule_kind == "paper":
            count = round(self.ratio * num_image_tokens)
            if budget != count:
                raise ValueError(
                    f"budget={budget} does not match {self.name} schedule=paper (ratio {self.ratio} of "
                    f"{num_image_tokens} image tokens keeps {count}) (allowed: budget={count}, or schedule=matched)"
                )
        return Schedule([], budget)

    def reduce(self, ctx: PreLLMContext) -> Selection:
        features = ctx.features  # [V, d] projected
        n_image = features.shape[0]
        if ctx.budget >= n_image:
            return Selection(keep=torch.arange(n_image, device=features.device))
        chosen = max_min_select(cosine_distance(features), ctx.budget)  # [B] in pick order
        return Selection(keep=torch.sort(chosen).values)
