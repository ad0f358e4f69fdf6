"""What a pruning method is: a schedule of stages and a `select` rule.

A stage `(layer, keep)` takes its scores from the attention of decoder layer `layer` and hands the
kept set of `keep` image tokens to layer `layer + 1` (docs/methods.md, "Budgets and their accounting"). The engine
(`harness/engine.py`) does everything else; a method only sees tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from harness.schedule import Schedule, Stage

QueryRows = Literal["last", "text"] | None
Positions = Literal["original", "compact"]
DecodePositions = Literal["global", "per_layer"]
DECODE_POSITIONS = ("global", "per_layer")
PaperAccounting = Literal["stage_layer_reduced", "label"] | None
PAPER_ACCOUNTINGS = ("stage_layer_reduced", "label")

# What a method declares about itself as class attributes (default when absent), recorded in results.json
# `method_facts` and read from there by the leaderboard, so a new baseline needs no leaderboard edit:
FACTS = {
    "reference": False,            # the unpruned row every other row is compared with (Avg, speedup, CIs): vanilla
    "ignores_budget": False,       # one row whatever `budget=` says, outside the budgets: vanilla, blind
    "difficult_reference": False,  # "difficult" samples: the reference right, this method at the same budget wrong
    "paper_accounting": None,      # how the paper counts the image tokens of a `schedule: paper` run (PaperAccounting):
                                   # "stage_layer_reduced" (SparseVLM, AdaptInfer code: a stage layer counted with the
                                   # reduced count), "label" (the budget label itself: DART's max_num_trunction), None
}


def declared_facts(method) -> dict:
    """The FACTS a method declares (class attributes), with their defaults for the ones it does not."""
    facts = {key: getattr(method, key, default) for key, default in FACTS.items()}
    if facts["paper_accounting"] is not None:
        check_choice(f"{type(method).__name__}.paper_accounting", facts["paper_accounting"], PAPER_ACCOUNTINGS)
    return facts


@dataclass
class StageContext:
    """Everything a method may look at when it selects tokens at one stage (prefill, one sample).

    Attributes:
        stage: the stage being applied.
        stage_index: its position in the schedule (0, 1, ...).
        attn: softmax attention of the stage layer for the method's query rows against all keys,
            `[H, R, N]` (heads, rows, current sequence length), fp32; None if the method asks no rows.
        image_span: `(start, end)` of the image block in the current sequence.
        hidden: output hidden states of the stage layer, `[N, d]`.
        input_embeds: the language model's input embeddings (full sequence), `[N0, d]`.
        generator: a torch.Generator seeded for this sample and stage.
        rope: the RoPE `(cos, sin)` the stage layer applied to its queries and keys, `[N, hd]` each
            (one row per current token, at the positions that layer used); None for a pre-LLM method.
        keys: the stage layer's keys after RoPE, `[H_kv, N, D]` (not expanded for GQA); None unless the
            method sets `needs_keys`.
        final_norm: the language model's final norm (maps `[..., d]` hidden states as before the LM head).
    """

    stage: Stage
    stage_index: int
    attn: torch.Tensor | None
    image_span: tuple[int, int]
    hidden: torch.Tensor
    input_embeds: torch.Tensor
    generator: torch.Generator
    rope: tuple[torch.Tensor, torch.Tensor] | None = None
    keys: torch.Tensor | None = None
    final_norm: Callable[[torch.Tensor], torch.Tensor] | None = None


@dataclass
class Selection:
    """A method's decision at one stage.

    Attributes:
        keep: indices into the current image block, sorted ascending, `[k]`.
        merged: extra image-derived hidden states inserted right after the kept ones, `[M, d]`.
    """

    keep: torch.Tensor
    merged: torch.Tensor | None = None


@dataclass
class PreLLMContext:
    """What a pre-LLM method (VisionZip, pool, blind) sees: the image before the language model.

    Attributes:
        features: projected image features, `[V, d]` (what would fill the image block).
        cls_attn: softmax attention of the CLS query at the vision feature layer, `[Hv, V+1]`
            (column 0 is CLS itself); None unless the method sets `needs_vision_attention`.
        keys: that layer's keys, `[Hv, V+1, dv_head]`; None unless `needs_vision_attention`.
        generator: a torch.Generator seeded for this sample.
        budget: the image tokens to return (kept + merged): the decided `Schedule.budget` (at most that, for a
            method that declares `may_keep_fewer`).
        vision_hidden: the vision feature layer's patch states before the projector, `[V, dv]`; None unless
            the method sets `needs_vision_hidden`.
        instruction: the user's text of this sample (before the chat template), when the caller gives it.
    """

    features: torch.Tensor
    cls_attn: torch.Tensor | None
    keys: torch.Tensor | None
    generator: torch.Generator
    budget: int
    vision_hidden: torch.Tensor | None = None
    instruction: str | None = None


class PruningMethod(Protocol):
    """The small interface every method implements (one file per method)."""

    name: str
    budget: int
    query_rows: QueryRows  # which attention rows `select` needs: "last" prompt token, all "text" rows, or none
    positions: Positions  # RoPE positions of the kept tokens: "original" or renumbered "compact"
    # Optional `decode_positions: DecodePositions` (engine default "global"): the RoPE position of a generated
    # token: HF's "global" next position at every layer, or "per_layer": each layer's own cache length.
    # Optional FACTS (above): reference, ignores_budget, difficult_reference, paper_accounting.

    def schedule(self, num_layers: int, num_image_tokens: int) -> Schedule:
        """The stages and recorded budget on a model with `num_layers` decoder layers (validates the budget;
        returns the decision without changing the method)."""
        ...

    def select(self, ctx: StageContext) -> Selection:
        """Choose the image tokens that enter layer `ctx.stage.enters`."""
        ...


class PreLLMMethod(Protocol):
    """A method that reduces the image block before the language model (every layer sees the same set)."""

    name: str
    budget: int
    pre_llm: bool  # True
    needs_vision_attention: bool  # CLS-row attention + keys of the vision feature layer
    # Optional `may_keep_fewer = True`: `reduce` may return fewer than `budget` tokens (CDPruner, whose greedy DPP
    # repeats picks once its gains vanish, keeps each distinct pick once, as its official mask does); the engine
    # records the shortfall per sample (`kept_fewer`) and results.json reports it (`tokens.below_budget`). Without
    # it a count other than the budget is a method bug. No method may return a token twice (`check_kept`).
    # Optional `per_crop = True`: on a tower run in several crops (LLaVA-NeXT anyres), `reduce` is called once per
    # crop (its own features, CLS attention, keys and budget) and the family lays the crops out (`reduce_crops`).

    def schedule(self, num_layers: int, num_image_tokens: int) -> Schedule:
        """Validate the budget; a pre-LLM method has no in-LLM stages (`Schedule([], budget)`)."""
        ...

    def reduce(self, ctx: PreLLMContext) -> Selection:
        """The image tokens the language model sees: `keep` indices into the V features + `merged` ones,
        `ctx.budget` in all."""
        ...


def top_k_in_order(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k highest scores, ties broken toward the lower index, returned in ascending order.

    Args:
        scores: `[V]` scores of the current image tokens.
        k: how many to keep (0 <= k <= V).
    """
    order = torch.sort(scores, descending=True, stable=True).indices  # stable: equal scores keep index order
    return torch.sort(order[:k]).values


def check_choice(key: str, value: str, allowed: tuple[str, ...]) -> str:
    """Return `value` if allowed, else raise a ValueError naming it and the allowed ones."""
    if value not in allowed:
        raise ValueError(f"{key}={value!r} is not allowed (allowed: {', '.join(allowed)})")
    return value
