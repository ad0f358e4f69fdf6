"""Latency: CUDA events on GPU, perf_counter on CPU (METHODS.md, "Latency protocol").

Per sample: prefill = inputs on the device -> first token's logits (vision tower, projector, scoring
and LLM prefill included); decode per token = (end-to-end - prefill) / (new tokens - 1);
end-to-end = the whole generate call.
"""

from __future__ import annotations

import resource
import time

import numpy as np
import torch
from transformers import LogitsProcessor


class Clock:
    """Marks points in time on one device and reads the milliseconds between them."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.name = "cuda_event" if self.cuda else "perf_counter"

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def ms(self, start, end) -> float:
        if self.cuda:
            end.synchronize()
            return start.elapsed_time(end)
        return (end - start) * 1000.0


class FirstLogits(LogitsProcessor):
    """A no-op logits processor that marks the time the first token's logits exist (end of prefill)."""

    def __init__(self, clock: Clock):
        self.clock = clock
        self.mark = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.mark is None:
            self.mark = self.clock.mark()
        return scores


def stats(values: list[float]) -> dict[str, float | None]:
    """mean, p50, p90 of a list (None when empty)."""
    if not values:
        return {"mean": None, "p50": None, "p90": None}
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "p50": float(np.percentile(arr, 50)), "p90": float(np.percentile(arr, 90))}


def peak_memory(device: torch.device) -> tuple[int, str]:
    """Peak memory in bytes and what it measures: CUDA max allocated, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "process_peak_rss"
