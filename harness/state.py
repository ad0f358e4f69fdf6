"""The engine's record of one sample in prefill and decode (`PrefillState`), and where its image block is."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from harness.methods.base import PruningMethod, Stage


@dataclass
class PrefillState:
    """What the engine knows about one sample. Indices refer to the sample's own (unpadded) sequence."""

    prompt_len: int  # N, the sample's full prompt length
    image_tokens: int  # V, this sample's image tokens (0 for a text-only prompt)
    image_span: tuple[int, int]  # image block in the current sequence
    seq_positions: torch.Tensor  # [n] original position of each current token (-1 for merged tokens)
    kept_image: torch.Tensor  # [k] original image index (0..V-1) of each kept original image token
    method: PruningMethod | None = None  # the method at this sample's budget
    stages: list[Stage] = field(default_factory=list)  # this sample's schedule
    seed: int = 0  # the sample seed (random methods)
    pad: int = 0  # left padding of this sample in the current batched sequence
    orig_pad: int = 0  # its left padding in the batched prompt
    n_merged: int = 0
    kept_fewer: int = 0  # image tokens the method was asked for and did not keep (pre-LLM `may_keep_fewer`)
    input_embeds: torch.Tensor | None = None  # [N, d]
    scores: dict[int, torch.Tensor] = field(default_factory=dict)  # stage layer -> [H, R, N]
    stage_rope: dict[int, tuple] = field(default_factory=dict)  # stage layer -> (cos, sin) [N, hd] it applied
    keys: dict[int, torch.Tensor] = field(default_factory=dict)  # stage layer -> [H_kv, N, D] (methods with needs_keys)
    vision_per_layer: list[int] = field(default_factory=list)
    tokens_per_layer: list[int] = field(default_factory=list)
    layer_positions: list[torch.Tensor] = field(default_factory=list)  # per layer: original positions it saw
    layer_pads: list[int] = field(default_factory=list)  # per layer: this sample's left padding there
    kept: dict[int, list[int]] = field(default_factory=dict)  # layer entered -> kept original image indices
    scoring_s: float = 0.0

    @property
    def entering(self) -> dict[int, tuple[int, Stage]]:
        """Layer a stage takes effect on -> (stage index, stage)."""
        return {s.enters: (i, s) for i, s in enumerate(self.stages)}


def image_block(ids: torch.Tensor, image_token_id: int, expected: int | None) -> tuple[int, int]:
    """`(start, end)` of the one contiguous block of image tokens in a sample's ids `[n]` (`(n, n)`: text only).

    Raises:
        ValueError: the image tokens are not one block, or not `expected` of them (a family with a fixed count).
    """
    where = (ids == image_token_id).nonzero().flatten()
    n = ids.shape[0]
    if where.numel() == 0:
        return n, n
    start, end = int(where[0]), int(where[-1]) + 1
    if end - start != where.numel() or (expected is not None and where.numel() != expected):
        count = f"{expected} " if expected is not None else ""
        raise ValueError(f"expected one contiguous block of {count}image tokens, "
                         f"found {where.numel()} in positions {start}..{end - 1}")
    return start, end
