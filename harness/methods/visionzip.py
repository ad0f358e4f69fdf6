"""VisionZip: keep the image tokens the vision CLS token attends to, merge the rest into a few contextual tokens.

Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language Models", CVPR 2025 (code:
dvlab-research/VisionZip, `visionzip/clip_encoder.py` + `visionzip/utils.py`). Pre-LLM: every decoder layer
sees the same B image-derived tokens, spliced into the prompt at contiguous positions (as in the official code).

At the vision feature layer (`vision_feature_layer = -2`: the encoder layer whose output is the feature,
`attentions[-2]` in the official code):

1. Dominant: the `n_dominant` patches with the highest CLS attention (mean over heads; the official code
   sums, which ranks the same), kept in original order.
2. Contextual: the other patches in original order; with `step = max(1, n_rest // n_contextual)` the
   targets are `rest[0::step][:n_contextual]`; every other remaining patch joins the target with the
   highest cosine similarity of the layer's keys (mean over heads, the official `raw_key_states.mean(1)`);
   each group becomes one token. Contextual tokens follow the dominant ones, in target order.

Split: `n_dominant = floor(B * 27/32 + 1/2)`, `n_contextual = B - n_dominant` (192 -> 162 + 30,
128 -> 108 + 20, 64 -> 54 + 10, the official settings; 27/32 = 54/64). B = 576 keeps every patch in
original order (nothing is pruned), which equals vanilla.

LLaVA-NeXT (anyres): as the official code (`visionzip/llava_arch.py`, `prepare_inputs_labels_for_multimodal_visionzip`,
`restore_image_features_sorted`; `visionzip/clip_encoder.py`, `CLIPVisionTower_VisionZip.forward` over the batch
of crops), every crop (the base view and each tile) is reduced on its own with the same dominant + contextual
split, from the CLS attention and keys of its own tower pass; the family lays the crops out
(`harness/families/llava_next.py`, `reduce_crops`: base view first, then the tiles' dominant patches in raster
order of the stitched grid, then the tiles' contextual tokens), with no unpadding and no row separators. The
official port takes one (dominant, contextual) pair per crop, and the paper's LLaVA-NeXT budgets 640/320/160 are
128/64/32 per crop x 5 crops (a 2x2 grid). Here a crop of P patches gets the same fraction budget/576 of them,
round(B * P / 576): B itself on LLaVA-v1.6's 576-patch crops, so `budget=128,64,32` give 640/320/160 on a 2x2
grid (108 + 20, 54 + 10, 27 + 5 per crop) and 3 x B on a 1x2 grid. The realized fraction of the packed block
HF would build (unpadded tiles + row separators, e.g. 2,928 tokens for 2x2) is then a little below B/576.

Differences from the official code (it works on the vision hidden states before the projector):
- Official contextual token = `h_target + mean(h_assigned)` (the target plus the plain mean of the patches
  assigned to it, not a mean over the group), then projected. The engine hands this method only the
  projected features, and `proj(h_t + mean h_a)` is no function of the projected `proj(h)` (GELU; even a
  linear projector would count its bias twice), so here a contextual token is the mean of the projected
  features of its group (target included). Exact reproduction needs the engine to pass the pre-projection vision states of the
  feature layer, `[V+1, d_vision]` with CLS, and the projector (`model.model.multi_modal_projector`).
- Official `dominant=54` means 53 patches + the CLS token (`dominant_num = dominant - 1`, CLS always
  kept, projected and fed to the LLM). The projected CLS is not available here either, so, as docs/methods.md
  says, the dominant tokens are `n_dominant` patches and no CLS token.
"""

from __future__ import annotations

import torch

from harness.budget import check_budget
from harness.methods.base import PreLLMContext, Selection, top_k_in_order
from harness.schedule import Schedule

DOMINANT_SHARE = 27 / 32  # 162/192 = 108/128 = 54/64


