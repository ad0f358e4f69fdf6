"""The pruning engine: the only place that touches transformers internals.

How it works (prefill only, batch 1; docs/architecture.md, "The data path"):

0. What differs between model families (decoder layers, the image token, fixed or per-sample image
   counts, decode position offsets, what pre-LLM methods may use) comes from `harness/families`; the
   engine never looks at the model's class. Where the image-token count varies per sample, each sample
   gets the schedule of its own count at the same fraction budget/576.
1. A forward pre-hook on the VLM sees every call. A call on an empty cache is a prefill: the engine
   finds the image block from the input ids and resets its state.
2. The language model runs on an attention function registered with transformers'
   `AttentionInterface`. It calls the normal SDPA kernel and, at a stage layer, also computes the
   softmax attention of only the query rows the method asks for against all keys: `[H, R, N]`.
3. A forward pre-hook on every decoder layer applies the method's selection at the layer after a
   stage (gathering `hidden_states`), and gathers the full-length kwargs that the parent loop hands
   to every layer (position ids, RoPE cos/sin, mask) to the current kept set.
4. Each layer's KV cache then holds only what that layer saw. Layer 0 is never pruned, so HF's
   cache length (read from layer 0) stays the full prompt length and decode continues at the
   original next position.
5. Decode positions (`method.decode_positions`): "global" leaves HF's next position (prompt length +
   tokens generated so far) at every layer; "per_layer" gives a generated token, at each layer, that
   layer's own cache length as its position, as the FlashAttention-2 path of the SparseVLM v1.5 and
   AdaptInfer code does. With compact positions, per_layer continues each layer's renumbering without
   a gap; global leaves a gap of the pruned count.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.models.llama.modeling_llama import rotate_half

from harness.budget import check_schedule
from harness.families import (
    REFERENCE_TOKENS,
    check_schedule_kind,
    family_of,
    scaled_budget,
)
from harness.methods.base import (
    DECODE_POSITIONS,
    PruningMethod,
    Selection,
    Stage,
    StageContext,
    check_choice,
)
from harness.prellm import prellm_generate
from harness.schedule import Schedule

ATTN_NAME = "prunebench_sdpa"
PRE_LLM_NEEDS = {  # a pre-LLM method's `needs_<x>` -> what the family must offer (`ModelFamily.pre_llm`)
    "vision_attention": "the CLS attention of one vision-tower pass over the image block",
    "vision_hidden": "vision patch states aligned with the image block",
    "square_grid": "the image block as one square patch grid",
}
VISION_ATTN_NAME = "prunebench_vision_sdpa"


def _attention(module, query, key, value, attention_mask, **kwargs):
    """SDPA, plus the method's attention rows at stage layers (see `PruningEngine.capture`)."""
    engine = getattr(module, "_prunebench_engine", None)
    if engine is not None:
        engine.capture(module, query, key, attention_mask)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _vision_attention(module, query, key, value, attention_mask, **kwargs):
    """SDPA for the vision tower, plus the CLS row's attention and the keys at the feature layer."""
    engine = getattr(module, "_prunebench_engine", None)
    if engine is not None and getattr(module, "_prunebench_feature_layer", False):
        t0 = engine._clock()
        cls_logits = (query[0, :, :1].float() @ key[0].float().transpose(-1, -2)) * kwargs["scaling"]  # [Hv, 1, V+1]
        engine.vision_capture = (cls_logits.softmax(-1)[:, 0], key[0])  # [Hv, V+1], [Hv, V+1, dh]
        engine.capture_s = engine._clock() - t0  # scoring work inside the tower pass
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(ATTN_NAME, _attention)
AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)
AttentionInterface.register(VISION_ATTN_NAME, _vision_attention)
AttentionMaskInterface.register(VISION_ATTN_NAME, sdpa_mask)


