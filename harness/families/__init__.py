"""Model families: what the engine needs to know about each VLM architecture, one file per family.

    family = family_of(model)          # by the model's class
    family.layers(model)               # decoder layers of the language model
    family.image_tokens(model)         # fixed image-token count per sample, or None (varies per sample)

The engine and the methods never look at a model's class; everything family-specific goes through
this small Protocol. Budgets are given in LLaVA-1.5 terms (`REFERENCE_TOKENS` = 576 image tokens): on a
family whose image-token count varies per sample, a budget B keeps the fraction B/576 of that sample's
image tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn

if TYPE_CHECKING:
    from harness.methods.base import Selection

REFERENCE_TOKENS = 576  # LLaVA-1.5's image tokens: budgets are fractions of this on other families


class ModelFamily(Protocol):
    """The seam between the engine and one VLM architecture (transformers' own classes)."""

    name: str
    model_class: type
    mrope: bool  # multi-axis RoPE positions (Qwen2.5-VL): compact renumbering is not defined there
    vision_cls: bool  # the vision tower has a CLS token whose attention pre-LLM methods may read
    # What pre-LLM methods get on this family (empty: they do not run here): "features" (the sample's projected
    # image block), "vision_attention" (CLS attention + keys of one tower pass over that block), "vision_hidden"
    # (the feature layer's patch states aligned with the block), "square_grid" (the block is one square grid),
    # "crops" (the tower's crops one by one, for methods whose official port for the family reduces each crop).
    pre_llm: frozenset

    def language_model(self, model: nn.Module) -> nn.Module:
        """The decoder stack: `.layers`, `.norm`, `.rotary_emb`."""
        ...

    def image_token_id(self, model: nn.Module) -> int:
        """The id of the placeholder token that image features replace."""
        ...

    def image_tokens(self, model: nn.Module) -> int | None:
        """Image tokens of every sample if fixed (LLaVA-1.5: 576), else None (known per sample)."""
        ...

    def image_features(self, model: nn.Module, inputs: dict, vision_hidden: bool) -> tuple:
        """One sample's projected image block `[V, d]`, as it would fill the prompt, and the feature layer's
        patch states `[V, dv]` aligned with it when `vision_hidden` (else None)."""
        ...

    def reduce_crops(self, model: nn.Module, inputs: dict,
                     reduce_crop: Callable[[int, torch.Tensor], Selection]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Only where `pre_llm` offers "crops": one sample's image reduced crop by crop.

        Runs the vision tower over the sample's crops (one pass, each crop on its own), calls
        `reduce_crop(crop, features [P, d])` for every crop and lays the kept and merged tokens out as the
        method's official port for this family does. Returns (the reduced image block `[n, d]`, the kept patches
        `[k]` in block order as `crop * P + patch`, the number of merged tokens).
        """
        ...

    def row_inputs(self, model: nn.Module, inputs: dict, row: int, pad: int) -> dict:
        """Row `row` of batched processor outputs (left padding `pad`), as the processor gives one sample."""
        ...

    def prellm_positions(self, model: nn.Module, inputs: dict, keep: torch.Tensor,
                         n_merged: int) -> torch.Tensor | None:
        """Position ids of a pre-LLM reduced prompt: the sample's prompt columns `keep` `[N']`, in order.

        None where HF's own numbering 0..N'-1 is the rule (1-D RoPE: the official pre-LLM code renumbers); else
        the ids `generate` takes (Qwen2.5-VL: `[4, 1, N']`, the sequence index, then each kept token's original
        3-D position). Raises ValueError for `n_merged` merged tokens where they would have no position.
        """
        ...

    def decode_offset(self, model: nn.Module, row: int = 0, pad: int = 0) -> int:
        """What to add to row `row`'s own cache length (its `pad` left padding excluded) for HF's next position.

        0 for 1-D RoPE (HF counts a padded row's positions from its first real token); on Qwen2.5-VL the
        row's `rope_deltas`, which HF takes relative to the padded length, plus `pad`.
        """
        ...

    def synthetic_inputs(self, model: nn.Module, text: torch.Tensor, prefix_tokens: int,
                         generator: torch.Generator) -> dict:
        """Benchmark inputs: `text` ids `[T]` around one image of this family's benchmark size, random pixels."""
        ...

    def vision_flops(self, model: nn.Module, inputs: dict) -> float:
        """Analytic FLOPs of the vision tower and projector for the image in `inputs`."""
        ...

    def tiny(self, words: list[str], num_layers: int):
        """(config, processor) of a tiny random model of this family with a word-level tokenizer (tests)."""
        ...

    def budget_label(self, budget: int, image_tokens: float | None) -> str:
        """A budget as the literature labels it for this family (e.g. "640" on LLaVA-NeXT, "22.2%")."""
        ...


def padded_row(inputs: dict, row: int, pad: int) -> dict:
    """Row `row` of processor outputs that hold one entry per sample (LLaVA-1.5, LLaVA-NeXT), without its padding."""
    out = {"input_ids": inputs["input_ids"][row:row + 1, pad:]}
    for key in ("pixel_values", "image_sizes"):  # [B, ...] per sample (LLaVA-NeXT trims its padded tiles itself)
        if key in inputs:
            out[key] = inputs[key][row:row + 1]
    return out


def family_of(model: nn.Module) -> ModelFamily:
    """The family of a loaded model, by its transformers class."""
    from harness.families.llava import LLAVA
    from harness.families.llava_next import LLAVA_NEXT
    from harness.families.qwen2_5_vl import QWEN2_5_VL

    for family in (LLAVA, LLAVA_NEXT, QWEN2_5_VL):
        if isinstance(model, family.model_class):
            return family
    raise ValueError(
        f"model class {type(model).__name__} is not supported "
        "(allowed: LlavaForConditionalGeneration, LlavaNextForConditionalGeneration, Qwen2_5_VLForConditionalGeneration)"
    )


def family_named(name: str) -> ModelFamily:
    """A family by name: llava, llava_next or qwen2_5_vl."""
    from harness.families.llava import LLAVA
    from harness.families.llava_next import LLAVA_NEXT
    from harness.families.qwen2_5_vl import QWEN2_5_VL

    families = {f.name: f for f in (LLAVA, LLAVA_NEXT, QWEN2_5_VL)}
    if name not in families:
        raise ValueError(f"model.family={name!r} is not allowed (allowed: {', '.join(families)})")
    return families[name]


PRE_LLM_NEEDS = {  # a pre-LLM method's `needs_<x>` -> what the family must offer (`ModelFamily.pre_llm`)
    "vision_attention": "the CLS attention of one vision-tower pass over the image block",
    "vision_hidden": "vision patch states aligned with the image block",
    "square_grid": "the image block as one square patch grid",
}


def reduces_crops(family: ModelFamily, method) -> bool:
    """Whether the method reduces this family's image crop by crop (`ModelFamily.reduce_crops`): the method says
    its official port for a multi-crop tower does so (`per_crop`), and the family offers "crops"."""
    return bool(getattr(method, "per_crop", False)) and "crops" in family.pre_llm


def check_family(family: ModelFamily, method) -> None:
    """One clear error for a method that cannot run on this model's family."""
    name = family.name
    check_schedule_kind(name, method)
    if getattr(method, "needs_vision_attention", False) and not family.vision_cls:
        raise ValueError(f"{method.name} reads the vision CLS token's attention; the {name} vision tower has no CLS token")
    pre_llm = getattr(method, "pre_llm", False)
    if pre_llm and not family.pre_llm:
        raise ValueError(
            f"{method.name} reduces the image before the language model; model family {name} gives pre-LLM "
            "methods no image block to reduce"
        )
    if pre_llm:
        offered = set(family.pre_llm)
        if reduces_crops(family, method):  # each crop's own tower pass gives the CLS attention the method reads
            offered.add("vision_attention")
        for need, what in PRE_LLM_NEEDS.items():
            if getattr(method, f"needs_{need}", False) and need not in offered:
                raise ValueError(
                    f"{method.name} needs {what}, which model family {name} does not give pre-LLM methods "
                    f"(it gives: {', '.join(sorted(family.pre_llm))})"
                )
    if getattr(method, "positions", None) == "compact" and family.mrope:
        raise ValueError(
            f"{method.name}: positions=compact renumbers 1-D positions; {name} uses 3-D M-RoPE positions "
            "(allowed there: method.positions=original)"
        )


def scaled_budget(budget: int, image_tokens: int) -> int:
    """The budget for a sample with `image_tokens` image tokens: the same fraction budget/576 of them."""
    if image_tokens == REFERENCE_TOKENS:
        return budget
    return max(0, min(image_tokens, round(budget * image_tokens / REFERENCE_TOKENS)))


def check_schedule_kind(family: str, method) -> None:
    """One clear error for `schedule=paper` (or `derived`) off LLaVA-1.5.

    The published counts of every method here are LLaVA-1.5's (576 image tokens, 32 layers). No method's
    official code publishes counts for LLaVA-NeXT's anyres blocks, and AdaptInfer's Qwen2-VL port publishes
    per-stage keep ratios under its own percentage labels (10/30/50% retained), which no integer budget/576
    reproduces; so on those families only the matched schedule is defined.
    """
    kind = getattr(method, "schedule_kind", "matched")
    if family != "llava" and kind != "matched":
        raise ValueError(
            f"{method.name}: method.schedule={kind} uses counts published for LLaVA-1.5's 576 image tokens; "
            f"model family {family} has no published {method.name} counts (allowed there: method.schedule=matched)"
        )


def stage_source(model_cfg, method_name: str) -> str | None:
    """Where a model config's stage layers for a method come from (`stage_sources.<method>` in conf/model/*.yaml):
    the method's official port for that family (repository and file), or "scaled by depth"."""
    return (model_cfg.get("stage_sources") or {}).get(method_name)


def method_overrides(model_cfg, method_name: str) -> dict:
    """Method settings a model config fixes for its family (`method_overrides.<method>` in conf/model/*.yaml).

    A model whose depth or positions differ from LLaVA-1.5 says here which stage layers each method uses
    there (and whether they come from the method's official port or are scaled by depth).
    """
    overrides = (model_cfg.get("method_overrides") or {}).get(method_name) or {}
    return {k: (list(v) if hasattr(v, "__len__") and not isinstance(v, str) else v) for k, v in overrides.items()}
