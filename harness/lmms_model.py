"""The lmms-eval model: runs each `generate_until` request through the pruning engine, timed.

lmms-eval hands a simple model requests whose `args` are
`(context, gen_kwargs, doc_to_visual, doc_id, task, split)`. Each finished sample is appended to
samples.jsonl at once; a sample already there (a resumed run) is answered from it without running
the model.
"""

from __future__ import annotations

import zlib

import torch
from lmms_eval.api.model import lmms
from tqdm import tqdm
from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from harness.engine import PruningEngine
from harness.flops import prefill_flops
from harness.results import SampleLog
from harness.scoring import scorer_for
from harness.timing import Clock, FirstLogits


class StopOnStrings(StoppingCriteria):
    """Stop when the decoded new text contains any of the `until` strings."""

    def __init__(self, tokenizer, until: list[str]):
        self.tokenizer, self.until = tokenizer, until
        self.prompt_len: int | None = None  # known at the first call: everything but the first new token

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        if self.prompt_len is None:
            self.prompt_len = input_ids.shape[1] - 1
        text = self.tokenizer.decode(input_ids[0, self.prompt_len:], skip_special_tokens=True)
        done = any(u in text for u in self.until)
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


def cut_at(text: str, until: list[str]) -> str:
    """The text before the first occurrence of any stop string."""
    for u in until:
        if u:
            text = text.split(u)[0]
    return text.strip()


def sample_seed(seed: int, task: str, doc_id: int) -> int:
    """A stable per-sample seed (the same on every machine and rerun)."""
    return (seed * 1_000_003 + zlib.crc32(f"{task}/{doc_id}".encode())) % (2**31)


class PrunedLlava(lmms):
    """LLaVA with a pruning method attached, as an lmms-eval model (greedy, batch 1).

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
    """

    def __init__(self, engine: PruningEngine, processor, log: SampleLog, prompt: str, seed: int = 0,
                 warmup: int = 3, record_kept: bool = False, max_new_tokens: int | None = None,
                 image_placeholder: str = "<image>"):
        super().__init__()
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
        responses = []
        todo = sum(self.log.get(r.args[4], r.args[3]) is None for r in requests)
        bar = tqdm(total=todo, desc="samples", unit="sample", dynamic_ncols=True)
        for request in requests:
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            self.requested.append((task, doc_id))
            done = self.log.get(task, doc_id)
            if done is None:
                done = self.run_one(context, dict(gen_kwargs), doc_to_visual, doc_id, task, split)
                self.log.append(done)
                bar.update(1)
            responses.append(done["response"])
        bar.close()
        return responses

    def run_one(self, context: str, gen_kwargs: dict, doc_to_visual, doc_id: int, task: str, split: str) -> dict:
        """Generate one answer; any failure is recorded in the sample's `error` and the run goes on."""
        record = {"task": task, "doc_id": doc_id, "target": None, "response": "", "error": None}
        try:
            doc = self.task_dict[task][split][doc_id]  # decodes the image: may fail
            record["target"] = _target(doc)
            record.update({k: doc[k] for k in ("question_id", "category") if k in doc})  # MME pairs, categories
            record.update(self._generate(context, gen_kwargs, doc_to_visual(doc), task, doc_id))
            record.update(self._engine_record(doc))
            scorer = scorer_for(task)
            if scorer is not None:  # the sample's score fields, as the task's aggregation will read them
                record["scores"] = scorer.score(doc, record["response"])
        except Exception as exc:  # a bad sample must not stop the run
            record["error"] = f"{type(exc).__name__}: {exc}"
        record["warmup"] = self.n_run < self.warmup
        self.n_run += 1
        return record

    @torch.no_grad()
    def _generate(self, context: str, gen_kwargs: dict, visuals: list, task: str, doc_id: int) -> dict:
        until = gen_kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_new_tokens = int(gen_kwargs.pop("max_new_tokens", 16))
        if self.max_new_tokens is not None:
            max_new_tokens = min(max_new_tokens, self.max_new_tokens)
        images = [v for v in visuals if v is not None] if visuals else []
        if len(images) > 1:
            raise ValueError(f"{len(images)} images in one sample; LLaVA-1.5 takes one")
        if images:
            text = self.prompt.format(question=context)
            inputs = self.processor(images=images[0].convert("RGB"), text=text, return_tensors="pt")
        else:
            placeholder = self.image_placeholder
            text = self.prompt.replace(f"{placeholder}\n", "").replace(placeholder, "").format(question=context)
            inputs = self.processor.tokenizer(text, return_tensors="pt")
        inputs.pop("attention_mask", None)  # batch 1: no padding
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
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

    def _engine_record(self, doc: dict) -> dict:
        """What the engine did in this sample's prefill: counts, FLOPs, kept sets, evidence recall."""
        st = self.engine.state
        text = self.model.config.text_config
        flops = prefill_flops(st.tokens_per_layer, text.hidden_size, text.intermediate_size)
        vanilla = prefill_flops([st.prompt_len] * len(st.tokens_per_layer), text.hidden_size, text.intermediate_size)
        record = {
            "vision_per_layer": st.vision_per_layer,
            "image_tokens": st.image_tokens,  # this sample's image tokens before pruning (varies on some families)
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


def _target(doc) -> str | None:
    for key in ("answer", "target", "label"):
        if isinstance(doc, dict) and key in doc:
            return str(doc[key])
    return None
