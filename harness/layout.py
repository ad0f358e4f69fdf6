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


def decode_mask(pads: list[int], cached: int, hf_mask: torch.Tensor | None, prompt_len: int, q: int,
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
