"""The pruning engine: the only place that touches transformers internals.

How it works (prefill, then decode; docs/architecture.md, "The data path"):

0. What differs between model families (decoder layers, the image token, fixed or per-sample image
   counts, decode position offsets, what pre-LLM methods may use) comes from `harness/families`; the
   engine never looks at the model's class. Where the image-token count varies per sample, each sample
   gets the schedule of its own count at the same fraction budget/576.
1. A forward pre-hook on the VLM sees every call. A call on an empty cache is a prefill: the engine
   finds each sample's image block from the input ids and starts one `PrefillState` per sample.
2. The language model runs on an attention function registered with transformers'
   `AttentionInterface` (`harness/attention.py`). It calls the normal SDPA kernel and, at a stage
   layer, also computes the softmax attention of the query rows the method asks for: `[H, R, N]`.
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
6. Batches (`generate_batch`): rows are left-padded; every step above runs per sample on that sample's
   own tokens (`sequence[b, pad_b:]`), so each sample's kept sets, positions and records are those of
   batch 1. After a stage the rows are left-padded again and pruned layers get the engine's own mask
   (`harness/layout.py`).
"""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

from harness import layout
from harness.attention import ATTN_NAME, VISION_ATTN_NAME, attention_rows
from harness.budget import check_schedule
from harness.families import REFERENCE_TOKENS, check_family, family_of, scaled_budget
from harness.methods.base import DECODE_POSITIONS, PruningMethod, Stage, check_choice
from harness.prellm import prellm_generate, prellm_generate_batch
from harness.schedule import Schedule
from harness.selection import apply_stage, score_before
from harness.state import PrefillState, image_block

__all__ = ["ATTN_NAME", "VISION_ATTN_NAME", "PrefillState", "PruningEngine"]


