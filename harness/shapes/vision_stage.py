"""Stage 1 of the shapes recipe: the vision tower and projector trained alone, then the projector re-fitted.

`train_vision` trains the tower and projector with the per-patch heads of `supervision.py` (dense
labels of every patch's colour, shape, size and position); `train_align` then re-fits a fresh
projector, the tower frozen, to a fixed code of each patch's attributes. Both run on a `Recipe`'s
model, state, clock and learning curve and end by moving the state to the next stage.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

from harness.shapes import curriculum, data, supervision
from harness.shapes.tiny import N_PATCHES, pixel_values, tower_hidden

if TYPE_CHECKING:
    from harness.shapes.train import Recipe


def step_lr(
    recipe: Recipe, stage: str, optimizer: torch.optim.Optimizer, peak: float, warmup_steps: int, budget: float
) -> tuple[int, float]:
    """The stage's next step (0-based) and its LR (warm-up, then cosine over the time budget), set on `optimizer`."""
    step = recipe.state.step[stage]
    fraction = recipe.clock.stage(stage) / budget
    lr = curriculum.warmup_cosine_lr(peak, step + 1, warmup_steps, fraction)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return step, lr


def train_vision(recipe: Recipe) -> None:
    """Tower and projector trained alone with per-patch heads until every head reaches
    `--vision-target` on held-out images or the `--minutes-vision` budget runs out."""
    recipe.record_run()
    args, model, heads = recipe.args, recipe.model, recipe.heads
    budget = 60 * args.minutes_vision
    params = list(model.model.vision_tower.parameters()) + list(model.model.multi_modal_projector.parameters())
    params += list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr_vision, weight_decay=0.01)
    if recipe.state.optimizer is not None:
        optimizer.load_state_dict(recipe.state.optimizer)
    heldout_stream = data.training_batches(data.EVAL_SEED_BASE - 1 - args.seed)  # disjoint training-range seed
    heldout = []
    for _ in range(args.vision_heldout // 16):
        chunk = [next(heldout_stream) for _ in range(16)]
        heldout.append((pixel_values([c[0] for c in chunk], recipe.processor), supervision.vision_batch_labels([c[1] for c in chunk])))
    stream = recipe.stream("vision", args.seed)
    model.train()
    recipe.clock.begin("vision")
    bar = tqdm(total=int(budget), initial=int(min(budget, recipe.clock.stage("vision"))), desc="vision",
               unit="s", mininterval=args.bar_seconds)  # fmt: skip
    while recipe.clock.stage("vision") < budget:
        step, lr = step_lr(recipe, "vision", optimizer, args.lr_vision, 50, budget)
        batch = recipe.take(stream, "vision", args.batch_vision)
        pixels = pixel_values([b[0] for b in batch], recipe.processor)
        loss, _ = supervision.vision_loss(model, heads, pixels, supervision.vision_batch_labels([b[1] for b in batch]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        recipe.state.step["vision"] = step + 1
        bar.update(int(min(budget, recipe.clock.stage("vision"))) - bar.n)
        bar.set_postfix(loss=f"{loss.item():.3f}", step=step + 1, refresh=False)
        record = {"step": step + 1, "stage": "vision", "elapsed": round(recipe.clock.total(), 1),
                  "loss": round(loss.item(), 4), "lr": lr, "n_image_tokens": N_PATCHES}  # fmt: skip
        done = False
        if (step + 1) % args.vision_eval_every == 0:
            model.eval()
            accuracy = supervision.vision_accuracy(model, heads, heldout)
            model.train()
            record["eval"] = {k: round(v, 4) for k, v in accuracy.items()}
            recipe.state.last_eval = record["eval"]
            tqdm.write(f"[vision step {step + 1}] " + " ".join(f"{k}={v:.4f}" for k, v in accuracy.items() if not k.endswith("_all")))
            done = all(accuracy[f"patch_{name}"] >= args.vision_target for name in supervision.PATCH_HEADS)
        if (step + 1) % args.log_every == 0 or "eval" in record:
            recipe.curve.log(record)
        if done:
            tqdm.write(f"vision stage reached the target {args.vision_target} at step {step + 1}")
            break
        recipe.maybe_save(optimizer)
    bar.close()
    model.eval()
    accuracy = supervision.vision_accuracy(model, heads, heldout)
    recipe.log(stage="vision", eval={k: round(v, 4) for k, v in accuracy.items()}, final=True)
    recipe.state.vision_final = accuracy
    tqdm.write("vision stage done: " + json.dumps({k: round(v, 4) for k, v in accuracy.items()}))
    recipe.clock.end()
    recipe.state.stage = "align"
    recipe.state.optimizer = None
    recipe.save(None)


def train_align(recipe: Recipe) -> None:
    """Re-fits the projector (fresh weights, tower frozen) to the fixed `patch_code` of each
    patch's attributes (weighted MSE, object patches x5). The projector trained only through
    linear probes gave the language model tokens dominated by one shared direction (mean norm
    184 of 202; colour means 43 apart with within-colour spread 58): the language model then
    stayed at chance on colour and yes/no questions for 80 minutes."""
    recipe.record_run()
    args, model = recipe.args, recipe.model
    budget = 60 * args.minutes_align
    projector = model.model.multi_modal_projector
    if recipe.state.step["align"] == 0:  # fresh projector weights (seeded)
        torch.manual_seed(args.seed + 7)
        for layer in (projector.linear_1, projector.linear_2):
            layer.reset_parameters()
    model.model.vision_tower.requires_grad_(False)
    projector.requires_grad_(True)
    code = supervision.patch_code(args.seed, model.config.text_config.hidden_size)
    optimizer = torch.optim.AdamW(projector.parameters(), lr=args.lr_align, weight_decay=0.0)
    if recipe.state.optimizer is not None:
        optimizer.load_state_dict(recipe.state.optimizer)
    heldout_stream = data.training_batches(data.EVAL_SEED_BASE - 2 - args.seed)
    held = [next(heldout_stream) for _ in range(32)]
    with torch.no_grad():
        held_features = tower_hidden(model, pixel_values([h[0] for h in held], recipe.processor))[:, 1:]
    # the tower's features have std ~9: the fit runs on features / scale (from scratch it stalls
    # otherwise) and the scale is folded into linear_1 at the end
    scale = recipe.state.align_scale = recipe.state.align_scale or held_features.std().item()
    held_features = held_features / scale
    held_labels = supervision.vision_batch_labels([h[1] for h in held])
    stream = recipe.stream("align", args.seed + 2)
    recipe.clock.begin("align")
    bar = tqdm(total=int(budget), initial=int(min(budget, recipe.clock.stage("align"))), desc="align", unit="s",
               mininterval=args.bar_seconds)  # fmt: skip
    while recipe.clock.stage("align") < budget:
        step, lr = step_lr(recipe, "align", optimizer, args.lr_align, 20, budget)
        batch = recipe.take(stream, "align", args.batch_vision)
        with torch.no_grad():
            features = tower_hidden(model, pixel_values([b[0] for b in batch], recipe.processor))[:, 1:] / scale
        labels = supervision.vision_batch_labels([b[1] for b in batch])
        target = supervision.code_targets(code, labels)  # [B, 576, dim]
        weight = 1.0 + 4.0 * (labels["colour"] > 0).float()  # [B, 576]
        error = (projector(features) - target).pow(2).sum(-1)  # [B, 576]
        loss = (error * weight).sum() / weight.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        recipe.state.step["align"] = step + 1
        bar.update(int(min(budget, recipe.clock.stage("align"))) - bar.n)
        bar.set_postfix(loss=f"{loss.item():.3f}", step=step + 1, refresh=False)
        record = {"step": step + 1, "stage": "align", "elapsed": round(recipe.clock.total(), 1), "loss": round(loss.item(), 4), "lr": lr}
        if (step + 1) % 50 == 0:
            record["eval"] = {k: round(v, 4) for k, v in supervision.code_accuracy(projector(held_features), code, held_labels).items()}
            tqdm.write(f"[align step {step + 1}] " + json.dumps(record["eval"]))
        if (step + 1) % args.log_every == 0 or "eval" in record:
            recipe.curve.log(record)
        recipe.maybe_save(optimizer)
    bar.close()
    with torch.no_grad():
        projected = projector(held_features)
    accuracy = supervision.code_accuracy(projected, code, held_labels)
    target = supervision.code_targets(code, held_labels)  # [B, 576, dim]
    accuracy["code_r2"] = 1 - ((projected - target).pow(2).sum() / target.var(dim=(0, 1)).sum() / projected[..., 0].numel()).item()
    recipe.log(stage="align", eval={k: round(v, 4) for k, v in accuracy.items()}, final=True)
    recipe.state.align_final = accuracy
    tqdm.write("align stage done: " + json.dumps({k: round(v, 4) for k, v in accuracy.items()}))
    with torch.no_grad():  # fold the input scale: projector(features) == fitted(features / scale)
        projector.linear_1.weight.div_(scale)
    projector.requires_grad_(False)
    recipe.clock.end()
    recipe.state.stage = "lm"
    recipe.state.optimizer = None
    recipe.save(None)
