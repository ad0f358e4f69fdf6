"""Train the embedded model tiny-llava-shapes from scratch on the synthetic shapes benchmark.

    python -m harness.shapes.train                    # the full recipe (~3 h on 2 CPU cores); rerun to resume
    python -m harness.shapes.train --export-only      # final evaluation + HF checkpoint from the last state
    python -m harness.shapes.train --card-only        # the model card again, from the recorded state
    python -m harness.shapes.train --check            # numerical checks of the packed forward, then exit

On a machine shared with other torch processes, run it with `OMP_WAIT_POLICY=PASSIVE` in the
environment (it must be set before torch is imported): spinning OpenMP threads of concurrent
processes slow each other down several-fold.

Stages over one run state (`state.py`; resumable from `--workdir/state.pt`, written atomically every
`--checkpoint-minutes`), on the tiny LLaVA of `tiny.py`:

1. vision, then align (`vision_stage.py`, `supervision.py`): the tower and projector alone,
   densely supervised per patch; then the projector is re-fitted to a fixed code of each patch's
   attributes.
2. lm (`packing.py`, `curriculum.py`): the language model on packed sequences (an image block +
   ~12 question blocks), a bind phase on colour / shape questions, then a curriculum from 96 image
   tokens to every layout pruning produces.
3. final (`heldout.py`, `export.py`, `card.py`): held-out evaluation, vanilla and through the
   harness's pruning engine with its random method; HF checkpoint, processor and model card in `--out`.

The learning curve goes to `--workdir/curve.jsonl` (and `--out/training_curve.jsonl`). The LLM's
attention is never supervised: that would build one pruning method's criterion into the model.
"""

from __future__ import annotations

import json
import random
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from harness.model import build_word_processor
from harness.shapes import curriculum, data, supervision, vision_stage
from harness.shapes.card import model_card
from harness.shapes.checks import run_checks
from harness.shapes.curriculum import LMSchedule
from harness.shapes.export import export, write_card
from harness.shapes.heldout import (
    eval_items,
    final_metrics,
    load_scoring,
    periodic_metrics,
)
from harness.shapes.options import parse_args
from harness.shapes.packing import (
    Blocks,
    Layout,
    batch_tasks,
    collate,
    lm_hidden,
    register_packed_attention,
)
from harness.shapes.state import (
    Curve,
    StageTimer,
    TrainState,
    load_checkpoint,
    save_checkpoint,
)
from harness.shapes.tiny import build_model, pixel_values, tower_hidden