class PruningEngine:
    """Attach a pruning method to a VLM (any family in `harness/families`).

        engine = PruningEngine(model, FastV(budget=64))
        with engine:
            new_tokens, out = engine.generate(inputs, max_new_tokens=8, do_sample=False)
        engine.state.vision_per_layer  # image tokens that entered each layer

    Args:
        model: a VLM of a supported family (`harness.families.family_of`) with SDPA attention.
        method: the pruning method (see `harness/methods/base.py`).
        record_kept: keep the kept original image indices of every stage in `state.kept`.
        time_scoring: measure the time of scoring + selection + gathering (synchronises CUDA).
    """

    def __init__(self, model: nn.Module, method: PruningMethod, record_kept: bool = False,
                 time_scoring: bool = False):
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
        check_family(self.family, method)
        self.decision: Schedule = method.schedule(self.num_layers, self.num_image_tokens)  # what the run records
        self.stages: list[Stage] = self.decision.stages  # the last prefill's (first sample's) schedule
        self.decode_positions = check_choice(
            "method.decode_positions", getattr(method, "decode_positions", "global"), DECODE_POSITIONS
        )
        # A pre-LLM method has no stages: its budget is the size of what `reduce` returns (checked in `generate`).
        check_schedule(self.stages, self.decision.budget, self.num_layers, self.num_image_tokens, method.name,
                       check_budget=not self.pre_llm and getattr(method, "schedule_kind", "matched") == "matched")
        self._schedules = {self.num_image_tokens: (method, self.stages)}
        self.sample_seed = 0  # the seed of the next batch-1 sample (`generate`)
        self._batch_seeds: list[int] | None = None  # per row, while `generate_batch` runs
        self.states: list[PrefillState] = []
        self.vision_capture: tuple[torch.Tensor, torch.Tensor] | None = None
        self.capture_s = 0.0  # time of the CLS-attention capture inside the tower pass (time_scoring)
        self._handles: list = []
        self._saved_attn: dict[str, str] = {}
        self._begin_batch([])

    @property
    def state(self) -> PrefillState | None:
        """The state of the last batch-1 sample (the first sample of a batch)."""
        return self.states[0] if self.states else None

    @state.setter
    def state(self, st: PrefillState | None) -> None:
        self._begin_batch([] if st is None else [st])

    def _schedule_for(self, image_tokens: int) -> tuple[PruningMethod, list[Stage]]:
        """The method and schedule of a sample with `image_tokens` image tokens (budget: the same fraction of 576)."""
        if image_tokens not in self._schedules:
            method = copy.copy(self.method)
            method.budget = scaled_budget(self.method.budget, image_tokens)
            decision = method.schedule(self.num_layers, image_tokens)
            check_schedule(decision.stages, decision.budget, self.num_layers, image_tokens, method.name,
                           check_budget=not self.pre_llm and getattr(method, "schedule_kind", "matched") == "matched")
            self._schedules[image_tokens] = (method, decision.stages)
        return self._schedules[image_tokens]

    def _begin_batch(self, states: list[PrefillState], prompt_len: int = 0) -> None:
        """Start a prefill of `states` (one per row) over a padded prompt of `prompt_len` tokens."""
        self.states = states
        self.prompt_len = prompt_len  # padded; layer 0's cache length
        self.generated = 0
        self.decoding = False
        self.pruned = False  # some sample has been pruned: layers get gathered kwargs
        self.gathered: dict | None = None  # kwargs gathered for the current kept sets (reused by later layers)
        self.decode_rope: dict = {}  # per decode step: (cache length, pads) -> (ids, (cos, sin))
        self.layer_lens: list[int] = []  # per layer: the padded prefill length it cached
        query_rows = getattr(self.method, "query_rows", None)
        needs_keys = getattr(self.method, "needs_keys", False)
        layers = {s.layer for st in states for s in st.stages if not s.before}
        self.score_layers = layers if query_rows else set()
        self.key_layers = layers if needs_keys else set()
        self.entering = {s.enters for st in states for s in st.stages}
        if states:
            self.stages = states[0].stages

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
                hook = lambda module, args, kwargs, idx=idx: self._layer_pre_hook(idx, module, args, kwargs)
                self._handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
        for key in wanted:
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
        """Start new samples on a prefill call; check positions on decode calls."""
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = cache.get_seq_length() if cache is not None else 0
        if past == 0:
            if input_ids is None:
                raise ValueError("the pruning engine needs input_ids in prefill (to find the image block)")
            batch, n = input_ids.shape
            pads = layout.left_pads(kwargs.get("attention_mask"), batch, n)
            seeds = self._batch_seeds or [self.sample_seed] * batch
            self._begin_batch([self._new_state(input_ids[b, pads[b]:], seeds[b], pads[b]) for b in range(batch)], n)
        elif self.states:
            self.decoding = True
            expected = self.prompt_len + self.generated
            # Layer 0 is never pruned, so HF's cache length is the full one and positions continue from N.
            assert past == expected, f"cache holds {past} positions at layer 0, expected {expected}"
            self.generated += (input_ids if input_ids is not None else kwargs["inputs_embeds"]).shape[1]
            self.decode_rope = {}
        return None

    def _new_state(self, ids: torch.Tensor, seed: int = 0, pad: int = 0) -> PrefillState:
        """The state of one sample from its own (unpadded) input ids `[n]`."""
        start, end = image_block(ids, self.image_token_id, self.fixed_image_tokens)
        method, stages = self.method, self._schedules[self.num_image_tokens][1]
        if end > start and self.fixed_image_tokens is None:
            method, stages = self._schedule_for(end - start)
        n, device = ids.shape[0], ids.device
        return PrefillState(
            prompt_len=n, image_tokens=end - start, image_span=(start, end),
            seq_positions=torch.arange(n, device=device), kept_image=torch.arange(end - start, device=device),
            method=method, stages=stages if end > start else [], seed=seed, pad=pad, orig_pad=pad,
        )

    def capture(self, module, query: torch.Tensor, key: torch.Tensor, attention_mask) -> None:
        """At a stage layer in prefill, keep each sample's attention rows (and keys) the method asks for.

        Args:
            query: `[B, H, n, D]` after RoPE; key: `[B, H_kv, n, D]` (not expanded for GQA).
        """
        layer_idx = module.layer_idx
        if self.decoding or (layer_idx not in self.score_layers and layer_idx not in self.key_layers):
            return
        for b, st in enumerate(self.states):
            stage_layers = {s.layer for s in st.stages if not s.before}
            if layer_idx not in stage_layers:
                continue
            p = st.pad
            if layer_idx in self.key_layers:
                st.keys[layer_idx] = key[b, :, p:]  # [H_kv, n, D] after RoPE: a view, no copy
            if layer_idx in self.score_layers:
                t0 = self._clock()
                n = query.shape[2] - p
                if st.method.query_rows == "last":
                    rows = torch.tensor([n - 1], device=query.device)
                else:  # "text": everything after the image block
                    rows = torch.arange(st.image_span[1], n, device=query.device)
                mask = attention_mask[b:b + 1, :, p:, p:] if isinstance(attention_mask, torch.Tensor) else None
                st.scores[layer_idx] = attention_rows(module, query[b:b + 1, :, p:], key[b:b + 1, :, p:], rows, mask)
                st.scoring_s += self._clock() - t0

    def _layer_pre_hook(self, layer_idx: int, layer, args: tuple, kwargs: dict):
        if not self.states:
            return None
        if self.decoding:
            return self._decode_kwargs(layer_idx, args, kwargs)
        hidden = args[0]  # [B, n, d]
        if layer_idx == 0:
            for b, st in enumerate(self.states):
                st.input_embeds = hidden[b, st.pad:]
        if layer_idx in self.entering:
            hidden = self._apply_stages(layer_idx, layer, hidden, kwargs)
        for st in self.states:
            start, end = st.image_span
            st.vision_per_layer.append(end - start)
            st.tokens_per_layer.append(hidden.shape[1] - st.pad)
            st.layer_positions.append(st.seq_positions)
            st.layer_pads.append(st.pad)
        self.layer_lens.append(hidden.shape[1])
        if self.pruned and self.gathered is None:
            t0 = self._clock()
            self.gathered = self._gather(kwargs, hidden.shape[1])
            self._add_scoring_time(self._clock() - t0)
        if layer_idx in self.score_layers:
            cos, sin = (self.gathered if self.pruned else kwargs)["position_embeddings"]  # [B, n, hd] each
            for b, st in enumerate(self.states):
                st.stage_rope[layer_idx] = (cos[min(b, cos.shape[0] - 1), st.pad:], sin[min(b, sin.shape[0] - 1), st.pad:])
        if not self.pruned:
            return None
        return (hidden, *args[1:]), {**kwargs, **self.gathered}

    def _apply_stages(self, layer_idx: int, layer, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
        """Each sample's stage entering this layer (PDrop's scoring first), then the rows left-padded again."""
        rows, changed = [], False
        for b, st in enumerate(self.states):
            row = hidden[b:b + 1, st.pad:]  # [1, n_b, d]
            entry = st.entering.get(layer_idx)
            if entry is not None:
                stage_index, stage = entry
                t0 = self._clock()
                if stage.before:
                    self._score_before(b, st, layer, row, kwargs)
                new = apply_stage(st, stage_index, stage, row, layer_idx, self.language_model.norm, self.record_kept)
                st.scoring_s += self._clock() - t0
                changed |= new is not row
                row = new
            rows.append(row)
        if not changed:
            return hidden
        hidden, pads = layout.left_pad(rows)
        for st, pad in zip(self.states, pads):
            st.pad = pad
        self.pruned, self.gathered = True, None
        return hidden

    def _score_before(self, b: int, st: PrefillState, layer, hidden: torch.Tensor, kwargs: dict) -> None:
        """PDrop's scoring of one sample's layer input `[1, n, d]` at the current positions."""
        if self.pruned and self.gathered is None:
            self.gathered = self._gather(kwargs, self.layer_lens[-1] if self.layer_lens else hidden.shape[1])
        cos, sin = (self.gathered if self.pruned else kwargs)["position_embeddings"]  # [B, n, hd]
        row = min(b, cos.shape[0] - 1)
        score_before(st, layer, hidden, cos[row:row + 1, st.pad:], sin[row:row + 1, st.pad:])

    # ---------------------------------------------------------------- generate
    @torch.no_grad()
    def generate(self, inputs: dict, instruction: str | None = None, **kwargs) -> tuple[torch.Tensor, dict]:
        """`model.generate` of one sample through the engine (greedy kwargs from the caller).

        In-LLM methods run on the full prompt with the hooks; a pre-LLM method gets its reduced image
        block spliced into `inputs_embeds`. `instruction`: the user's text (the question before the chat
        template), for pre-LLM methods that read it. Returns (new token ids `[n_new]`, generate's output dict).
        """
        if self.pre_llm:
            return prellm_generate(self, inputs, instruction, **kwargs)
        new, out = self.generate_batch(inputs, [self.sample_seed], **kwargs)
        return new[0], out

    @torch.no_grad()
    def generate_batch(self, inputs: dict, seeds: list[int], instructions: list[str | None] | None = None,
                       **kwargs) -> tuple[torch.Tensor, dict]:
        """`model.generate` of a left-padded batch; row b is pruned as sample b alone would be.

        Args:
            inputs: processor outputs for B rows (`attention_mask` marks the left padding).
            seeds: the sample seed of each row. instructions: each row's question (pre-LLM methods).

        Returns:
            (new token ids `[B, T]`, padded after a row stops; generate's output dict). `self.states[b]` holds
            row b's record.
        """
        ids = inputs["input_ids"]
        layout.left_pads(inputs.get("attention_mask"), ids.shape[0], ids.shape[1])  # refuse right padding up front
        if len(seeds) != ids.shape[0]:
            raise ValueError(f"{len(seeds)} seeds for a batch of {ids.shape[0]}")
        if self.pre_llm:
            if ids.shape[0] == 1 and "attention_mask" not in inputs:  # batch 1: exactly `generate`
                self.sample_seed = seeds[0]
                new, out = prellm_generate(self, inputs, (instructions or [None])[0], **kwargs)
                return new[None], out
            return prellm_generate_batch(self, inputs, seeds, instructions or [None] * ids.shape[0], **kwargs)
        self._batch_seeds = list(seeds)
        try:
            out = self.model.generate(**inputs, **kwargs, return_dict_in_generate=True)
        finally:
            self._batch_seeds = None
        return out.sequences[:, inputs["input_ids"].shape[1]:], out

    # ---------------------------------------------------------------- layer inputs
    def _gather(self, kwargs: dict, n: int) -> dict:
        """The full-length layer kwargs gathered to the current sequences of n (padded) tokens."""
        return layout.gather_inputs(self.states, kwargs, n, compact=self.method.positions == "compact")

    def _decode_kwargs(self, layer_idx: int, args: tuple, kwargs: dict):
        """Decode at a pruned layer: the new tokens' positions (per_layer) and the columns of the mask.

        HF hands every layer the global positions and a mask over the full length; this layer cached only
        what it saw in prefill, so the mask keeps that layer's cached columns + the new ones.
        """
        if not self.pruned or layer_idx < min(self.entering):
            return None
        out = {}
        if self.decode_positions == "per_layer":
            out.update(self._per_layer_positions(layer_idx, args[0], kwargs))
        mask = layout.decode_mask(self.states, layer_idx, kwargs.get("attention_mask"), args[0], self.layer_lens[layer_idx],
                                  self.prompt_len, self.generated, compact=self.method.positions == "compact")
        if mask is not None:
            out["attention_mask"] = mask
        return (args, {**kwargs, **out}) if out else None

    def _per_layer_positions(self, layer_idx: int, hidden: torch.Tensor, kwargs: dict) -> dict:
        """Each row's new tokens at this layer's own cache length (`harness.layout.per_layer_positions`)."""
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        offsets = [self.family.decode_offset(self.model, b, st.orig_pad) for b, st in enumerate(self.states)]
        return layout.per_layer_positions(self.states, layer_idx, cache.get_seq_length(layer_idx), hidden, offsets,
                                          self.language_model.rotary_emb, self.decode_rope)

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

    def _add_scoring_time(self, seconds: float) -> None:
        """Shared work (gathering a batch's layer inputs) counts for each sample in equal shares."""
        for st in self.states:
            st.scoring_s += seconds / len(self.states)

    def _clock(self) -> float:
        if not self.time_scoring:
            return 0.0
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()
