"""Latency: CUDA events on GPU, perf_counter on CPU (docs/methods.md, "Latency, memory and FLOPs").

Per sample: prefill = inputs on the device -> first token's logits (vision tower, projector, scoring
and LLM prefill included); decode per token = (end-to-end - prefill) / (new tokens - 1);
end-to-end = the whole generate call.
"""

from __future__ import annotations

import ctypes
import resource
import time
from pathlib import Path

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


PROC_STATUS = Path("/proc/self/status")
PROC_CLEAR_REFS = Path("/proc/self/clear_refs")


def _proc_status_kb(field: str) -> int | None:
    """A `kB` field of /proc/self/status (Linux), e.g. VmRSS, VmHWM; None elsewhere."""
    try:
        for line in PROC_STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _malloc_trim() -> None:
    """Returns freed heap memory to the system (glibc), so an earlier call's freed activations do not
    count as in use at the start of the next window."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_memory(device: torch.device) -> int:
    """Starts a new peak-memory window and returns the bytes in use at its start.

    CUDA: resets the max-allocated counter (start = allocated bytes). CPU on Linux: writes 5 to
    /proc/self/clear_refs, which resets the process's peak RSS (VmHWM) to its current RSS (start =
    RSS, after glibc's `malloc_trim`). Elsewhere the CPU peak cannot be reset (start = 0, and
    `peak_memory` is the process's peak).
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return int(torch.cuda.memory_allocated(device))
    _malloc_trim()
    try:
        PROC_CLEAR_REFS.write_text("5")
    except OSError:
        return 0
    return 1024 * (_proc_status_kb("VmRSS") or 0)


def peak_memory(device: torch.device) -> tuple[int, str]:
    """Peak memory in bytes and what it measures: CUDA max allocated; on a CPU the peak RSS since
    `reset_peak_memory` (Linux), else the process's peak RSS since it started."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    hwm = _proc_status_kb("VmHWM")
    if hwm is not None:
        return 1024 * hwm, "peak_rss"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "process_peak_rss"
