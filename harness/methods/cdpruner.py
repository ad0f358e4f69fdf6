"""CDPruner: a conditional determinantal point process over the image tokens, conditioned on the instruction.

Zhang et al., "Beyond Attention or Similarity: Maximizing Conditional Diversity for Token Pruning in MLLMs",
NeurIPS 2025 (code: Theia-4869/CDPruner at commit 9541616c40fcd5625de1cdb8ea6c33c129eb7864,
`llava/model/llava_arch.py` `encode_images`, `llava/model/multimodal_encoder/clip_encoder.py`,
`llava/eval/model_vqa_loader.py`). Pre-LLM: every decoder layer sees the same kept image tokens (at most B),
spliced in original order at contiguous positions.

With `x_i` the projected image features (what fills the image block), `z_i` the vision feature layer's patch
states through CLIP's `post_layernorm` and `visual_projection`, and `t_m` the CLIP text embeddings of the
instruction (cut into windows of 77 tokens, one embedding per window):

    S[i, j] = cos(x_i, x_j)                                   similarity, fp32
    r_i     = mean_m -cos(z_i, t_m)                           relevance (the official code negates it)
    r_i     = (r_i - min r + 1e-6) / (max r - min r)          min-max normalised
    L       = diag(r) S diag(r)                               conditional DPP kernel

and B steps of the greedy MAP inference of Chen et al. (2018, "fast greedy MAP"): with `d_i^2 = L[i, i]`,
pick `j = argmax d^2`, `e = (L[j] - c_{<t}[:, j]^T c_{<t}) / d_j`, append `e` to c, `d^2 -= e^2`, `d_j^2 = -inf`.
The kept tokens are the distinct picks in original order: the official code scatters its B picks into a boolean
mask (`index_masks.scatter_(1, select_idx, True)`) and the LLM gets `image_features[index_masks]`. Its loop runs
all B steps; it neither stops early nor checks the gains. The kernel's rank is at most the width d of the
projected features (S is a Gram matrix of d-dim unit vectors: d = 4096 on LLaVA-1.5, 64 on the embedded model).
Once it is spent the gains are ~0 (on the embedded model below 1e-6 after ~60 picks), `sqrt` of a non-positive
gain gives NaN (after ~70 picks) and argmax returns indices already picked (tokens 0 and 1, about 30 times each
at B = 128). The mask keeps each once, so the LLM sees fewer than B tokens (on the shapes suite 66-76, mean 71.9,
at B = 128 and 192); so does this port (`may_keep_fewer`: the engine records the shortfall and results.json
reports `tokens.below_budget`). The instruction is the question without
the suffix "\\nAnswer the question using a single word or phrase." (stripped as in the official
`model_vqa_loader.py`).

Published settings: B = 192 / 128 / 64 (`scripts/v1_5/eval/*.sh <B>`), which is `schedule: matched` here
(B exactly, unless the DPP's gains vanish before B picks, as above); there is no other published knob.

Differences from the official code:
- the text tower, `post_layernorm` and `visual_projection` are CLIP's own (`method.text_encoder`); the official
  code applies the LLaVA tower's `post_layernorm`, the same weights for LLaVA-1.5 (its tower is frozen CLIP);
- everything is computed in fp32 (the official towers run in fp16, the kernel in fp32);
- argmax ties go to the lower index (as torch.argmax); B = V keeps every token (nothing to prune).
The kept set itself follows the official mask: the same picks, each kept once.
"""

from __future__ import annotations

import torch

from harness.budget import check_budget
from harness.methods.base import PreLLMContext, Selection
from harness.schedule import Schedule
from harness.text_encoder import ClipTextTower, load_text_tower

ANSWER_SUFFIX = "\nAnswer the question using a single word or phrase."  # removed by the official loader


