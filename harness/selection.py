"""One sample's stage: the method's selection applied to its hidden states, and PDrop's pre-layer scoring.

Both work on one sample's own tokens (`[1, n, d]`, no padding), whatever the batch: the engine hands
each row of a batch here separately, so a sample's kept set never depends on the other rows.
"""

from __future__ import annotations

import torch
from transformers.integrations.sdpa_attention import repeat_kv
from transformers.models.llama.modeling_llama import rotate_half

from harness.methods.base import Selection, Stage, StageContext


def apply_stage(st, stage_index: int, stage: Stage, hidden: torch.Tensor, layer_idx: int, final_norm,
                record_kept: bool) -> torch.Tensor:
    """Run the sample's method on its stage-layer output `[1, n, d]`; return the kept (+ merged) tokens `[1, n', d]`.

    Updates the sample's state `st` (a `PrefillState`): positions, kept image indices, image span, kept sets.
    """
    start, end = st.image_span
    if start == end:
        return hidden
    method = st.method
    generator = torch.Generator().manual_seed(st.seed * 1000 + stage_index)
    ctx = StageContext(
        stage=stage,
        stage_index=stage_index,
        attn=st.scores.pop(stage.layer, None),
        image_span=(start, end),
        hidden=hidden[0],
        input_embeds=st.input_embeds,
        generator=generator,
        rope=st.stage_rope.pop(stage.layer, None),
        keys=st.keys.pop(stage.layer, None),
        final_norm=final_norm,
    )
    sel: Selection = method.select(ctx)
    keep = sel.keep.to(hidden.device)
    n_current = end - start
    n_merged = 0 if sel.merged is None else sel.merged.shape[0]
    if keep.numel() != min(stage.keep, n_current) or n_merged != stage.merged:
        raise RuntimeError(
            f"{method.name} kept {keep.numel()} + merged {n_merged} tokens at layer {layer_idx}, "
            f"expected {stage.keep} + {stage.merged}"
        )
    check_kept(method.name, keep, n_current, f" at layer {layer_idx}")
    device = hidden.device
    parts = [hidden[:, :start], hidden[:, start + keep]]
    if n_merged:
        if method.positions != "compact":
            raise RuntimeError(f"{method.name}: merged tokens need positions=compact")
        parts.append(sel.merged.to(hidden.dtype)[None])
    parts.append(hidden[:, end:])
    new_hidden = torch.cat(parts, dim=1)  # [1, n', d]
    # Original positions of the new sequence (merged tokens have none: -1).
    old = st.seq_positions
    st.seq_positions = torch.cat([old[:start], old[start + keep], torch.full((n_merged,), -1, device=device), old[end:]])
    # Original image indices of the kept original tokens (merged ones sit after them).
    n_orig_current = n_current - st.n_merged
    keep_orig = keep[keep < n_orig_current]
    st.kept_image = st.kept_image[keep_orig]
    st.n_merged = int(keep.numel() - keep_orig.numel()) + n_merged
    st.image_span = (start, start + keep.numel() + n_merged)
    if record_kept:
        st.kept[layer_idx] = st.kept_image.tolist()
    return new_hidden


def check_kept(name: str, keep: torch.Tensor, n: int, where: str = "") -> None:
    """The engine's rule for every kept set: indices into the current `n` image tokens, sorted ascending, each
    token at most once (a token fed twice would count twice in the budget while the LLM sees one token's content).

    Raises:
        RuntimeError: naming the method and what is wrong (a method bug, never a configuration error).
    """
    if keep.dim() != 1 or keep.dtype not in (torch.int64, torch.int32):
        raise RuntimeError(f"{name} returned kept indices{where} of shape {tuple(keep.shape)} and dtype {keep.dtype}, "
                           "expected a 1-D integer tensor")
    if not keep.numel():
        return
    if keep.min() < 0 or keep.max() >= n:
        raise RuntimeError(f"{name} returned kept indices{where} outside 0..{n - 1} "
                           f"(min {int(keep.min())}, max {int(keep.max())})")
    values, counts = torch.unique(keep, return_counts=True)
    if (counts > 1).any():
        repeated = ", ".join(f"{int(v)} x{int(c)}" for v, c in zip(values[counts > 1][:5], counts[counts > 1][:5]))
        raise RuntimeError(f"{name} returned {keep.numel()} kept indices{where} but only {values.numel()} distinct "
                           f"tokens (repeated: {repeated}): a kept set never repeats a token")
    if (keep.diff() <= 0).any():
        raise RuntimeError(f"{name} returned kept indices{where} that are not sorted ascending")


def check_prellm_count(method, n_kept: int, n_merged: int, budget: int, where: str = "") -> int:
    """A pre-LLM method's count: kept + merged equals `budget`, or falls short of it for a method that declares
    `may_keep_fewer` (CDPruner, once its DPP has no gain left). Returns the shortfall (0: the budget is met).

    Raises:
        RuntimeError: any other count (a method bug).
    """
    n = n_kept + n_merged
    if n == budget or (n < budget and getattr(method, "may_keep_fewer", False)):
        return budget - n
    why = " (fewer only for a method that declares may_keep_fewer)" if n < budget else ""
    raise RuntimeError(f"{method.name} returned {n_kept} kept + {n_merged} merged image tokens{where}, "
                       f"expected budget={budget}{why}")


def score_before(st, layer, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """PDrop: the last token's attention from this layer's own projections of its input (before it runs).

    The cos/sin a layer receives are per token (M-RoPE's three axes already assembled), so the rotation
    is the same `x cos + rotate_half(x) sin` on every family.

    Args:
        st: the sample's `PrefillState` (gets `scores[layer]`: `[H, 1, n]`).
        hidden: the sample's layer input `[1, n, d]`; cos, sin: its rows `[1, n, hd]`.
    """
    attn = layer.self_attn
    x = layer.input_layernorm(hidden)  # [1, n, d]
    n, hd = x.shape[1], attn.head_dim
    q = attn.q_proj(x[:, -1:]).view(1, 1, -1, hd).transpose(1, 2)  # [1, H, 1, hd]
    k = attn.k_proj(x).view(1, n, -1, hd).transpose(1, 2)  # [1, H_kv, n, hd]
    q = q * cos[:, None, -1:] + rotate_half(q) * sin[:, None, -1:]
    k = k * cos[:, None] + rotate_half(k) * sin[:, None]
    k = repeat_kv(k, attn.num_key_value_groups)[0].float()  # [H, n, hd]
    logits = (q[0].float() @ k.transpose(-1, -2)) * attn.scaling  # [H, 1, n]: the last row sees every key
    st.scores[attn.layer_idx] = logits.softmax(-1)
