"""Train the CLIP text tower paired with the embedded model's (frozen) vision tower, for CDPruner.

    python -m harness.shapes.train_text              # ~5 min on 1 CPU thread; rerun to resume
    python -m harness.shapes.train_text --card-only  # the model card again, from the recorded state

Stages over one state (`--workdir/state.pt`, written atomically every `--checkpoint-minutes` and at every
evaluation; `clip_text.py` holds the model, texts, loss and metrics):

1. pool: `--pool` training images (a stream of training seed `--seed + 100`, disjoint from the evaluation
   seeds) through the frozen tower once; their feature-layer patch states (fp16), scenes and texts are cached in
   `--workdir/pool/` shard by shard.
2. train: `--steps` AdamW steps, each on `--batch` pool images with `--texts` texts each (half descriptions, half
   questions), loss `clip_text.contrastive_loss` (patch-level + image-level InfoNCE); held-out evaluation every
   `--eval-every` steps (text -> image retrieval, evidence recall of CDPruner's relevance).
3. final: the full held-out evaluation, export to `--out` as a transformers `CLIPModel` (the tower copied,
   tokenizer, curve, model card), reloaded through `harness.text_encoder.load_text_tower` and compared.

Deterministic for a seed on one thread: the weights come from `torch.manual_seed(seed)`, the pool from seeded
streams, each step's batch from `random.Random(f"{seed}:{step}")`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import tempfile
import time
from pathlib import Path

import torch

from harness.model import ASSETS, load_llava
from harness.shapes import clip_text, data
from harness.shapes.export import write_card
from harness.text_encoder import ClipTextTower, load_text_tower

SHARD = 64  # pool images per cache file


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Train the CLIP text tower of the embedded model's vision tower.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default=str(ASSETS / clip_text.ASSET), help="CLIP checkpoint directory")
    p.add_argument("--workdir", default="harness/shapes/checkpoints/text", help="state.pt, pool/, curve.jsonl")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--pool", type=int, default=1024, help="training images (multiple of 64)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=32, help="images per step")
    p.add_argument("--texts", type=int, default=4, help="texts per image per step")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--checkpoint-minutes", type=float, default=1.0)
    p.add_argument("--card-only", action="store_true")
    return p.parse_args(argv)


def atomic_save(obj, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class TextRecipe:
    """`TextRecipe(args)` sets up (the LLaVA, a fresh or resumed CLIP), `run()` does the remaining stages."""

    def __init__(self, args):
        self.started = time.time()  # this process (model loading and evaluations included)
        self.args = args
        self.workdir = Path(args.workdir)
        (self.workdir / "pool").mkdir(parents=True, exist_ok=True)
        self.llava, self.processor = load_llava(pretrained="tiny-llava-shapes", dtype="float32", device="cpu")
        self.tokenizer = clip_text.text_tokenizer()
        self.clip = clip_text.build_clip(self.llava, self.tokenizer, args.seed)
        self.log_patch_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.params = [*self.clip.text_model.parameters(), *self.clip.text_projection.parameters(),
                       *self.clip.visual_projection.parameters(), self.clip.logit_scale, self.log_patch_scale]
        self.optimizer = torch.optim.AdamW(self.params, lr=args.lr, weight_decay=0.01)
        self.state = {"stage": "pool", "step": 0, "elapsed": {"pool": 0.0, "train": 0.0, "final": 0.0},
                      "wall": 0.0, "cpu": 0.0, "curve": [], "final": None, "args": vars(args),
                      "torch": torch.__version__}
        path = self.workdir / "state.pt"
        if path.exists():
            saved = torch.load(path, map_location="cpu", weights_only=False)
            self.clip.load_state_dict(saved["clip"])
            self.log_patch_scale.data.copy_(saved["log_patch_scale"])
            self.optimizer.load_state_dict(saved["optimizer"])
            self.state = saved["state"]
            print(f"resumed from {path}: stage={self.state['stage']} step={self.state['step']}", flush=True)
        self.state["args"] = vars(args)
        self.wall_before, self.cpu_before = self.state["wall"], self.state["cpu"]  # earlier processes (resume)
        self.tower = ClipTextTower(self.tokenizer, clip_text.text_model_of(self.clip),
                                   self.clip.vision_model.post_layernorm, self.clip.visual_projection)
        self.last_save = time.time()

    def save(self) -> None:
        self.state["wall"] = self.wall_before + time.time() - self.started
        self.state["cpu"] = self.cpu_before + time.process_time()
        atomic_save({"clip": self.clip.state_dict(), "log_patch_scale": self.log_patch_scale.detach(),
                     "optimizer": self.optimizer.state_dict(), "state": self.state}, self.workdir / "state.pt")
        self.last_save = time.time()

    def timed(self, stage: str, start: float) -> None:
        self.state["elapsed"][stage] += time.time() - start

    # ---- stage 1 ---------------------------------------------------------------------------------
    def build_pool(self) -> None:
        """Cache `--pool` training images' feature-layer states, scenes and texts, one shard at a time."""
        stream = data.training_batches(self.args.seed + 100)
        for k in range(self.args.pool // SHARD):
            start = time.time()
            items = [next(stream) for _ in range(SHARD)]  # every shard advances the stream (popular negatives)
            path = self.workdir / "pool" / f"shard_{k:03d}.pt"
            if path.exists():
                continue
            hidden = clip_text.feature_states(self.llava, self.processor, [image for image, _, _ in items])
            scenes = [scene for _, scene, _ in items]
            texts = [clip_text.scene_texts(scene, qas) for _, scene, qas in items]
            atomic_save({"hidden": hidden.half(), "scenes": scenes, "texts": texts}, path)
            self.timed("pool", start)
            print(f"pool shard {k + 1}/{self.args.pool // SHARD} ({self.state['elapsed']['pool']:.0f} s)", flush=True)
            self.save()
        self.state["stage"] = "train"
        self.save()

    def load_pool(self) -> tuple[torch.Tensor, list, list]:
        shards = [torch.load(self.workdir / "pool" / f"shard_{k:03d}.pt", weights_only=False)
                  for k in range(self.args.pool // SHARD)]
        return (torch.cat([s["hidden"] for s in shards]), [x for s in shards for x in s["scenes"]],
                [x for s in shards for x in s["texts"]])

    # ---- stage 2 ---------------------------------------------------------------------------------
    def batch(self, step: int, hidden, scenes, texts):
        """Step `step`'s images and texts (seeded by the step: a resumed run draws the same batches)."""
        args = self.args
        rng = random.Random(f"{args.seed}:{step}")
        images = rng.sample(range(len(scenes)), args.batch)
        chosen, owner = [], []
        for b, i in enumerate(images):
            descriptions = [t for t in texts[i] if t[2] is not None]
            questions = [t for t in texts[i] if t[2] is None]
            n_q = min(len(questions), args.texts // 2)
            picked = rng.sample(questions, n_q) + rng.sample(descriptions, min(len(descriptions), args.texts - n_q))
            chosen += picked
            owner += [b] * len(picked)
        evidence = torch.zeros(len(chosen), hidden.shape[1], dtype=torch.bool)
        positives = torch.zeros(len(chosen), len(images), dtype=torch.bool)
        for k, (_, patches, key) in enumerate(chosen):
            evidence[k, patches] = True
            if key is not None:
                positives[k] = torch.tensor([clip_text.holds(key, scenes[i]) for i in images])
        described = torch.tensor([key is not None for _, _, key in chosen])
        return (hidden[images].float(), [text for text, _, _ in chosen], torch.tensor(owner), evidence, positives,
                described)

    def lr(self, step: int) -> float:
        if step < self.args.warmup:
            return self.args.lr * (step + 1) / self.args.warmup
        progress = (step - self.args.warmup) / max(1, self.args.steps - self.args.warmup)
        return self.args.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))

    def evaluate(self, heldout, suite, final: bool = False) -> dict:
        self.clip.eval()
        top1, n = clip_text.retrieval_top1(self.tower, *heldout)
        recall, chance = clip_text.evidence_recall(self.tower, *suite)
        self.clip.train()
        return {"retrieval_top1": round(top1, 4), "retrieval_queries": n, "retrieval_chance": 1 / 8,
                "evidence_recall": round(recall, 4), "evidence_chance": round(chance, 4)}

    def heldout(self, n_scenes: int, families: dict[str, int]):
        """Held-out scenes (retrieval) and suite rows with their images' states (evidence recall)."""
        scenes = clip_text.heldout_scenes(n_scenes)
        retrieval = (clip_text.feature_states(self.llava, self.processor, [image for _, image in scenes]),
                     [scene for scene, _ in scenes])
        rows = []
        for family, n in families.items():
            split = "random" if family == "pope" else None
            rows += [r for r in data.make_split(family, split, data.EVAL_SEEDS[family], n) if r["evidence"]]
        states = clip_text.feature_states(self.llava, self.processor, [r["image"] for r in rows])
        return retrieval, (states, rows)

    def train(self) -> None:
        args = self.args
        start, running = time.time(), []
        hidden, scenes, texts = self.load_pool()
        heldout, suite = self.heldout(64, {"gqa": 40})
        post_layernorm, projection = self.clip.vision_model.post_layernorm, self.clip.visual_projection
        self.clip.train()
        while self.state["step"] < args.steps:
            step = self.state["step"]
            if step % args.eval_every == 0 and not any(r.get("step") == step and "eval" in r for r in self.state["curve"]):
                self.timed("train", start)
                self.state["curve"].append({"step": step, "eval": self.evaluate(heldout, suite),
                                            "minutes": round(sum(self.state["elapsed"].values()) / 60, 2)})
                print(json.dumps(self.state["curve"][-1]), flush=True)
                self.save()
                start = time.time()
            states, batch_texts, owner, evidence, positives, described = self.batch(step, hidden, scenes, texts)
            enc = self.tokenizer(batch_texts, padding=True, return_tensors="pt")
            text_emb = self.clip.text_projection(self.clip.text_model(**enc).pooler_output)
            patches = projection(post_layernorm(states))
            loss, parts = clip_text.contrastive_loss(
                text_emb, patches, owner, evidence, positives, described,
                self.log_patch_scale.exp().clamp(max=100), self.clip.logit_scale.exp().clamp(max=100))
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr(step)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.optimizer.step()
            running.append(parts)
            self.state["step"] = step + 1
            if (step + 1) % 50 == 0:
                mean = {k: round(sum(p[k] for p in running) / len(running), 4) for k in running[0]}
                self.state["curve"].append({"step": step + 1, "loss": mean, "lr": round(self.lr(step), 6)})
                print(json.dumps(self.state["curve"][-1]), flush=True)
                running = []
            if time.time() - self.last_save >= 60 * args.checkpoint_minutes:
                self.timed("train", start)
                self.save()
                start = time.time()
        self.timed("train", start)
        self.state["curve"].append({"step": args.steps, "eval": self.evaluate(heldout, suite),
                                    "minutes": round(sum(self.state["elapsed"].values()) / 60, 2)})
        self.state["stage"] = "final"
        self.save()

    # ---- stage 3 ---------------------------------------------------------------------------------
    def final(self) -> None:
        start = time.time()
        self.clip.eval()
        heldout, suite = self.heldout(256, {"gqa": 100, "mme": 50, "pope": 30})
        top1, n = clip_text.retrieval_top1(self.tower, *heldout)
        per_family = {}
        for family in ("gqa", "mme", "pope"):
            keep = [i for i, r in enumerate(suite[1]) if family_of(r) == family]
            recall, chance = clip_text.evidence_recall(self.tower, suite[0][keep], [suite[1][i] for i in keep])
            per_family[family] = {"recall": round(recall, 4), "chance": round(chance, 4), "n": len(keep)}
        self.state["final"] = {"retrieval_top1": round(top1, 4), "retrieval_queries": n, "evidence": per_family}
        self.export(suite)
        self.timed("final", start)
        self.state["stage"] = "done"
        self.save()
        write_card(card(self.state, self.clip), Path(self.args.out))  # after the save: its times are complete

    def export(self, suite) -> None:
        out = Path(self.args.out)
        out.mkdir(parents=True, exist_ok=True)
        self.clip.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        (out / "training_curve.jsonl").write_text("".join(json.dumps(r) + "\n" for r in self.state["curve"]))
        for path in out.iterdir():
            path.chmod(0o644)
        reloaded = load_text_tower(str(out), self.llava.config.vision_config.hidden_size)
        states, rows = suite
        for row, hidden in list(zip(rows, states))[:8]:
            a = clip_text.relevance_fn(self.tower)(hidden, row["question"])
            b = clip_text.relevance_fn(reloaded)(hidden, row["question"])
            if not torch.allclose(a, b, atol=1e-5):
                raise RuntimeError(f"the exported tower scores {row['question']!r} differently after reload")
        size = sum(p.stat().st_size for p in out.iterdir()) / 2**20
        print(f"exported to {out} ({size:.1f} MB); reload through load_text_tower gives the same relevance", flush=True)


def family_of(row: dict) -> str:
    if "imageId" in row:
        return "gqa"
    return "pope" if "image_source" in row else "mme"


def card(state: dict, clip) -> str:
    """The model card (README.md) from the recorded state."""
    args, final, minutes = state["args"], state["final"], {k: v / 60 for k, v in state["elapsed"].items()}
    evals = [r for r in state["curve"] if "eval" in r]
    text_params = sum(p.numel() for p in (*clip.text_model.parameters(), *clip.text_projection.parameters()))
    rows = "\n".join(f"| {r['step']} | {r['eval']['retrieval_top1']:.3f} | {r['eval']['evidence_recall']:.3f} "
                     f"| {r['eval']['evidence_chance']:.3f} |" for r in evals)
    families = "\n".join(f"| {f} | {v['n']} | {v['recall']:.3f} | {v['chance']:.3f} |" for f, v in final["evidence"].items())
    vision = clip.config.vision_config
    return f"""---
license: mit
library_name: transformers
tags: [clip, prunebench, synthetic, cdpruner]
---
# tiny-clip-shapes

The CLIP text tower paired with the vision tower of [tiny-llava-shapes](../tiny-llava-shapes/README.md), the
embedded model, so that CDPruner (which scores each image patch against the instruction's CLIP text embedding)
runs on it: `conf/model/tiny_llava_shapes.yaml` sets `text_encoder: {clip_text.ASSET}`. A transformers
`CLIPModel`: its vision side is tiny-llava-shapes' tower, weights copied unchanged (its `post_layernorm`, unused
by the LLaVA, included), plus a trained `visual_projection` ({vision.hidden_size} -> {vision.projection_dim});
its text side is a {text_params / 1e3:.0f} k-parameter CLIP text transformer ({clip_text.LAYERS} layers, width
{clip_text.WIDTH}, context {clip_text.CONTEXT}, word-level tokenizer over the benchmark's {len(data.vocabulary())}
words, `<s> ... </s>`, pooled at `</s>`) with a projection to {vision.projection_dim}.
`harness.text_encoder.load_text_tower("{clip_text.ASSET}")` loads it like `openai/clip-vit-large-patch14-336`.

## Recipe

    python -m harness.shapes.train_text     # resumable (--workdir {args['workdir']}); deterministic for --seed

1. Pool: {args['pool']} training images (stream seed {args['seed'] + 100}, disjoint from the evaluation seeds)
   through the frozen tower once; the feature-layer patch states (layer -2, what CDPruner reads) are cached.
2. {args['steps']} AdamW steps (LR {args['lr']}, {args['warmup']} warm-up steps, cosine to 10%, weight decay 0.01,
   clip 1.0), each on {args['batch']} images x {args['texts']} texts: half the benchmark's own questions about the
   image (gqa, mme and pope positives, with evidence; without the short-answer suffix, as CDPruner encodes them),
   half descriptions of its objects ("the red circle", "red", "star"). The tower is frozen; the text tower, both
   projections and the logit scales train. Loss, on the relevance `r_i = -cos(z_i, t)` of patch i to text t:
   - patch-level InfoNCE: the softmax of the image's 576 relevances (learned scale) should put its mass on the
     patches the text is about (its evidence);
   - image-level InfoNCE (CLIP's `logit_scale`), descriptions only: an image scored by its most relevant patch;
     the softmax over the batch's images should fall on the images the description holds for.

   Sign: CDPruner's official code scores patches by the *negative* cosine (on LLaVA-1.5's CLIP the queried
   object has the lowest cosine with the text: Theia-4869/CDPruner issue #14). This tower is trained with that
   convention, so CDPruner's unchanged formula points at the instruction's objects, as it does on LLaVA-1.5.
3. Time: {state['wall'] / 60:.1f} min wall-clock for the command ({minutes['pool']:.1f} min pool, {minutes['train']:.1f} min
   training with its evaluations, {minutes['final']:.1f} min final evaluation and export, the rest loading), on
   {args['threads']} CPU thread of a 2-core machine shared with other jobs; {state['cpu'] / 60:.1f} min of CPU time
   (torch {state['torch']}).

## Held-out evaluation

Text -> image retrieval: 256 held-out scenes (seed
{clip_text.HELDOUT_SEED}, never trained on) in groups of 8; "the <colour> <shape>" for each object unique to its
group ranks the 8 images by their most relevant patch: top-1 **{final['retrieval_top1']:.3f}** over
{final['retrieval_queries']} queries (chance 0.125; untrained, step 0 below: 0.16). An easy task (the pair names one
object of one image); the evidence recall below is the finer measure, and the one CDPruner depends on.

Evidence recall: on the shapes suite's own questions (evaluation seeds, as `python run.py` asks them), the share
of a question's evidence patches among its |E| most relevant patches (CDPruner's relevance before min-max):

| family | questions | recall | chance (|E| / 576) |
|---|---|---|---|
{families}

During training (64 held-out scenes, 40 gqa questions; step 0 is the untrained tower):

| step | retrieval top-1 | evidence recall | chance |
|---|---|---|---|
{rows}

Full curve: `training_curve.jsonl` (losses every 50 steps).
"""


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = TextRecipe(args)
    if args.card_only:
        print(f"model card rewritten: {write_card(card(recipe.state, recipe.clip), Path(args.out))}")
        return
    if recipe.state["stage"] == "pool":
        recipe.build_pool()
    if recipe.state["stage"] == "train":
        recipe.train()
    if recipe.state["stage"] == "final":
        recipe.final()
    print(f"done: {recipe.state['wall'] / 60:.1f} min wall-clock in all", flush=True)


if __name__ == "__main__":
    main()