class Recipe:
    """One training run: `Recipe(args)` sets up (model, data, resumed state), `train(out)` runs the
    remaining stages, `save()` checkpoints. Stages: `train_vision`, `train_align`, `train_lm`, `final`."""

    def __init__(self, args):
        self.args = args
        self.workdir = Path(args.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.state_path = self.workdir / "state.pt"
        self.processor = build_word_processor(data.vocabulary())
        self.blocks = Blocks(self.processor.tokenizer)
        self.model = build_model(self.processor, args.seed)
        self.model.set_attn_implementation({"text_config": register_packed_attention()})  # == SDPA, faster packed
        tower_dim = self.model.config.vision_config.hidden_size
        self.heads = supervision.VisionHeads(tower_dim, self.model.config.text_config.hidden_size)
        self.scoring = load_scoring()
        self.state = TrainState(args=vars(args))
        if self.state_path.exists():
            self.state, weights = load_checkpoint(self.state_path)
            self.model.load_state_dict(weights["model"])
            self.heads.load_state_dict(weights["heads"])
            torch.set_rng_state(weights["torch_rng"])
            print(f"resumed from {self.state_path}: stage={self.state.stage} steps={self.state.step} "
                  f"elapsed={self.state.elapsed['total'] / 60:.1f} min", flush=True)  # fmt: skip
        if args.restart_lm:
            self.restart_lm()
        if args.extend_lm > 0:
            note = self.state.extend_lm(args.extend_lm, args.lr_extend, args.restart_why)
            if note:
                print(f"extend: {note}", flush=True)
        self.curve = Curve(self.workdir / "curve.jsonl", self.state.curve_lines)
        self.clock = StageTimer(self.state.elapsed)
        self.last_save = time.time()
        self.schedule = LMSchedule(args, self.state, self.model, self.log)

    def restart_lm(self) -> None:
        """Keeps the vision stage, discards the language model (and, unless `--keep-align`, the
        projector): the next run re-fits the projector (align) and trains a fresh language model."""
        note = self.state.restart_lm(self.args.keep_align, self.args.restart_why)
        fresh = build_model(self.processor, self.args.seed)
        self.model.model.language_model.load_state_dict(fresh.model.language_model.state_dict())
        print(f"restart: {note}", flush=True)

    @property
    def extension(self) -> dict | None:
        """The latest `--extend-lm` continuation of the language stage (running while stage is "lm"), if any."""
        return self.state.extension

    # ---- setup / save ----------------------------------------------------------------------------
    def record_run(self) -> None:
        """Records this run's flags (what the model card describes) as a stage starts training."""
        self.state.args = vars(self.args)
        self.state.torch_version = torch.__version__

    def save(self, optimizer=None) -> None:
        self.state.elapsed = self.clock.snapshot()
        self.state.curve_lines = len(self.curve.lines)
        self.state.optimizer = optimizer.state_dict() if optimizer is not None else None
        weights = {"model": self.model.state_dict(), "heads": self.heads.state_dict(), "torch_rng": torch.get_rng_state()}
        save_checkpoint(self.state, weights, self.state_path)
        self.last_save = time.time()

    def maybe_save(self, optimizer) -> None:
        if time.time() - self.last_save >= 60 * self.args.checkpoint_minutes:
            self.save(optimizer)

    def stream(self, name: str, seed: int):
        """The stage's image stream, fast-forwarded past the images already used."""
        stream = data.training_batches(seed)
        skip = self.state.images[name]
        if skip:
            print(f"fast-forwarding the {name} stream by {skip} images", flush=True)
            for _ in range(skip):
                next(stream)
        return stream

    def take(self, stream, name: str, n: int) -> list:
        batch = [next(stream) for _ in range(n)]
        self.state.images[name] += n
        return batch

    def log(self, **record) -> None:
        """A learning-curve record of the running stage, stamped with its step and the total time."""
        stage = record.pop("stage", self.state.stage)
        self.curve.log({"step": record.pop("step", self.state.step[stage]), "stage": stage,
                        "elapsed": round(self.clock.total(), 1), **record})  # fmt: skip

    def train(self, out: Path) -> None:
        """Runs the remaining stages (a resumed run continues where the state stands)."""
        if self.state.stage == "vision":
            self.train_vision()
        if self.state.stage == "align":
            self.train_align()
        if self.state.stage == "lm":
            self.train_lm()
        if self.state.stage in ("final", "done"):
            self.final(out)

    # ---- stage 1 (vision_stage.py) ---------------------------------------------------------
    def train_vision(self) -> None:
        """The tower and projector alone, densely supervised per patch (`vision_stage.train_vision`)."""
        vision_stage.train_vision(self)

    def train_align(self) -> None:
        """The projector re-fitted to the patch code, the tower frozen (`vision_stage.train_align`)."""
        vision_stage.train_align(self)

    # ---- stage 2 ---------------------------------------------------------------------------
    def train_lm(self) -> None:
        self.record_run()
        args, model = self.args, self.model
        extension = self.extension
        budget = extension["start_seconds"] + 60 * extension["minutes"] if extension else 60 * args.minutes_lm
        model.model.vision_tower.requires_grad_(False)
        params = list(model.model.multi_modal_projector.parameters()) + list(model.model.language_model.parameters())
        for p in params:
            p.requires_grad_(True)
        if args.lm_projector == "freeze":  # keeps the stage-1 balance of colour/shape/position features
            model.model.multi_modal_projector.requires_grad_(False)  # (AdamW skips params without grads)
        optimizer = torch.optim.AdamW(params, lr=args.lr_lm, betas=(0.9, 0.95), weight_decay=0.01)
        if self.state.optimizer is not None:
            optimizer.load_state_dict(self.state.optimizer)
        code = supervision.patch_code(args.seed, model.config.text_config.hidden_size)
        items = eval_items(args.eval_pope, args.eval_gqa, args.eval_mme)
        robust_items = [item for item in items if item["family"] == "gqa"][: args.eval_robust]
        stream = self.stream("lm", args.seed + 1)
        self.clock.begin("lm")
        last_eval = self.clock.stage("lm") if self.state.step["lm"] else -1e9
        bar = tqdm(total=int(budget), initial=int(min(budget, self.clock.stage("lm"))), desc="lm", unit="s",
                   mininterval=args.bar_seconds)  # fmt: skip
        running = []
        while self.clock.stage("lm") < budget:
            if not self.schedule.binding and self.clock.stage("lm") - last_eval >= 60 * args.eval_minutes:  # (bind phase: layers missing)
                metrics = periodic_metrics(model, self.processor, self.scoring, items, robust_items, args.seed)
                last_eval = self.clock.stage("lm")
                self.state.last_eval = metrics
                self.log(stage="lm", lm_elapsed=round(last_eval, 1), eval=metrics)
                tqdm.write(f"[lm step {self.state.step['lm']}, {last_eval / 60:.1f} min] " + json.dumps(metrics))
                self.save(optimizer)
            step = self.state.step["lm"]
            fraction = min(1.0, self.clock.stage("lm") / budget)
            lr = self.schedule.lm_lr(step, fraction, self.clock.stage("lm"))
            # an extension is a warm restart: the bind phase and the curriculum are behind it
            binding, teacher = (False, 0.0) if extension else self.schedule.bind_status(fraction)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if binding:
                layout = Layout(n_image=96)
            else:
                self.schedule.advance_phase(fraction)
                layout = curriculum.curriculum(self.state.phase, random.Random(f"layout:{args.seed}:{step}"))
            first_image = self.state.images["lm"]
            batch_items = self.take(stream, "lm", args.batch_lm)
            rngs = [random.Random(f"image:{args.seed}:{first_image + i}") for i in range(len(batch_items))]
            pools = [(scene, curriculum.question_pool(scene, qas, rng)) for (_, scene, qas), rng in zip(batch_items, rngs)]
            seqs = curriculum.make_sequences(self.blocks, layout, pools, curriculum.task_weights(self.state.task_loss), args.questions_per_image, rngs,
                                  tasks=curriculum.BIND_TASKS if binding else None, lookup=args.lookup)  # fmt: skip
            batch = collate(seqs, layout, self.blocks.pad)
            model.train()
            with torch.no_grad():
                features = tower_hidden(model, pixel_values([b[0] for b in batch_items], self.processor))[:, 1:]
            projected = model.model.multi_modal_projector(features)  # [B, 576, 64]
            if teacher > 0:  # blend toward the patch code the projector was fitted to
                target = supervision.code_targets(code, supervision.vision_batch_labels([b[1] for b in batch_items]))  # [B, 576, 64]
                projected = teacher * target + (1.0 - teacher) * projected
            hidden, labels = lm_hidden(model, batch, projected, layers=(self.schedule.grow_layers or None) if binding else None)
            selected = labels != -100
            if not selected.any():  # no question of the bind tasks and no lookup pair in this batch
                continue
            logits = model.lm_head(hidden[selected])  # [N, V]
            token_loss = F.cross_entropy(logits, labels[selected], reduction="none")
            loss = token_loss.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, args.clip).item()
            optimizer.step()
            # per-task loss of the answer words (not </s>) -> sampling weights
            flat_tasks = [t for row, sel in zip(batch_tasks(batch), selected.tolist()) for t, s in zip(row, sel) if s]
            per_task = defaultdict(list)
            for t, value in zip(flat_tasks, token_loss.detach().tolist()):
                if t is not None:
                    per_task[t].append(value)
            for t, values in per_task.items():
                self.state.task_loss[t] = 0.98 * self.state.task_loss.get(t, 1.0) + 0.02 * (sum(values) / len(values))
            self.state.step["lm"] = step + 1
            running.append(loss.item())
            bar.update(int(min(budget, self.clock.stage("lm"))) - bar.n)
            bar.set_postfix(loss=f"{loss.item():.3f}", step=step + 1, layout=layout.describe(), refresh=False)
            if (step + 1) % args.log_every == 0:
                self.curve.log({
                    "step": step + 1, "stage": "lm", "elapsed": round(self.clock.total(), 1),
                    "lm_elapsed": round(self.clock.stage("lm"), 1), "loss": round(sum(running) / len(running), 4),
                    "lr": round(lr, 7), "grad_norm": round(grad_norm, 3), "n_image_tokens": layout.n_image,
                    "layout": layout.describe(), "phase": "bind" if binding else self.state.phase, "teacher": round(teacher, 3), "task_loss": {t: round(v, 3) for t, v in self.state.task_loss.items()},
                })  # fmt: skip
                running = []
            self.maybe_save(optimizer)
        bar.close()
        metrics = periodic_metrics(model, self.processor, self.scoring, items, robust_items, args.seed)
        self.state.last_eval = metrics
        self.log(stage="lm", lm_elapsed=round(self.clock.stage("lm"), 1), eval=metrics, final=True)
        tqdm.write("lm stage done: " + json.dumps(metrics))
        self.clock.end()
        self.state.stage = "final"
        self.save(None)

    # ---- stage 3 ---------------------------------------------------------------------------
    def final(self, out: Path) -> None:
        args = self.args
        self.model.eval()
        items = eval_items(args.final_pope, args.final_gqa, args.final_mme)
        final, vanilla_answers = final_metrics(self.model, self.processor, self.scoring, items, args.seed)
        self.state.final = final
        print("final evaluation: " + json.dumps(final, indent=1), flush=True)
        export(self.model, self.processor, self.curve.path, self.card(), out, items[: args.verify_items], vanilla_answers[: args.verify_items])
        self.state.stage = "done"
        self.save(None)


    # ---- export --------------------------------------------------------------------------------
    def card(self) -> str:
        """The model card from the recorded state and learning curve."""
        n_params = sum(p.numel() for p in self.model.parameters())
        return model_card(self.state, self.curve.records(), n_params, len(self.processor.tokenizer))


# ---- command line ------------------------------------------------------------------------------
def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = Recipe(args)
    out = Path(args.out)
    if args.check:
        print(json.dumps(run_checks(recipe.model, recipe.processor, recipe.blocks, args.seed), indent=1))
        return
    if args.export_only:
        recipe.final(out)
        return
    if args.card_only:
        print(f"model card rewritten: {write_card(recipe.card(), out)}")
        return
    recipe.train(out)
    print(f"done: {recipe.clock.total() / 60:.1f} min in all", flush=True)


if __name__ == "__main__":
    main()
