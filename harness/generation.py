"""Generation helpers that need only torch and transformers: per-row stop strings and per-sample seeds.

The lmms-eval model (harness/lmms_model.py) and the benchmarks that drive the engine directly
(harness/throughput.py) stop, cut and seed samples the same way with these.
"""

from __future__ import annotations

import zlib

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