def split_budget(budget: int, num_image_tokens: int, share: float = DOMINANT_SHARE) -> tuple[int, int]:
    """(dominant, contextual) for a budget: dominant = floor(B * share + 1/2), the rest contextual."""
    if budget == num_image_tokens:
        return budget, 0
    dominant = int(budget * share + 0.5)
    return dominant, budget - dominant


class VisionZip:
    """VisionZip (CVPR 2025): CLS-attention dominant tokens + key-similarity contextual tokens, before the LLM.

    Args:
        budget: image tokens the language model sees (all layers).
        dominant_share: dominant tokens as a share of the budget (27/32 gives the official 162/108/54).
    """

    name = "visionzip"
    pre_llm = True
    needs_vision_attention = True
    per_crop = True  # on a multi-crop tower (LLaVA-NeXT anyres), each crop is reduced on its own (official port)

    def __init__(self, budget: int, dominant_share: float = DOMINANT_SHARE):
        self.budget = budget
        if not 0.0 < float(dominant_share) <= 1.0:
            raise ValueError(f"method.dominant_share={dominant_share!r} is not allowed (allowed: 0 < share <= 1)")
        self.dominant_share = float(dominant_share)

    def schedule(self, num_layers: int, num_image_tokens: int) -> Schedule:
        budget = check_budget(self.budget, num_image_tokens)
        return Schedule([], budget, {"split": split_budget(budget, num_image_tokens, self.dominant_share)})

    def reduce(self, ctx: PreLLMContext) -> Selection:
        features = ctx.features  # [V, d] projected
        n_image = features.shape[0]
        n_dominant, n_contextual = split_budget(ctx.budget, n_image, self.dominant_share)
        cls_attn = ctx.cls_attn[:, 1:].float().mean(0)  # [Hv, V+1] -> [V]: CLS row over the patches, mean over heads
        dominant = top_k_in_order(cls_attn, n_dominant)  # [n_dominant], original order
        if n_contextual == 0:
            return Selection(keep=dominant)
        rest = torch.ones(n_image, dtype=torch.bool, device=dominant.device)
        rest[dominant] = False
        rest = rest.nonzero().flatten()  # [R] remaining patches, original order
        metric = ctx.keys[:, 1:].float().mean(0)[rest]  # [Hv, V+1, dh] -> [R, dh]: keys, mean over heads
        metric = metric / metric.norm(dim=-1, keepdim=True)
        return Selection(keep=dominant, merged=merge_contextual(features[rest], metric, n_contextual))


def merge_contextual(features: torch.Tensor, metric: torch.Tensor, n_contextual: int) -> torch.Tensor:
    """Merge R remaining tokens into `n_contextual` group means (VisionZip's contextual tokens).

    Args:
        features: `[R, d]` features of the remaining tokens, original order.
        metric: `[R, dh]` their L2-normalised keys.
        n_contextual: groups (<= R).

    Returns:
        `[n_contextual, d]`: per target (every `step`-th remaining token, `step = max(1, R // n_contextual)`),
        the mean of its own feature and those of the non-targets whose most similar target it is.
    """
    n_rest = features.shape[0]
    step = max(1, n_rest // n_contextual)
    targets = torch.arange(0, n_rest, step, device=features.device)[:n_contextual]  # [C]
    is_target = torch.zeros(n_rest, dtype=torch.bool, device=features.device)
    is_target[targets] = True
    others = (~is_target).nonzero().flatten()  # [R - C]
    similarity = metric[others] @ metric[targets].T  # [R - C, C] cosine
    group = torch.empty(n_rest, dtype=torch.long, device=features.device)
    group[targets] = torch.arange(targets.numel(), device=features.device)
    group[others] = similarity.argmax(-1)  # ties -> the earlier target (as torch.argmax in the official code)
    sums = torch.zeros(targets.numel(), features.shape[1], dtype=torch.float32, device=features.device)
    sums.index_add_(0, group, features.float())
    counts = torch.bincount(group, minlength=targets.numel()).clamp(min=1)  # [C], >= 1 (the target itself)
    return (sums / counts[:, None]).to(features.dtype)  # [C, d]
