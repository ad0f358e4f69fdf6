"""What the language stage trains on, and when: question draws, layouts per phase, LR schedules.

Everything here is a pure function of its arguments (and the run state it is handed), so the
recipe's loop only says in which order things happen.
"""

from __future__ import annotations

import math
import random

import torch
from tqdm import tqdm

from harness.shapes import data
from harness.shapes.packing import (
    Blocks,
    Layout,
    Sequence,
    add_lookup_block,
    build_sequence,
    choose_patches,
)
from harness.shapes.tiny import N_PATCHES

TASKS = (
    "pope/random", "pope/popular", "pope/adversarial", "gqa/colour", "gqa/shape", "gqa/relation", "gqa/count",
    "mme/existence", "mme/count", "mme/position", "mme/color",
)  # fmt: skip
BASE_TASK_WEIGHT = {  # harder question types are drawn more often into a packed sequence
    "pope/adversarial": 1.25, "gqa/relation": 1.25, "gqa/count": 1.5, "mme/count": 1.5,
    "mme/position": 1.25, "mme/color": 1.25,
}  # fmt: skip
BIND_TASKS = {"gqa/colour", "gqa/shape"}  # the bind phase's questions (with the lookup block)


def question_pool(scene: data.Scene, questions: list[data.QA], rng: random.Random) -> list[data.QA]:
    """The stream's questions plus more gqa questions and another yes/no pair per hard mme category."""
    pool = list(questions)
    extra = data.gqa_questions(scene)
    rng.shuffle(extra)
    pool += [data.QA(data.prompt("gqa", q["question"]), q["answer"], q["evidence"], f"gqa/{q['type']}") for q in extra[:4]]
    for category in ("count", "position", "color"):
        for q in data.mme_questions(scene, rng, category):
            pool.append(data.QA(data.prompt("mme", q["question"]), q["answer"], q["evidence"], f"mme/{category}"))
    seen, unique = set(), []
    for qa in pool:
        if qa.prompt not in seen:
            seen.add(qa.prompt)
            unique.append(qa)
    return unique


def pick_questions(pool: list[data.QA], n: int, weights: dict[str, float], rng: random.Random) -> list[data.QA]:
    """n questions without replacement, probability ~ task weight (Efraimidis-Spirakis keys)."""
    keyed = sorted(pool, key=lambda qa: -rng.random() ** (1.0 / weights.get(qa.task, 1.0)))
    return keyed[:n]