@dataclass
class PrefillState:
    """What the engine knows about the current sample. Indices refer to the current sequence."""

    prompt_len: int  # N, the full prompt length
    image_tokens: int  # V, this sample's image tokens (0 for a text-only prompt)
    image_span: tuple[int, int]  # image block in the current sequence
    seq_positions: torch.Tensor  # [n] original position of each current token (-1 for merged tokens)
    kept_image: torch.Tensor  # [k] original image index (0..V-1) of each kept original image token
    n_merged: int = 0
    input_embeds: torch.Tensor | None = None  # [N, d]
    scores: dict[int, torch.Tensor] = field(default_factory=dict)  # stage layer -> [H, R, N]
    stage_rope: dict[int, tuple] = field(default_factory=dict)  # stage layer -> (cos, sin) [N, hd] it applied
    decode_rope: dict[int, tuple] = field(default_factory=dict)  # per decode step: cache length -> (ids, (cos, sin))
    keys: dict[int, torch.Tensor] = field(default_factory=dict)  # stage layer -> [H_kv, N, D] (methods with needs_keys)
    gathered: dict | None = None  # kwargs gathered for the current kept set (reused by later layers)
    pruned: bool = False
    decoding: bool = False
    generated: int = 0
    vision_per_layer: list[int] = field(default_factory=list)
    tokens_per_layer: list[int] = field(default_factory=list)
    layer_positions: list[torch.Tensor] = field(default_factory=list)  # per layer: original positions it saw
    kept: dict[int, list[int]] = field(default_factory=dict)  # layer entered -> kept original image indices
    scoring_s: float = 0.0