def conditional_kernel(features: torch.Tensor, patch_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """CDPruner's kernel `diag(r) S diag(r)`, `[V, V]` (fp32).

    Args:
        features: `[V, d]` projected image features; patch_embeds: `[V, C]` in CLIP's space; text_embeds: `[M, C]`.
    """
    unit = features.float() / features.float().norm(dim=-1, keepdim=True)
    similarity = unit @ unit.T  # [V, V]
    image = patch_embeds.float() / patch_embeds.float().norm(dim=-1, keepdim=True)
    text = text_embeds.float() / text_embeds.float().norm(dim=-1, keepdim=True)
    relevance = (-(image @ text.T)).mean(-1)  # [V, M] -> [V]
    relevance = (relevance - relevance.min() + 1e-6) / (relevance.max() - relevance.min())
    return relevance[:, None] * similarity * relevance[None, :]


def greedy_map(kernel: torch.Tensor, k: int) -> torch.Tensor:
    """Fast greedy MAP inference of a DPP (Chen et al. 2018): `[k]` picks in order, as the official loop makes them
    (all k steps; once the gains vanish the picks repeat earlier ones: `kept_mask` keeps each once).

    Args:
        kernel: `[V, V]` positive semi-definite kernel; k: picks (1 <= k <= V).
    """
    n = kernel.shape[0]
    cis = torch.zeros(k, n, dtype=kernel.dtype, device=kernel.device)  # [k, V] Cholesky rows so far
    di2s = torch.diagonal(kernel).clone()  # [V] marginal gains
    picks = torch.empty(k, dtype=torch.long, device=kernel.device)
    for i in range(k):
        j = torch.argmax(di2s)
        picks[i] = j
        eis = (kernel[j] - cis[:i, j] @ cis[:i]) / torch.sqrt(di2s[j])  # [V]
        cis[i] = eis
        di2s -= eis.square()
        di2s[j] = float("-inf")
    return picks


def kept_mask(picks: torch.Tensor, n: int) -> torch.Tensor:
    """The official `index_masks`: `[n]` bool, True at every pick (a repeated pick counts once)."""
    mask = torch.zeros(n, dtype=torch.bool, device=picks.device)
    mask[picks] = True
    return mask


class CDPruner:
    """CDPruner (NeurIPS 2025): conditional DPP (instruction relevance x feature similarity), before the LLM.

    Args:
        budget: image tokens the language model sees (all layers).
        text_encoder: where the CLIP checkpoint of the vision tower lives (hub id or local directory), or
            "tiny" (random, tests); loaded with `from_pretrained` when the engine is built.
    """

    name = "cdpruner"
    pre_llm = True
    may_keep_fewer = True  # the distinct picks: fewer than B once the DPP's gains vanish (see the module docstring)
    needs_vision_attention = False
    needs_vision_hidden = True

    def __init__(self, budget: int, text_encoder: str | None = None):
        self.budget = budget
        self.text_encoder = text_encoder
        self.tower: ClipTextTower | None = None

    def schedule(self, num_layers: int, num_image_tokens: int) -> Schedule:
        budget = check_budget(self.budget, num_image_tokens)
        if budget < num_image_tokens and self.tower is None:  # fail on a missing encoder before any sample
            if not self.text_encoder:
                load_text_tower(self.text_encoder, 0)  # raises, naming method.text_encoder and what is allowed
            if self.text_encoder != "tiny":
                self.tower = load_text_tower(self.text_encoder, None)
        return Schedule([], budget)

    def reduce(self, ctx: PreLLMContext) -> Selection:
        features = ctx.features  # [V, d] projected
        n_image = features.shape[0]
        if ctx.budget >= n_image:
            return Selection(keep=torch.arange(n_image, device=features.device))
        if ctx.instruction is None:
            raise ValueError(f"{self.name} conditions on the instruction: call engine.generate(inputs, instruction=...)")
        width = ctx.vision_hidden.shape[-1]
        if self.tower is None:
            self.tower = load_text_tower(self.text_encoder, width)
        if self.tower.vision_width != width:
            raise ValueError(f"method.text_encoder={self.text_encoder!r} belongs to a vision tower of width "
                             f"{self.tower.vision_width}, not this model's {width}")
        self.tower.to(features.device)
        instruction = ctx.instruction.replace(ANSWER_SUFFIX, "")
        kernel = conditional_kernel(features, self.tower.embed_patches(ctx.vision_hidden),
                                    self.tower.encode_text(instruction))
        return Selection(keep=kept_mask(greedy_map(kernel, ctx.budget), n_image).nonzero().flatten())
