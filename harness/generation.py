"""Generation helpers that need only torch and transformers: inputs, grouping, per-row stops, answers, seeds.

The lmms-eval model (harness/lmms_model.py) and the benchmarks that drive the engine directly
(harness/throughput.py) build inputs, group, stop, cut and seed samples the same way with these.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Iterator

import torch
from transformers import StoppingCriteria


class StopOnStrings(StoppingCriteria):
    """Stop each row when its decoded new text contains any of the `until` strings (or it ends with an EOS id).

    `stopped_at[b]`: how many new tokens row b had when it stopped (None while it runs): in a batch,
    generate pads a stopped row until every row is done, so this is where its answer ends.
    """

    def __init__(self, tokenizer, until: list[str], eos_ids: tuple[int, ...] = ()):
        self.tokenizer, self.until, self.eos_ids = tokenizer, until, set(eos_ids)
        self.prompt_len: int | None = None  # known at the first call: everything but the first new token
        self.stopped_at: list[int | None] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        if self.prompt_len is None:
            self.prompt_len = input_ids.shape[1] - 1
            self.stopped_at = [None] * input_ids.shape[0]
        n_new = input_ids.shape[1] - self.prompt_len
        for b, stopped in enumerate(self.stopped_at):
            if stopped is not None:
                continue
            new = input_ids[b, self.prompt_len:]
            text = self.tokenizer.decode(new, skip_special_tokens=True) if self.until else ""
            if int(new[-1]) in self.eos_ids or any(u in text for u in self.until):
                self.stopped_at[b] = n_new
        done = [stopped is not None for stopped in self.stopped_at]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def cut_at(text: str, until: list[str]) -> str:
    """The text before the first occurrence of any stop string."""
    for u in until:
        if u:
            text = text.split(u)[0]
    return text.strip()


def sample_seed(seed: int, task: str, doc_id: int) -> int:
    """A stable per-sample seed (the same on every machine and rerun)."""
    return (seed * 1_000_003 + zlib.crc32(f"{task}/{doc_id}".encode())) % (2**31)


def model_inputs(processor, texts: list[str], images: list, device, dtype: torch.dtype) -> dict:
    """Processor inputs on `device`: one row as is (no mask: batch 1), several rows left-padded with their mask.

    `images`: one per row, all images or all None (text-only rows go through the tokenizer alone).
    """
    batched = len(texts) > 1
    if batched:
        processor.tokenizer.padding_side = "left"
    if images[0] is not None:
        inputs = processor(images=images, text=texts, return_tensors="pt", padding=batched)
    else:
        inputs = processor.tokenizer(texts, return_tensors="pt", padding=batched)
    if not batched:
        inputs.pop("attention_mask", None)  # batch 1: no padding
    inputs = {k: v.to(device) for k, v in inputs.items()}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    return inputs


def row_stops(model, tokenizer, until: list[str]) -> StopOnStrings:
    """A batch's stopping criterion: each row at its stop strings or the model's EOS ids."""
    eos = model.generation_config.eos_token_id
    return StopOnStrings(tokenizer, until, eos if isinstance(eos, list) else [eos])


def row_answers(tokenizer, new: torch.Tensor, stop: StopOnStrings, until: list[str]) -> list[tuple[str, int]]:
    """(answer text cut at the stop strings, new-token count) of each row of `new` `[B, T]`."""
    out = []
    for b in range(new.shape[0]):
        n_new = (stop.stopped_at[b] if stop.stopped_at else None) or new.shape[1]  # where this row's answer ends
        out.append((cut_at(tokenizer.decode(new[b, :n_new], skip_special_tokens=True), until), n_new))
    return out


def consecutive_groups(items: Iterable, size: int, key: Callable) -> Iterator[list]:
    """Consecutive items with the same `key`, up to `size` each (how batched runs group their requests)."""
    group: list = []
    for item in items:
        if group and (len(group) == size or key(item) != key(group[0])):
            yield group
            group = []
        group.append(item)
    if group:
        yield group
