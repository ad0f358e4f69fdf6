"""Batch layout: left padding, per-sample gathering of the layers' inputs, and the masks of pruned layers.

At batch 1 nothing here changes what the engine did before (no padding, HF's own mask). At batch B > 1
every sample keeps its own kept set, so after a stage the rows have different lengths: they are
left-padded again to the longest one, and the engine gives the pruned layers its own boolean mask
(causal over the sample's own tokens, padding hidden as keys; a padding row sees only itself so no row
is empty). A sample's tokens are always right-aligned, so `sequence[b, pad_b:]` is exactly what the
same sample would hold at batch 1.
"""

from __future__ import annotations

import torch


def left_pads(attention_mask: torch.Tensor | None, batch: int, length: int) -> list[int]:
    """Left padding of each row of a `[B, N]` 0/1 mask (all zero without a mask); refuses right padding."""
    if attention_mask is None or attention_mask.dim() != 2:
        return [0] * batch
    real = attention_mask.bool()
    pads = (length - real.sum(1)).tolist()
    for b, pad in enumerate(pads):
        if real[b, :pad].any() or not real[b, pad:].all():
            raise ValueError(
                f"row {b} of the batch is not left-padded (the engine needs padding_side='left': every row's "
                "tokens right-aligned)"
            )
    return [int(p) for p in pads]