class PruningEngine:
    """Attach a pruning method to a VLM (any family in `harness/families`).

        engine = PruningEngine(model, FastV(budget=64))
        with engine:
            out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        engine.state.vision_per_layer  # image tokens that entered each layer

    Args:
        model: a VLM of a supported family (`harness.families.family_of`) with SDPA attention.
        method: the pruning method (see `harness/methods/base.py`).
        record_kept: keep the kept original image indices of every stage in `state.kept`.
        time_scoring: measure the time of scoring + selection + gathering (synchronises CUDA).
    """

    def __init__(
        self,
        model: nn.Module,
        method: PruningMethod,
        record_kept: bool = False,
        time_scoring: bool = False,
    ):
        self.model = model
        self.method = method
        self.record_kept = record_kept
        self.time_scoring = time_scoring
        self.family = family_of(model)
        self.language_model = self.family.language_model(model)
        self.layers = self.language_model.layers
        self.num_layers = len(self.layers)
        self.image_token_id = self.family.image_token_id(model)
        # A fixed count (LLaVA-1.5: 576); on families whose count varies per sample the budget is a fraction
        # of 576 and each sample gets its own schedule (`_schedule_for`).
        self.fixed_image_tokens = self.family.image_tokens(model)
        self.num_image_tokens = self.fixed_image_tokens or REFERENCE_TOKENS
        self.pre_llm = getattr(method, "pre_llm", False)
        self._check_family(method)
        self.decision: Schedule = method.schedule(self.num_layers, self.num_image_tokens)  # what the run records
        self.stages: list[Stage] = self.decision.stages
        self.active = method  # the method at this sample's budget (a copy with a scaled budget on other families)
        self.decode_positions = check_choice(
            "method.decode_positions", getattr(method, "decode_positions", "global"), DECODE_POSITIONS
        )
        # A pre-LLM method has no stages: its budget is the size of what `reduce` returns (checked in `generate`).
        check_schedule(self.stages, self.decision.budget, self.num_layers, self.num_image_tokens, method.name,
                       check_budget=not self.pre_llm and getattr(method, "schedule_kind", "matched") == "matched")
        self._use_stages(self.stages)
        self._schedules = {self.num_image_tokens: (method, self.stages)}
        self.sample_seed = 0
        self.state: PrefillState | None = None
        self.vision_capture: tuple[torch.Tensor, torch.Tensor] | None = None
        self.capture_s = 0.0  # time of the CLS-attention capture inside the tower pass (time_scoring)
        self._handles: list = []
        self._saved_attn: dict[str, str] = {}

    def _check_family(self, method: PruningMethod) -> None:
        """One clear error for a method that cannot run on this model's family."""
        family = self.family.name
        check_schedule_kind(family, method)
        if getattr(method, "needs_vision_attention", False) and not self.family.vision_cls:
            raise ValueError(f"{method.name} reads the vision CLS token's attention; the {family} vision tower has no CLS token")
        if self.pre_llm and not self.family.pre_llm:
            raise ValueError(
                f"{method.name} reduces the image before the language model; the engine splices a reduced block "
                f"only on llava and llava_next (model family {family} is not supported for pre-LLM methods)"
            )
        if self.pre_llm:
            for need, what in PRE_LLM_NEEDS.items():
                if getattr(method, f"needs_{need}", False) and need not in self.family.pre_llm:
                    raise ValueError(
                        f"{method.name} needs {what}, which model family {family} does not give pre-LLM methods "
                        f"(it gives: {', '.join(sorted(self.family.pre_llm))})"
                    )
        if getattr(method, "positions", None) == "compact" and self.family.mrope:
            raise ValueError(
                f"{method.name}: positions=compact renumbers 1-D positions; {family} uses 3-D M-RoPE positions "
                "(allowed there: method.positions=original)"
            )

    def _use_stages(self, stages: list[Stage]) -> None:
        self.stages = stages
        self.stage_entering = {s.enters: (i, s) for i, s in enumerate(stages)}
        query_rows = getattr(self.method, "query_rows", None)
        self.score_layers = {s.layer for s in stages if not s.before} if query_rows else set()
        needs_keys = getattr(self.method, "needs_keys", False)
        self.key_layers = {s.layer for s in stages if not s.before} if needs_keys else set()

    def _schedule_for(self, image_tokens: int) -> None:
        """Switch to the schedule of a sample with `image_tokens` image tokens (budget: the same fraction of 576)."""
        if image_tokens not in self._schedules:
            method = copy.copy(self.method)
            method.budget = scaled_budget(self.method.budget, image_tokens)
            decision = method.schedule(self.num_layers, image_tokens)
            check_schedule(decision.stages, decision.budget, self.num_layers, image_tokens, method.name,
                           check_budget=not self.pre_llm and getattr(method, "schedule_kind", "matched") == "matched")
            self._schedules[image_tokens] = (method, decision.stages)
        self.active, stages = self._schedules[image_tokens]
        self._use_stages(stages)

    # ---------------------------------------------------------------- attach / detach
    def attach(self) -> PruningEngine:
        """Switch the language model to the engine's attention function and register the hooks."""
        if self._handles or self._saved_attn:
            return self
        config = self.model.config
        wanted = {}
        if self.pre_llm:
            if getattr(self.method, "needs_vision_attention", False):
                wanted["vision_config"] = VISION_ATTN_NAME
                tower = self.model.model.vision_tower  # CLIPVisionModel: transformers 5 has no `.vision_model` level
                vision_layers = getattr(tower, "vision_model", tower).encoder.layers
                feature_layer = config.vision_feature_layer % (len(vision_layers) + 1)  # -2 -> output of L-2
                for idx, layer in enumerate(vision_layers):
                    layer.self_attn._prunebench_engine = self
                    layer.self_attn._prunebench_feature_layer = idx == feature_layer - 1
        else:
            wanted["text_config"] = ATTN_NAME
            for layer in self.layers:
                layer.self_attn._prunebench_engine = self
            self._handles.append(self.model.register_forward_pre_hook(self._model_pre_hook, with_kwargs=True))
            for idx, layer in enumerate(self.layers):
                hook = lambda module, args, kwargs, idx=idx: self._layer_pre_hook(idx, module, args, kwargs)  # noqa: E731
                self._handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
        for key, name in wanted.items():
            current = getattr(config, key)._attn_implementation
            if current != "sdpa":
                raise ValueError(f"the engine wraps SDPA; {key} uses {current!r}")
            self._saved_attn[key] = current
        if wanted:
            self.model.set_attn_implementation(wanted)
        return self

    def detach(self) -> None:
        """Remove every hook and restore SDPA: the model behaves as vanilla again."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for module in self.model.modules():
            for attr in ("_prunebench_engine", "_prunebench_feature_layer"):
                if hasattr(module, attr):
                    delattr(module, attr)
        if self._saved_attn:
            self.model.set_attn_implementation(dict(self._saved_attn))
            self._saved_attn = {}

    def __enter__(self) -> PruningEngine:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    # ---------------------------------------------------------------- hooks
    def _model_pre_hook(self, module, args, kwargs):
        """Start a new sample on a prefill call; check positions on decode calls."""
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = cache.get_seq_length() if cache is not None else 0
        if past == 0:
            if input_ids is None:
                raise ValueError("the pruning engine needs input_ids in prefill (to find the image block)")
            self.state = self._new_state(input_ids)
        elif self.state is not None:
            st = self.state
            st.decoding = True
            expected = st.prompt_len + st.generated
            # Layer 0 is never pruned, so HF's cache length is the full one and positions continue from N.
            assert past == expected, f"cache holds {past} positions at layer 0, expected {expected}"
            st.generated += (input_ids if input_ids is not None else kwargs["inputs_embeds"]).shape[1]
            st.decode_rope = {}
        return None

    def _new_state(self, input_ids: torch.Tensor) -> PrefillState:
        if input_ids.shape[0] != 1:
            raise ValueError(f"the pruning engine runs batch size 1 (got batch {input_ids.shape[0]})")
        ids = input_ids[0]
        where = (ids == self.image_token_id).nonzero().flatten()
        n = ids.shape[0]
        if where.numel() == 0:  # a text-only prompt: nothing to prune
            start = end = n
        else:
            start, end = int(where[0]), int(where[-1]) + 1
            expected = self.fixed_image_tokens
            if end - start != where.numel() or (expected is not None and where.numel() != expected):
                count = f"{expected} " if expected is not None else ""
                raise ValueError(
                    f"expected one contiguous block of {count}image tokens, "
                    f"found {where.numel()} in positions {start}..{end - 1}"
                )
            if expected is None:
                self._schedule_for(end - start)
        device = input_ids.device
        return PrefillState(
            prompt_len=n,
            image_tokens=end - start,
            image_span=(start, end),
            seq_positions=torch.arange(n, device=device),
            kept_image=torch.arange(end - start, device=device),
        )

    def capture(self, module, query: torch.Tensor, key: torch.Tensor, attention_mask) -> None:
        """At a stage layer in prefill, keep the softmax attention of the method's query rows.

        Args:
            query: `[1, H, n, D]` after RoPE; key: `[1, H_kv, n, D]` (not expanded for GQA).
        """
        st = self.state
        layer_idx = module.layer_idx
        if st is None or st.decoding or st.image_span[0] == st.image_span[1]:
            return
        if layer_idx in self.key_layers:
            st.keys[layer_idx] = key[0]  # [H_kv, n, D] after RoPE: a reference, no copy
        if layer_idx not in self.score_layers:
            return
        t0 = self._clock()
        n = query.shape[2]
        if self.method.query_rows == "last":
            rows = torch.tensor([n - 1], device=query.device)
        else:  # "text": everything after the image block
            rows = torch.arange(st.image_span[1], n, device=query.device)
        q = query[0, :, rows].float()  # [H, R, D]
        k = repeat_kv(key, module.num_key_value_groups)[0].float()  # [H, n, D]
        logits = (q @ k.transpose(-1, -2)) * module.scaling  # [H, R, n]
        future = torch.arange(n, device=query.device)[None, :] > rows[:, None]  # [R, n] causal
        logits = logits.masked_fill(future, float("-inf"))
        if attention_mask is not None:  # a materialised [1, 1, n, n] mask (padding, eager reference)
            mask = attention_mask[0, 0, rows]  # [R, n]
            logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask
        st.scores[layer_idx] = logits.softmax(-1)  # [H, R, n]
        st.scoring_s += self._clock() - t0

    def _layer_pre_hook(self, layer_idx: int, layer, args: tuple, kwargs: dict):
        st = self.state
        if st is None:
            return None
        if st.decoding:
            return self._decode_kwargs(layer_idx, args, kwargs)
        hidden = args[0]  # [1, n, d]
        if layer_idx == 0:
            st.input_embeds = hidden[0]
        if layer_idx in self.stage_entering:
            stage_index, stage = self.stage_entering[layer_idx]
            if stage.before:
                self._score_before(layer, hidden, kwargs)
            hidden = self._apply_stage(stage_index, stage, hidden, layer_idx)
        start, end = st.image_span
        st.vision_per_layer.append(end - start)
        st.tokens_per_layer.append(hidden.shape[1])
        st.layer_positions.append(st.seq_positions)
        if not st.pruned:
            if layer_idx in self.score_layers:
                st.stage_rope[layer_idx] = tuple(t[0] for t in kwargs["position_embeddings"])  # [n, hd] each
            return None
        if st.gathered is None:
            t0 = self._clock()
            st.gathered = self._gather(kwargs, hidden.shape[1])
            st.scoring_s += self._clock() - t0
        if layer_idx in self.score_layers:
            st.stage_rope[layer_idx] = tuple(t[0] for t in st.gathered["position_embeddings"])  # [n, hd] each
        return (hidden, *args[1:]), {**kwargs, **st.gathered}

    def _apply_stage(self, stage_index: int, stage: Stage, hidden: torch.Tensor, layer_idx: int) -> torch.Tensor:
        """Run the method's selection on the stage layer's output and gather the kept tokens."""
        st = self.state
        start, end = st.image_span
        if start == end:
            return hidden
        t0 = self._clock()
        generator = torch.Generator().manual_seed(self.sample_seed * 1000 + stage_index)
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
            final_norm=self.language_model.norm,
        )
        sel: Selection = self.active.select(ctx)
        keep = sel.keep.to(hidden.device)
        n_current = end - start
        n_merged = 0 if sel.merged is None else sel.merged.shape[0]
        if keep.numel() != min(stage.keep, n_current) or n_merged != stage.merged:
            raise RuntimeError(
                f"{self.method.name} kept {keep.numel()} + merged {n_merged} tokens at layer {layer_idx}, "
                f"expected {stage.keep} + {stage.merged}"
            )
        if keep.numel() and (keep.min() < 0 or keep.max() >= n_current or (keep.diff() <= 0).any()):
            raise RuntimeError(f"{self.method.name} returned kept indices that are not sorted, unique and in range")
        device = hidden.device
        parts = [hidden[:, :start], hidden[:, start + keep]]
        if n_merged:
            if self.method.positions != "compact":
                raise RuntimeError(f"{self.method.name}: merged tokens need positions=compact")
            parts.append(sel.merged.to(hidden.dtype)[None])
        parts.append(hidden[:, end:])
        new_hidden = torch.cat(parts, dim=1)  # [1, n', d]
        # Original positions of the new sequence (merged tokens have none: -1).
        old = st.seq_positions
        st.seq_positions = torch.cat(
            [old[:start], old[start + keep], torch.full((n_merged,), -1, device=device), old[end:]]
        )
        # Original image indices of the kept original tokens (merged ones sit after them).
        n_orig_current = n_current - st.n_merged
        keep_orig = keep[keep < n_orig_current]
        st.kept_image = st.kept_image[keep_orig]
        st.n_merged = int(keep.numel() - keep_orig.numel()) + n_merged
        st.image_span = (start, start + keep.numel() + n_merged)
        st.pruned = True
        st.gathered = None
        if self.record_kept:
            st.kept[layer_idx] = st.kept_image.tolist()
        st.scoring_s += self._clock() - t0
        return new_hidden

    def _score_before(self, layer, hidden: torch.Tensor, kwargs: dict) -> None:
        """PDrop: the last token's attention from this layer's own projections of its input (before it runs).

        The cos/sin the layer receives are per token (M-RoPE's three axes already assembled), so the
        rotation is the same `x cos + rotate_half(x) sin` on every family.
        """
        st = self.state
        t0 = self._clock()
        if st.pruned and st.gathered is None:
            st.gathered = self._gather(kwargs, hidden.shape[1])
        cos, sin = (st.gathered if st.pruned else kwargs)["position_embeddings"]  # [1, n, hd]
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
        st.scoring_s += self._clock() - t0

    @torch.no_grad()
    def generate(self, inputs: dict, instruction: str | None = None, **kwargs) -> tuple[torch.Tensor, dict]:
        """`model.generate` through the engine (greedy kwargs from the caller).

        In-LLM methods run on the full prompt with the hooks; a pre-LLM method gets its reduced image
        block spliced into `inputs_embeds`. `instruction`: the user's text (the question before the chat
        template), for pre-LLM methods that read it. Returns (new token ids `[n_new]`, generate's output dict).
        """
        input_ids = inputs["input_ids"]
        if not self.pre_llm:
            out = self.model.generate(**inputs, **kwargs, return_dict_in_generate=True)
            return out.sequences[0, input_ids.shape[1]:], out
        return prellm_generate(self, inputs, instruction, **kwargs)

    def _gather(self, kwargs: dict, n: int) -> dict:
        """Gather the full-length layer kwargs to the current sequence of n tokens."""
        st = self.state
        if self.method.positions == "compact":
            index = slice(0, n)  # renumbered 0..n-1: a view, no copy
        else:
            index = st.seq_positions
        out = {}
        if kwargs.get("position_ids") is not None:
            out["position_ids"] = kwargs["position_ids"][:, index]
        cos, sin = kwargs["position_embeddings"]  # [1, N, hd] each
        out["position_embeddings"] = (cos[:, index], sin[:, index])
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor):  # [1, 1, N, N]
            out["attention_mask"] = mask[:, :, index][:, :, :, index]
        return out

    def _decode_kwargs(self, layer_idx: int, args: tuple, kwargs: dict):
        """Decode at a pruned layer: the new tokens' positions (per_layer) and the columns of a materialised mask.

        HF hands every layer the global positions and a mask over the full length; this layer cached only
        what it saw in prefill, so a mask keeps that layer's cached columns + the new ones.
        """
        st = self.state
        if not st.pruned or not self.stage_entering or layer_idx < min(self.stage_entering):
            return None
        out = {}
        if self.decode_positions == "per_layer":
            out.update(self._per_layer_positions(layer_idx, args[0], kwargs))
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor):
            if self.method.positions == "compact":
                cached = torch.arange(st.tokens_per_layer[layer_idx], device=mask.device)
            else:
                cached = st.layer_positions[layer_idx]
            new = torch.arange(st.prompt_len, mask.shape[-1], device=mask.device)
            out["attention_mask"] = mask[..., torch.cat([cached, new])]
        return (args, {**kwargs, **out}) if out else None

    def _per_layer_positions(self, layer_idx: int, hidden: torch.Tensor, kwargs: dict) -> dict:
        """Positions `own cache length + 0..Q-1` (+ the family's decode offset) for the Q new tokens at this layer.

        HF places a generated token at `cache length + offset` (offset 0 for 1-D RoPE, `rope_deltas` on
        Qwen2.5-VL, the same on all three M-RoPE axes); per_layer puts this layer's own cache length there.
        """
        st = self.state
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        own = cache.get_seq_length(layer_idx)  # what this layer cached: its prefill tokens + earlier generated ones
        if own not in st.decode_rope:  # once per distinct cache length and step
            q = hidden.shape[1]
            offset = self.family.decode_offset(self.model)
            ids = torch.arange(own + offset, own + offset + q, device=hidden.device)[None]  # [1, Q]
            st.decode_rope[own] = (ids, self.language_model.rotary_emb(hidden, position_ids=ids))
        ids, cos_sin = st.decode_rope[own]
        return {"position_ids": ids, "position_embeddings": cos_sin}

    def facts(self) -> dict:
        """What the run's method did beyond its config: resolved positions and where its counts come from."""
        facts = {
            "positions": getattr(self.method, "positions", None),
            "decode_positions": self.decode_positions,
            "schedule": getattr(self.method, "schedule_kind", None),
        }
        if getattr(self.method, "stage_source", None):  # the model config's source of its stage layers
            facts["stage_source"] = self.method.stage_source
        return facts

    def _clock(self) -> float:
        if not self.time_scoring:
            return 0.0
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()