def curriculum(phase: int, rng: random.Random) -> Layout:
    """The layout of one step in curriculum phase 0, 1 or 2 (see `Trainer.advance_phase`).

    0: 96 tokens (objects + background), original positions: breaks the plateau.
    1: 96-256 tokens, some compact positions, shifts and full images.
    2: the mix: 30% full image (vanilla), 15% a switch at a random layer, else a subset of
    24-448 tokens, half original half compact, shifted text, answer jumps.
    """
    if phase == 0:
        return Layout(n_image=96)
    if phase == 1:
        if rng.random() < 0.15:
            return Layout()
        return Layout(
            n_image=rng.choice((96, 128, 192, 256)),
            positions="compact" if rng.random() < 0.3 else "original",
            text_shift=rng.randint(1, 128) if rng.random() < 0.2 else 0,
            answer_jump=rng.random() < 0.5,
            thin=0.2,
        )
    draw = rng.random()
    if draw < 0.30:
        return Layout()
    if draw < 0.45:
        n_image = rng.choice((256, 576))
        return Layout(
            n_image=n_image,
            thin=0.2 if n_image < N_PATCHES else 0.0,
            text_shift=rng.randint(1, 64) if rng.random() < 0.2 else 0,
            switch_layer=rng.randint(1, 20),
            n_switch=round(math.exp(rng.uniform(math.log(24), math.log(n_image // 2)))),
            switch_positions="compact" if rng.random() < 0.6 else "original",
        )
    n_image = round(math.exp(rng.uniform(math.log(24), math.log(448))))
    return Layout(
        n_image=n_image,
        positions="compact" if rng.random() < 0.5 else "original",
        text_shift=rng.randint(1, 128) if rng.random() < 0.25 else 0,
        answer_jump=rng.random() < 0.5,
        thin=0.3,
    )


def make_sequences(blocks: Blocks, layout: Layout, items, weights, n_questions: int, image_rngs,
                   tasks: set[str] | None = None, lookup: bool = False) -> list[Sequence]:
    """One packed sequence per (scene, pool) item under a shared layout; questions only of `tasks`
    if given; plus an attribute-lookup block if `lookup`."""
    seqs = []
    for (scene, pool), rng in zip(items, image_rngs):
        kept = choose_patches(scene, layout.n_image, rng, layout.thin)
        if tasks is not None:
            pool = [qa for qa in pool if qa.task in tasks]
        chosen = pick_questions(pool, n_questions, weights, rng)
        questions = [(blocks.prompt(qa.prompt), blocks.words(qa.answer), qa.task) for qa in chosen]
        seq = build_sequence(blocks, kept, questions)
        if lookup:
            add_lookup_block(seq, blocks, scene, rng)
        if layout.switch_layer is not None:
            seq.kept_switch = choose_patches(scene, layout.n_switch, rng, 0.2, allowed=kept)
        seqs.append(seq)
    return seqs



def cosine_to_10pct(progress: float) -> float:
    """LR factor: cosine from 1 at progress 0 down to 0.1 at progress >= 1."""
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))



def warmup_cosine_lr(peak: float, steps_done: int, warmup_steps: int, progress: float) -> float:
    """The one LR formula of every stage: linear warm-up over `warmup_steps`, times `cosine_to_10pct`.

    Args:
        peak: the stage's LR.
        steps_done: optimizer steps including the current one (>= 1).
        warmup_steps: steps of the linear warm-up.
        progress: position in the decay, 0 (no decay yet) to 1 (10% of `peak`).
    """
    return peak * min(1.0, steps_done / warmup_steps) * cosine_to_10pct(progress)


def task_weights(task_loss: dict[str, float]) -> dict[str, float]:
    """Sampling weight of each question type: its base weight x sqrt(0.05 + running answer loss)."""
    return {t: BASE_TASK_WEIGHT.get(t, 1.0) * math.sqrt(0.05 + task_loss[t]) for t in TASKS}


def pope_answer_loss(task_loss: dict[str, float]) -> float:
    """Running answer loss of the three pope splits (chance ~0.69): drives the curriculum and LR."""
    return sum(task_loss[t] for t in TASKS if t.startswith("pope/")) / 3


def next_phase(phase: int, phase1_start: float | None, fraction: float, pope_loss: float,
               warmup_fraction: float, ramp_fraction: float) -> tuple[int, float | None]:
    """Curriculum phase after this step: (phase, phase1_start).

    0 -> 1 at `warmup_fraction` of the budget (counted from the end of the bind phase) once the pope
    answer loss is below 0.45 (chance ~0.69), or at three times that fraction regardless; 1 -> 2
    after `ramp_fraction - warmup_fraction` of the budget in phase 1.
    """
    if phase == 0 and fraction >= warmup_fraction and (pope_loss < 0.45 or fraction >= 3 * warmup_fraction):
        return 1, fraction
    if phase == 1 and fraction >= phase1_start + ramp_fraction - warmup_fraction:
        return 2, phase1_start
    return phase, phase1_start


def decay_progress(decay_start: float | None, fraction: float) -> float:
    """Position in the language stage's LR decay: 0 until the yes/no plateau breaks (`decay_start`,
    the budget fraction where the pope answer loss first fell below 0.5), then linear to 1 at the end
    of the budget: a cosine from the start decayed the LR while the model sat at chance."""
    if decay_start is None:
        return 0.0
    return (fraction - decay_start) / max(1e-6, 1.0 - decay_start)


def bind_done(task_loss: dict[str, float], fraction: float, bind_target: float, bind_fraction: float) -> bool:
    """The bind phase ends when the gqa colour and shape answer losses are both below `bind_target`
    (chance: ln 8 = 2.08 and ln 6 = 1.79) or at `bind_fraction` of the budget."""
    losses = [task_loss.get(t, 9.0) for t in sorted(BIND_TASKS)]
    return all(v < bind_target for v in losses) or fraction >= bind_fraction


def teacher_weight(fraction: float, bind_end: float, teacher_fraction: float) -> float:
    """After the bind phase, the weight of the patch code in the image block: 1 -> 0 linearly over
    `teacher_fraction` of the budget (the language model moves from clean features to the real ones)."""
    return max(0.0, 1.0 - (fraction - bind_end) / max(1e-6, teacher_fraction))


class LMSchedule:
    """The language stage's decisions over the run state: bind phase, growth, curriculum phase, LR.

    Args:
        args: the recipe's flags.
        state: the run state (a `TrainState`; these methods update it).
        model: the LLaVA model (`grow` zeroes residual outputs of its decoder layers).
        log: writes a learning-curve record (keyword fields).
    """

    def __init__(self, args, state, model, log):
        self.args, self.state, self.model, self.log = args, state, model, log

    def bind_status(self, fraction: float) -> tuple[bool, float]:
        """(bind phase on?, teacher weight) at this LM time fraction (`curriculum.bind_done`,
        `curriculum.teacher_weight`); grows the model when the bind phase has ended."""
        args, state = self.args, self.state
        if args.bind_fraction <= 0:
            return False, 0.0
        if self.binding:
            if not bind_done(state.task_loss, fraction, args.bind_target, args.bind_fraction):
                return True, 1.0
            state.bind_end = fraction
            losses = {t: state.task_loss.get(t, 9.0) for t in sorted(BIND_TASKS)}
            tqdm.write(f"[lm step {state.step['lm']}] bind phase ends at {fraction:.3f} of the budget: "
                       + " ".join(f"{t}={v:.3f}" for t, v in losses.items()))  # fmt: skip
            self.log(stage="lm", bind_end=round(fraction, 4), bind_losses={t: round(v, 4) for t, v in losses.items()})
        if self.grow_layers and not state.grown:
            self.grow()
        return False, teacher_weight(fraction, state.bind_end, args.teacher_fraction)

    @property
    def binding(self) -> bool:
        """The bind phase is on (enabled and not yet ended)."""
        return self.args.bind_fraction > 0 and self.state.bind_end is None

    @property
    def grow_layers(self) -> set[int]:
        """Decoder layers trained alone in the bind phase (`--grow-from`), empty = all layers throughout."""
        return {int(i) for i in self.args.grow_from.split(",") if i.strip()}

    def grow(self) -> None:
        """The other decoder layers join with zero residual outputs (`o_proj`, `down_proj` = 0), so
        the grown model computes exactly what the bind-phase layers computed; all layers then train."""
        with torch.no_grad():
            for i, layer in enumerate(self.model.model.language_model.layers):
                if i not in self.grow_layers:
                    layer.self_attn.o_proj.weight.zero_()
                    layer.mlp.down_proj.weight.zero_()
        self.state.grown = True
        tqdm.write(f"[lm step {self.state.step['lm']}] grown from layers {sorted(self.grow_layers)} to all "
                   f"{len(self.model.model.language_model.layers)} (new layers' residual outputs start at zero)")  # fmt: skip
        self.log(stage="lm", grown=True)

    def advance_phase(self, fraction: float) -> None:
        """Moves the curriculum on (`curriculum.next_phase`); phases count from the end of the bind phase."""
        args, state = self.args, self.state
        pope_loss = pope_answer_loss(state.task_loss)
        phase, phase1_start = next_phase(state.phase, state.phase1_start, fraction - (state.bind_end or 0.0),
                                         pope_loss, args.warmup_fraction, args.ramp_fraction)  # fmt: skip
        if phase == state.phase:
            return
        state.phase, state.phase1_start = phase, phase1_start
        tqdm.write(f"[lm step {state.step['lm']}] curriculum phase {state.phase} (pope answer loss {pope_loss:.3f})")
        self.log(stage="lm", phase=state.phase, pope_loss=round(pope_loss, 4))

    def lm_lr(self, step: int, fraction: float, lm_seconds: float) -> float:
        """Warm-up, then constant until the yes/no plateau breaks (pope answer loss < 0.5), then cosine
        to 10% over the rest of the budget; an extension warm-restarts to its own LR over its minutes."""
        args, state, extension = self.args, self.state, self.state.extension
        if extension:
            progress = (lm_seconds - extension["start_seconds"]) / (60 * extension["minutes"])
            return warmup_cosine_lr(extension["lr"], step + 1 - extension["start_step"], args.warmup_steps, progress)
        pope_loss = pope_answer_loss(state.task_loss)
        if state.decay_start is None and pope_loss < 0.5:
            state.decay_start = fraction
            tqdm.write(f"[lm step {state.step['lm']}] pope answer loss {pope_loss:.3f}: LR decay starts")
            self.log(stage="lm", decay_start=round(fraction, 4), pope_loss=round(pope_loss, 4))
        return warmup_cosine_lr(args.lr_lm, step + 1, args.warmup_steps, decay_progress(state.decay_start, fraction))
