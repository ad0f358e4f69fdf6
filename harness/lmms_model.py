"""The lmms-eval model: runs each `generate_until` request through the pruning engine, timed.

lmms-eval hands a simple model requests whose `args` are
`(context, gen_kwargs, doc_to_visual, doc_id, task, split)`. Each finished sample is appended to
samples.jsonl at once; a sample already there (a resumed run) is answered from it without running
the model, unless it failed: a failed sample runs again, and its new record supersedes the old one.
A failed sample's response reaches the task hooks as `FAILED_RESPONSE` and its `scores` say
`failed: true`, `score: 0` (harness.scoring: wrong on every benchmark).
"""

from __future__ import annotations

import logging
import os

import torch
from lmms_eval.api.model import lmms
from tqdm import tqdm
from transformers import LogitsProcessorList, StoppingCriteriaList

from harness.engine import PruningEngine
from harness.flops import text_prefill_flops
from harness.generation import (
    StopOnStrings,
    consecutive_groups,
    cut_at,
    model_inputs,
    row_answers,
    row_stops,
    sample_seed,
)
from harness.results import SampleLog
from harness.scoring import FAILED_RESPONSE, scorer_for
from harness.timing import Clock, FirstLogits

LOG = logging.getLogger("prunebench")


class PrunedLlava(lmms):
    """A VLM with a pruning method attached, as an lmms-eval model (greedy).

    At `batch_size` > 1, consecutive requests of one task are answered in left-padded batches, each sample
    pruned exactly as alone (`PruningEngine.generate_batch`); the first `warmup + latency_samples` requests
    of the process run alone first, so the latency statistics stay batch-1 measurements. Batched records
    carry `batch` (size, id, wall time) instead of per-sample timings.

    Args:
        engine: the attached pruning engine (its model is used).
        processor: the LLaVA processor.
        log: where finished samples go (and resumed ones come from).
        prompt: the chat template with `{question}`, e.g. "USER: <image>\\n{question} ASSISTANT:".
        seed: the run seed (random methods draw per sample from it).
        warmup: the first `warmup` samples this process runs are excluded from latency statistics.
        record_kept: store the kept image indices of every stage in each record.
        max_new_tokens: a cap on the task's own `max_new_tokens` (None: no cap).
        image_placeholder: the image's place in `prompt` (removed, with a following newline, for a text-only
            sample): "<image>" for LLaVA, "<|vision_start|><|image_pad|><|vision_end|>" for Qwen2.5-VL.
        batch_size: samples per batch. latency_samples: at batch_size > 1, samples timed alone after warmup.
    """

    def __init__(self, engine: PruningEngine, processor, log: SampleLog, prompt: str, seed: int = 0,
                 warmup: int = 3, record_kept: bool = False, max_new_tokens: int | None = None,
                 image_placeholder: str = "<image>", batch_size: int = 1, latency_samples: int = 20):
        super().__init__()
        self.batch_size, self.latency_samples = batch_size, latency_samples
        self.n_batches = 0
        self.engine, self.model, self.processor = engine, engine.model, processor
        self.log, self.prompt, self.seed, self.warmup = log, prompt, seed, warmup
        self.record_kept = record_kept
        self.max_new_tokens = max_new_tokens
        self.image_placeholder = image_placeholder
        self.device = next(self.model.parameters()).device
        self.clock = Clock(self.device)
        self.n_run = 0
        self.requested: list[tuple[str, int]] = []  # (task, doc_id) of every request, in order

    def loglikelihood(self, requests):
        raise NotImplementedError("prunebench evaluates generation tasks only (output_type: generate_until)")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("prunebench does not support multi-round generation tasks")

    def generate_until(self, requests) -> list[str]:
        """Answer every request; with `batch_size` > 1, the first `warmup + latency_samples` run alone (timed)."""
        todo = []
        for request in requests:
            task, doc_id = request.args[4], request.args[3]
            self.requested.append((task, doc_id))
            if not self.log.done(task, doc_id):  # new, or failed before: (re)run it
                todo.append(request)
        bar = tqdm(total=len(todo), desc="samples", unit="sample", dynamic_ncols=True)
        alone = len(todo) if self.batch_size == 1 else max(0, self.warmup + self.latency_samples - self.n_run)
        for request in todo[:alone]:
            self.log.append(self.run_one(*request.args[:4], request.args[4], request.args[5]))
            bar.update(1)
        for group in consecutive_groups(todo[alone:], self.batch_size, _task_and_settings):
            for record in self.run_batch(group):
                self.log.append(record)
                bar.update(1)
        bar.close()
        return [_response(self.log.get(r.args[4], r.args[3])) for r in requests]

    def run_one(self, context: str, gen_kwargs: dict, doc_to_visual, doc_id: int, task: str, split: str) -> dict:
        """Generate one answer; any failure is recorded in the sample's `error` and the run goes on."""
        record = {"task": task, "doc_id": doc_id, "target": None, "response": "", "error": None}
        doc = None
        try:
            doc = self._open(record, split)
            record.update(self._generate(context, gen_kwargs, doc_to_visual(doc), task, doc_id))
            self._finish(record, doc)
        except Exception as exc:  # a bad sample must not stop the run
            _fail(record, doc, exc)
        record["warmup"] = self.n_run < self.warmup
        self.n_run += 1
        return record

    def _open(self, record: dict, split: str) -> dict:
        """The record's doc (decoding its image: may fail); its target and MME pair / category fields go to the record."""
        doc = self.task_dict[record["task"]][split][record["doc_id"]]
        record["target"] = _target(doc)
        record.update({k: doc[k] for k in ("question_id", "category") if k in doc})  # MME pairs, categories
        return doc

    def _finish(self, record: dict, doc: dict, st=None) -> None:
        """What the engine did (`st`, default the last sample) and the sample's score fields, into the record."""
        record.update(self._engine_record(doc, st))
        scorer = scorer_for(record["task"])
        if scorer is not None:  # the sample's score fields, as the task's aggregation will read them
            record["scores"] = scorer.score(doc, record["response"])

    def _settings(self, gen_kwargs: dict) -> tuple[list[str], int]:
        """(stop strings, max new tokens) of a request."""
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        max_new_tokens = int(gen_kwargs.get("max_new_tokens", 16))
        if self.max_new_tokens is not None:
            max_new_tokens = min(max_new_tokens, self.max_new_tokens)
        return until, max_new_tokens

    def _prompt(self, context: str, visuals: list):
        """(prompt text, RGB image or None) of a sample."""
        images = [v for v in visuals if v is not None] if visuals else []
        if len(images) > 1:
            raise ValueError(f"{len(images)} images in one sample; the models here take one")
        if images:
            return self.prompt.format(question=context), images[0].convert("RGB")
        placeholder = self.image_placeholder
        return self.prompt.replace(f"{placeholder}\n", "").replace(placeholder, "").format(question=context), None

    @torch.no_grad()
    def _generate(self, context: str, gen_kwargs: dict, visuals: list, task: str, doc_id: int) -> dict:
        until, max_new_tokens = self._settings(gen_kwargs)
        text, image = self._prompt(context, visuals)
        inputs = model_inputs(self.processor, [text], [image], self.device, self.model.dtype)
        prompt_len = inputs["input_ids"].shape[1]
        self.engine.sample_seed = sample_seed(self.seed, task, doc_id)
        first = FirstLogits(self.clock)
        stop = StoppingCriteriaList([StopOnStrings(self.processor.tokenizer, until)] if until else [])
        start = self.clock.mark()
        new_tokens, out = self.engine.generate(
            inputs, instruction=context, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
            logits_processor=LogitsProcessorList([first]), stopping_criteria=stop,
            pad_token_id=self.processor.tokenizer.pad_token_id,
        )
        end = self.clock.mark()
        e2e_ms = self.clock.ms(start, end)
        prefill_ms = self.clock.ms(start, first.mark)
        n_new = int(new_tokens.numel())
        cache = out["cache"]
        kv_bytes = sum(layer.keys.numel() + layer.values.numel() for layer in cache.layers) * self.model.dtype.itemsize
        return {
            "response": cut_at(self.processor.tokenizer.decode(new_tokens, skip_special_tokens=True), until),
            "prefill_ms": prefill_ms,
            "decode_ms": (e2e_ms - prefill_ms) / (n_new - 1) if n_new > 1 else None,
            "e2e_ms": e2e_ms,
            "n_new_tokens": n_new,
            "prompt_len": prompt_len,
            "kv_cache_bytes": int(kv_bytes),
        }

    @torch.no_grad()
    def run_batch(self, requests) -> list[dict]:
        """Answer requests of one task in one batch (image and text-only rows apart); records in request order."""
        records, rows = {}, []
        for request in requests:
            context, _, doc_to_visual, doc_id, task, split = request.args
            record = {"task": task, "doc_id": doc_id, "target": None, "response": "", "error": None, "warmup": False}
            records[(task, doc_id)] = record
            doc = None
            try:
                doc = self._open(record, split)
                rows.append((request, record, doc, *self._prompt(context, doc_to_visual(doc))))
            except Exception as exc:  # a bad sample must not stop the run
                _fail(record, doc, exc)
        for has_image in (True, False):
            part = [row for row in rows if (row[4] is not None) == has_image]
            if part:
                records.update({(r["task"], r["doc_id"]): r for r in self._run_rows(part)})
        return [records[(r.args[4], r.args[3])] for r in requests]

    def _run_rows(self, rows: list) -> list[dict]:
        """One batch through the engine; if it fails, each sample alone (so only a bad sample fails)."""
        try:
            until, max_new_tokens = self._settings(rows[0][0].args[1])
            inputs = model_inputs(self.processor, [row[3] for row in rows], [row[4] for row in rows], self.device,
                                  self.model.dtype)
            seeds = [sample_seed(self.seed, r.args[4], r.args[3]) for r, *_ in rows]
            stop = row_stops(self.model, self.processor.tokenizer, until)
            start = self.clock.mark()
            new, _ = self.engine.generate_batch(
                inputs, seeds, [r.args[0] for r, *_ in rows], max_new_tokens=max_new_tokens, do_sample=False,
                num_beams=1, stopping_criteria=StoppingCriteriaList([stop]),
                pad_token_id=self.processor.tokenizer.pad_token_id,
            )
            batch = {"size": len(rows), "id": f"{os.getpid()}-{self.n_batches}", "ms": self.clock.ms(start, self.clock.mark())}
            self.n_batches += 1
            out = []
            answers = row_answers(self.processor.tokenizer, new, stop, until)
            for b, ((_, record, doc, _, _), (text, n_new)) in enumerate(zip(rows, answers)):
                st = self.engine.states[b]
                record.update(response=text, prefill_ms=None, decode_ms=None, e2e_ms=None,
                              n_new_tokens=n_new, prompt_len=st.prompt_len, kv_cache_bytes=self._kv_bytes(st, n_new),
                              batch=batch)
                self._finish(record, doc, st)
                out.append(record)
            return out
        except Exception as exc:
            if len(rows) == 1:
                raise
            LOG.warning("a batch of %d failed (%s: %s); its samples run one at a time", len(rows), type(exc).__name__, exc)
            return [self.run_one(*row[0].args) for row in rows]

    def _kv_bytes(self, st, n_new: int) -> int:
        """The KV cache a sample alone would end with: each layer's prefill tokens + all but the last new token."""
        text = self.model.config.text_config
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        per_token = 2 * text.num_key_value_heads * head_dim * self.model.dtype.itemsize
        return int(sum(n + n_new - 1 for n in st.tokens_per_layer) * per_token)

    def _engine_record(self, doc: dict, st=None) -> dict:
        """What the engine did in this sample's prefill (`st`, default the last one): counts, FLOPs, kept sets."""
        st = st or self.engine.state
        text = self.model.config.text_config
        flops = text_prefill_flops(text, st.tokens_per_layer)
        vanilla = text_prefill_flops(text, [st.prompt_len] * len(st.tokens_per_layer))
        record = {
            "vision_per_layer": st.vision_per_layer,
            "image_tokens": st.image_tokens,  # this sample's image tokens before pruning (varies on some families)
            "kept_fewer": st.kept_fewer,  # image tokens asked for and not kept (a pre-LLM method out of distinct tokens)
            "tokens_per_layer": st.tokens_per_layer,
            "prefill_flops": flops,
            "vanilla_prefill_flops": vanilla,
            "scoring_ms": st.scoring_s * 1000.0 if self.engine.time_scoring else None,
        }
        if self.record_kept:
            record["kept"] = {str(layer): kept for layer, kept in st.kept.items()}
            evidence = doc.get("evidence") if isinstance(doc, dict) else None
            if evidence:
                ev = set(evidence)
                record["evidence_recall"] = {
                    str(layer): len(ev.intersection(kept)) / len(ev) for layer, kept in st.kept.items()
                }
        return record


def _fail(record: dict, doc: dict | None, exc: Exception) -> None:
    """Mark a record failed: its error, and score fields that count it wrong (`failed: true`, `score` 0)."""
    record["error"] = f"{type(exc).__name__}: {exc}"
    scorer = scorer_for(record["task"])
    if scorer is not None:
        record["scores"] = scorer.score_failed(doc)


def _response(record: dict) -> str:
    """What lmms-eval gets: the response, or FAILED_RESPONSE for a failed sample (its hooks score it 0)."""
    return FAILED_RESPONSE if record["error"] is not None else record["response"]


def _task_and_settings(request) -> tuple[str, str]:
    """Requests that may share a batch: the same task and generation settings."""
    return request.args[4], repr(sorted(request.args[1].items()))


def _target(doc) -> str | None:
    for key in ("answer", "target", "label"):
        if isinstance(doc, dict) and key in doc:
            return str(doc[key])
    return None
