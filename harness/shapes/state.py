"""The recipe's run state: one typed record, saved atomically with the weights in `state.pt`.

Everything the model card reports is read from this record (the recorded training flags included),
never from the command line of the run that writes the card.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from harness.shapes.curriculum import TASKS

STAGES = ("vision", "align", "lm")  # trained in this order; then "final" (evaluate + export), then "done"


def _per_stage(value):
    return lambda: dict.fromkeys(STAGES, value)


@dataclass
class TrainState:
    """Where a training run stands. Saved as a plain dict (`asdict`) next to the weights.

    Attributes:
        stage: "vision", "align", "lm", "final" or "done".
        step / images / elapsed: optimizer steps, images drawn and seconds per stage; `elapsed`
            also holds "total" (all of it, evaluations included) and "discarded_lm".
        task_loss: running answer loss per question type (sampling weights, curriculum, LR decay).
        curve_lines: learning-curve lines written when the state was saved (resume truncates to it).
        optimizer: the running stage's optimizer state, None between stages.
        phase / phase1_start: curriculum phase (0, 1, 2) and the budget fraction where phase 1 began.
        decay_start: budget fraction where the language stage's LR decay began (None: not yet).
        bind_end / grown: budget fraction where the bind phase ended; whether the other layers joined.
        last_eval: the latest held-out evaluation.
        vision_final / align_final / final: held-out results at the end of each stage.
        align_scale: the tower-feature scale the projector was fitted at (folded in afterwards).
        discarded: language stages discarded by `--restart-lm` (steps, minutes, last evaluation, why).
        extensions: `--extend-lm` continuations (start seconds and step, minutes, LR, evaluation before).
        notes: the run history, one entry per event.
        args: the flags of the latest run that trained or exported (what the model card describes).
        torch_version: torch of that run.
    """

    stage: str = "vision"
    step: dict[str, int] = field(default_factory=_per_stage(0))
    images: dict[str, int] = field(default_factory=_per_stage(0))
    elapsed: dict[str, float] = field(default_factory=lambda: {"total": 0.0, **dict.fromkeys(STAGES, 0.0)})
    task_loss: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TASKS, 1.0))
    curve_lines: int = 0
    optimizer: dict | None = None
    phase: int = 0
    phase1_start: float | None = None
    decay_start: float | None = None
    bind_end: float | None = None
    grown: bool = False
    last_eval: dict = field(default_factory=dict)
    vision_final: dict | None = None
    align_final: dict | None = None
    final: dict | None = None
    align_scale: float | None = None
    discarded: list[dict] = field(default_factory=list)
    extensions: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    args: dict = field(default_factory=dict)
    torch_version: str | None = None

    @classmethod
    def from_dict(cls, saved: dict) -> TrainState:
        """The record from a saved dict, including the free-form dicts of earlier checkpoints
        (`note` as one "; "-joined string, `bind` as a dict, no align stage)."""
        saved = dict(saved)
        if "note" in saved:
            saved["notes"] = [n.strip() for n in (saved.pop("note") or "").split(";") if n.strip()]
        if "bind" in saved:
            bind = saved.pop("bind") or {}
            saved["bind_end"], saved["grown"] = bind.get("end"), bool(bind.get("grown", False))
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(saved) - names)
        if unknown:
            raise ValueError(f"state.pt has unknown keys {unknown} (known: {sorted(names)})")
        state = cls(**saved)
        for key in ("step", "images", "elapsed"):  # checkpoints written before the align stage existed
            getattr(state, key).setdefault("align", 0)
        return state

    @property
    def extension(self) -> dict | None:
        """The latest `--extend-lm` continuation of the language stage (running while stage is "lm")."""
        return self.extensions[-1] if self.extensions else None

    def restart_lm(self, keep_align: bool, why: str) -> str:
        """Discards the language stage (and the align stage unless `keep_align`); returns the history
        note. The caller resets the weights. The discarded time stays in the total."""
        if self.stage == "vision":
            raise ValueError("--restart-lm: the vision stage has not finished yet (nothing to restart)")
        if keep_align and self.step["align"] == 0:
            raise ValueError("--restart-lm --keep-align: the align stage has not run (nothing to keep)")
        redo = ("lm",) if keep_align else ("align", "lm")
        minutes = sum(self.elapsed[key] for key in redo) / 60
        self.elapsed["discarded_lm"] = self.elapsed.get("discarded_lm", 0.0) + 60 * minutes
        entry = {"steps": dict(self.step), "minutes": round(minutes, 1), "last_eval": self.last_eval}
        if why:
            entry["why"] = why
        self.discarded.append(entry)
        for key in redo:
            self.step[key] = self.images[key] = 0
            self.elapsed[key] = 0.0
        self.stage, self.optimizer, self.phase, self.phase1_start, self.decay_start = redo[0], None, 0, None, None
        self.last_eval, self.final, self.task_loss = {}, None, dict.fromkeys(TASKS, 1.0)
        self.bind_end, self.grown, self.extensions = None, False, []
        what = ("the language model" if keep_align else
                "the projector was re-fitted to the patch code (align stage) and the language model")  # fmt: skip
        return self.add_note(f"after {minutes:.1f} min of language stage {what} trained again from scratch (--restart-lm)")

    def extend_lm(self, minutes: float, lr: float, why: str) -> str | None:
        """Reopens a finished language stage for `minutes` more at peak LR `lr`; returns the history
        note, or None when the extension is already running (a resume)."""
        if self.stage == "lm" and self.extensions:
            return None
        if self.stage not in ("final", "done"):
            raise ValueError(f"--extend-lm: the language stage has not finished (stage={self.stage!r}); "
                             "resume without --extend-lm first")  # fmt: skip
        before = (self.final or {}).get("vanilla") or self.last_eval  # held-out, vanilla
        self.extensions.append({"start_seconds": self.elapsed["lm"], "start_step": self.step["lm"],
                                "minutes": minutes, "lr": lr, "before": before})  # fmt: skip
        self.stage, self.optimizer, self.final = "lm", None, None
        note = (f"after {self.elapsed['lm'] / 60:.1f} min the language stage was continued for {minutes:g} min "
                f"(--extend-lm, LR warm restart to {lr:g}, cosine to 10%)")  # fmt: skip
        return self.add_note(note + (f": {why}" if why else ""))

    def add_note(self, note: str) -> str:
        """Appends to the run history shown in the model card; returns the note."""
        self.notes.append(note)
        return note


def save_checkpoint(state: TrainState, weights: dict, path: Path) -> None:
    """Writes the record and `weights` (model, heads, torch_rng) to `path` atomically."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save({**asdict(state), **weights}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_checkpoint(path: Path) -> tuple[TrainState, dict]:
    """(the record, its weights: model, heads, torch_rng) from `path`."""
    saved = torch.load(path, map_location="cpu", weights_only=False)
    weights = {key: saved.pop(key) for key in ("model", "heads", "torch_rng")}
    return TrainState.from_dict(saved), weights