def left_pad(rows: list[torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
    """Stack `[1, n_b, d]` rows into `[B, n, d]`, right-aligned with zeros on the left; returns (batch, pads)."""
    if len(rows) == 1:
        return rows[0], [0]
    n = max(r.shape[1] for r in rows)
    out = rows[0].new_zeros(len(rows), n, rows[0].shape[2])
    pads = []
    for b, row in enumerate(rows):
        out[b, n - row.shape[1]:] = row[0]
        pads.append(n - row.shape[1])
    return out, pads


def gather_index(positions: list[torch.Tensor], pads: list[int], orig_pads: list[int], n: int) -> torch.Tensor:
    """`[B, n]` indices into the full-length layer inputs: row b's tokens at `orig_pad_b + position`.

    Args:
        positions: per sample, the position of each current token in its own unpadded prompt `[n - pad_b]`.
        pads: current left padding per sample; orig_pads: the prompt's left padding per sample.
    """
    index = torch.zeros(len(pads), n, dtype=torch.long, device=positions[0].device)
    for b, (pos, pad, orig) in enumerate(zip(positions, pads, orig_pads)):
        index[b, pad:] = orig + pos
    return index


def take(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows `index` `[B, n]` of a `[B, N, ...]` (or broadcast `[1, N, ...]`) tensor: `[B, n, ...]`."""
    t = t.expand(index.shape[0], *t.shape[1:])
    return t[torch.arange(index.shape[0], device=index.device)[:, None], index]


def prefill_mask(pads: list[int], n: int, device) -> torch.Tensor:
    """`[B, 1, n, n]` bool: causal over each sample's own tokens, padding columns hidden, padding rows see themselves."""
    pads_t = torch.tensor(pads, device=device)
    idx = torch.arange(n, device=device)
    valid = idx[None, :] >= pads_t[:, None]  # [B, n]
    causal = idx[None, :] <= idx[:, None]  # [n, n]
    mask = causal[None] & valid[:, None, :]  # [B, n, n]
    mask |= torch.eye(n, dtype=torch.bool, device=device)[None]
    return mask[:, None]


def padded_decode_mask(pads: list[int], cached: int, hf_mask: torch.Tensor | None, prompt_len: int, q: int,
                generated: int, device) -> torch.Tensor:
    """`[B, 1, q, cached + generated + q]` bool for a decode step at a pruned layer.

    Args:
        pads: the layer's prefill left padding per sample; cached: its prefill length (padded).
        hf_mask: HF's mask of this step over the full prompt (`[B, 1, q, prompt_len + generated + q]`) or None.
        prompt_len: the full (padded) prompt length; generated: tokens cached after the prompt.
    """
    valid = torch.arange(cached, device=device)[None, :] >= torch.tensor(pads, device=device)[:, None]  # [B, L]
    prompt = valid[:, None, None, :].expand(len(pads), 1, q, cached)
    if isinstance(hf_mask, torch.Tensor) and hf_mask.dtype == torch.bool:
        new = hf_mask[..., prompt_len:]  # [B, 1, q, generated + q]
    else:  # no padding anywhere: the new tokens see every earlier new token
        cols = torch.arange(generated + q, device=device)
        new = (cols[None, :] <= generated + torch.arange(q, device=device)[:, None])[None, None]
        new = new.expand(len(pads), 1, q, generated + q)
    return torch.cat([prompt, new], dim=-1)


def is_unpadded(states: list) -> bool:
    """Batch 1 without padding: the layers keep HF's own mask (sliced to the kept set) as they always did."""
    return len(states) == 1 and states[0].orig_pad == 0


def gather_inputs(states: list, kwargs: dict, n: int, compact: bool) -> dict:
    """The full-length layer kwargs (position ids, RoPE cos/sin, mask) gathered to the current `[B, n]` layout.

    Args:
        states: the batch's `PrefillState`s (positions, current and original padding).
        kwargs: what HF hands every decoder layer (full prompt length N).
        n: the current (padded) sequence length. compact: positions renumbered 0..n_b-1 per sample.
    """
    if is_unpadded(states):
        st = states[0]
        index = slice(0, n) if compact else st.seq_positions
        out = {}
        if kwargs.get("position_ids") is not None:
            out["position_ids"] = kwargs["position_ids"][:, index]
        cos, sin = kwargs["position_embeddings"]  # [1, N, hd] each
        out["position_embeddings"] = (cos[:, index], sin[:, index])
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor):  # [1, 1, N, N]
            out["attention_mask"] = mask[:, :, index][:, :, :, index]
        return out
    positions = [torch.arange(n - st.pad, device=st.seq_positions.device) if compact else st.seq_positions
                 for st in states]
    pads = [st.pad for st in states]
    index = gather_index(positions, pads, [st.orig_pad for st in states], n)  # [B, n]
    out = {}
    if kwargs.get("position_ids") is not None:
        out["position_ids"] = take(kwargs["position_ids"], index)
    cos, sin = kwargs["position_embeddings"]  # [B, N, hd] each
    out["position_embeddings"] = (take(cos, index), take(sin, index))
    out["attention_mask"] = prefill_mask(pads, n, index.device)
    return out


def decode_mask(states: list, layer_idx: int, hf_mask, hidden: torch.Tensor, cached: int, prompt_len: int,
                generated: int, compact: bool) -> torch.Tensor | None:
    """The mask of a decode step at a pruned layer over what that layer cached (None: keep HF's, none needed).

    Args:
        hf_mask: HF's mask for the step over the full prompt, or None. hidden: the new tokens `[B, q, d]`.
        cached: the layer's (padded) prefill length; prompt_len: the full padded prompt; generated: tokens
            generated so far including these q.
    """
    q = hidden.shape[1]
    if is_unpadded(states):
        if not isinstance(hf_mask, torch.Tensor):
            return None
        st = states[0]
        if compact:
            kept = torch.arange(st.tokens_per_layer[layer_idx], device=hf_mask.device)
        else:
            kept = st.layer_positions[layer_idx]
        new = torch.arange(st.prompt_len, hf_mask.shape[-1], device=hf_mask.device)
        return hf_mask[..., torch.cat([kept, new])]
    pads = [st.layer_pads[layer_idx] for st in states]
    return padded_decode_mask(pads, cached, hf_mask, prompt_len, q, generated - q, hidden.device)


def per_layer_positions(states: list, layer_idx: int, own: int, hidden: torch.Tensor, offsets: list[int],
                        rotary_emb, memo: dict) -> dict:
    """Positions `own cache length + 0..Q-1` (+ the family's decode offset) for each row's Q new tokens.

    HF places a generated token at `cache length + offset` (offset 0 for 1-D RoPE, `rope_deltas` on
    Qwen2.5-VL, the same on all three M-RoPE axes); `decode_positions=per_layer` puts the layer's own
    cache length there (each row's own: its padding at this layer is not part of it).

    Args:
        own: the layer's (padded) cache length before this step; hidden: the new tokens `[B, Q, d]`.
        offsets: per row, the family's decode offset; memo: (cache length, pads) -> result, for this step.
    """
    pads = tuple(st.layer_pads[layer_idx] for st in states)
    if (own, pads) not in memo:  # once per distinct cache layout and step
        q = hidden.shape[1]
        starts = torch.tensor([own - pad + off for pad, off in zip(pads, offsets)], device=hidden.device)
        ids = starts[:, None] + torch.arange(q, device=hidden.device)  # [B, Q]
        memo[(own, pads)] = (ids, rotary_emb(hidden, position_ids=ids))
    ids, cos_sin = memo[(own, pads)]
    return {"position_ids": ids, "position_embeddings": cos_sin}