class Curve:
    """curve.jsonl, truncated on resume to the lines the checkpoint knew about."""

    def __init__(self, path: Path, keep_lines: int):
        self.path = path
        lines = path.read_text().splitlines() if path.exists() else []
        self.lines = lines[:keep_lines]
        path.write_text("".join(line + "\n" for line in self.lines))

    def log(self, record: dict) -> None:
        line = json.dumps(record)
        self.lines.append(line)
        with self.path.open("a") as f:
            f.write(line + "\n")

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.lines]


class StageTimer:
    """Wall-clock seconds, cumulative across resumes: in all and per stage ("vision", "align", "lm")."""

    def __init__(self, elapsed: dict):
        self.offset = dict(elapsed)
        self.start = time.time()
        self.running: str | None = None
        self.stage_start = 0.0

    def total(self) -> float:
        return self.offset.get("total", 0.0) + time.time() - self.start

    def begin(self, stage: str) -> None:
        self.running, self.stage_start = stage, time.time()

    def stage(self, stage: str) -> float:
        running = time.time() - self.stage_start if stage == self.running else 0.0
        return self.offset.get(stage, 0.0) + running

    def end(self) -> None:
        if self.running is not None:
            self.offset[self.running] = self.stage(self.running)
            self.running = None

    def snapshot(self) -> dict:
        out = dict(self.offset)
        out["total"] = self.total()
        if self.running is not None:
            out[self.running] = self.stage(self.running)
        return out
