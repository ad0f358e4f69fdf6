"""The model card (README.md of the exported checkpoint), built from the recorded run state alone.

    python -m harness.shapes.train --card-only     # rewrites the card from the last state

The flags, step counts, times and evaluations it reports are those stored in `state.pt` (see
`TrainState.args`), so rewriting the card with other flags on the command line still describes
the checkpoint that was trained.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from harness.shapes import data
from harness.shapes.state import TrainState

OWN_FORWARD_ROWS = """Rows: vanilla `generate`; our own forward with all 576 tokens (agrees with `generate` on
{agree} of the answers); random kept image tokens before
the LLM ("pre") or entering layer 2 ("L2", as the harness's random method), with original or
compact positions. MME cells: acc / acc+."""  # checkpoints evaluated before the engine ran these rows

ENGINE_ROWS = """Rows: vanilla `generate`; the same model through the harness's pruning engine with nothing
pruned (agrees with `generate` on {agree} of the answers); the harness's random method (seeded
per question) keeping 192 or 32 image tokens before the LLM ("pre", contiguous positions) or entering
layer 2 ("L2"), with original or compact positions. MME cells: acc / acc+."""


def _table(rows: list[list], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def lm_stage_labels(records: list[dict], n_discarded: int, extension_steps: list[int]) -> list[str]:
    """The language stage of each "lm" record: its step counter restarts at every --restart-lm.

    Args:
        records: learning-curve records of the language stage, in order.
        n_discarded: how many language stages were discarded (the first ones).
        extension_steps: the steps at which --extend-lm continued the final stage.

    Returns:
        Per record "1 (discarded)", ..., "5", or "5, continued" after an extension's start.
    """
    labels, stage, previous = [], 0, None
    for r in records:
        if previous is not None and r["step"] < previous:
            stage += 1
        previous = r["step"]
        label = f"{stage + 1}" + (" (discarded)" if stage < n_discarded else "")
        if stage == n_discarded and any(r["step"] > s for s in extension_steps):
            label += ", continued"
        labels.append(label)
    return labels


def model_card(state: TrainState, records: list[dict], n_params: int, vocab_size: int) -> str:
    """The card's Markdown.

    Args:
        state: the run state (its `args` are the recorded training flags).
        records: the learning curve (curve.jsonl records).
        n_params: the model's parameter count.
        vocab_size: the tokenizer's size.
    """
    args = SimpleNamespace(**state.args)
    lm_records = [r for r in records if r["stage"] == "lm"]
    stages = lm_stage_labels(lm_records, len(state.discarded), [e["start_step"] for e in state.extensions])
    evals = [(label, r) for label, r in zip(stages, lm_records) if "eval" in r]
    curve_rows = [
        [label, r["step"], f"{r['elapsed'] / 60:.0f}", r["eval"].get("pope_f1", ""), r["eval"].get("gqa_em", ""),
         r["eval"].get("mme_total_pct", ""), r["eval"].get("mme_count_acc", ""), r["eval"].get("mme_position_acc", ""),
         r["eval"].get("mme_color_acc", ""), r["eval"].get("gqa_em_L2_random192_original", ""),
         r["eval"].get("gqa_em_L2_random192_compact", "")]
        for label, r in evals
    ]  # fmt: skip
    vision = state.vision_final or {}
    final = state.final or {}
    final_rows = []
    for mode, metrics in final.items():
        if isinstance(metrics, dict):
            final_rows.append([mode, metrics.get("pope_f1", ""), metrics.get("gqa_em", ""), metrics.get("mme_total_pct", "")]
                              + [f"{metrics.get(f'mme_{c}_acc', '')} / {metrics.get(f'mme_{c}_acc+', '')}" for c in data.MME_CATEGORIES])  # fmt: skip
    elapsed = state.elapsed
    notes = state.notes
    history = "\n".join(f"- {n}" for n in notes) if notes else "- trained in one go with the defaults above."
    align = state.align_final or {}
    discarded = state.discarded
    recipe_minutes = sum(elapsed.get(k, 0) for k in ("vision", "align", "lm")) / 60
    discarded_text = "".join(
        f"\n- A language stage of {d['minutes']} min ({d['steps']['lm']} steps), discarded: its last evaluation had pope F1 "
        f"{d['last_eval'].get('pope_f1', '?')}, gqa EM {d['last_eval'].get('gqa_em', '?')} (colour {d['last_eval'].get('gqa_colour', '?')}), "
        f"mme {d['last_eval'].get('mme_total_pct', '?')}% of max. " + d.get("why", (
            "It ran on the projector from the vision stage, whose output was dominated by one shared direction (mean norm 184 "
            "of 202 over all patches; the colour means 43 apart against a within-colour spread of 58), so colour and yes/no "
            "questions stayed at chance. Hence the align stage."))
        for d in discarded
    )  # fmt: skip
    lookup_text = (
        "\n   Every sequence also ends with an attribute-lookup block, `\\n star red circle blue ...`: for each shape"
        "\n   that occurs once its colour, for each colour that occurs once its shape, the second word"
        "\n   labelled (the gqa colour/shape question in two tokens; caption-like, no attention supervision)."
        if args.lookup else ""
    )
    bind_end = state.bind_end
    if args.bind_fraction <= 0:
        bind_text = "No bind phase."
    else:
        ended = "not reached" if bind_end is None else f"ended at {bind_end:.0%} of the time budget"
        bind_text = (
            f"Bind phase first ({ended}; at most {args.bind_fraction:.0%}, until the gqa colour and shape answer losses are below "
            f"{args.bind_target}): only gqa colour/shape questions and the lookup block, 96 image tokens, with the image block "
            "replaced by the patch code itself (the projector's fitting target); then the image block moves from the code to "
            f"the projector's real output, linearly over {args.teacher_fraction:.0%} of the budget."
            + (f" In the bind phase only decoder layers {args.grow_from} run (the others are skipped); at its end the "
               "other layers join with zero residual outputs (`o_proj`, `down_proj` = 0), so the model computes the same "
               "function, and all 32 layers train from then on." if args.grow_from.strip() else "")
            + " Without this, colour stayed at chance in every run: the language model learned to read shapes, never "
            "colours, on the real features, and in probes even on the exact code with all question types mixed (4 layers) "
            "or with all 32 layers from the start (10 min)."
        )  # fmt: skip
    extend_text = ""
    for e in state.extensions:
        before = e["before"]
        extend_text += (
            f"\n   Then continued for {e['minutes']:g} min from step {e['start_step']} (`--extend-lm`; why: run history"
            f" below): LR warm-up to {e['lr']:g} over {args.warmup_steps} steps, then cosine to 10%, the last curriculum phase"
            f" throughout. Before it (held-out, vanilla): pope F1 {before.get('pope_f1', '?')}, gqa EM {before.get('gqa_em', '?')},"
            f" mme {before.get('mme_total_pct', '?')}% of max."
        )
    decay = state.decay_start
    torch_version = state.torch_version or torch.__version__  # checkpoints that did not record it
    if "ownforward_agrees_with_generate" in final:
        rows_text = OWN_FORWARD_ROWS.format(agree=final["ownforward_agrees_with_generate"])
    else:
        rows_text = ENGINE_ROWS.format(agree=final.get("engine_agrees_with_generate", "?"))
    decay_text = "never reached" if decay is None else f"reached at {decay:.0%} of the time budget"
    return f"""---
license: mit
library_name: transformers
pipeline_tag: image-text-to-text
tags: [llava, prunebench, synthetic]
---
# tiny-llava-shapes

The embedded model of prunebench: a {n_params / 1e6:.2f} M-parameter `LlavaForConditionalGeneration`
trained from scratch on CPU on the synthetic shapes benchmark (`harness/shapes/data.py`), so that every
visual-token pruning method can be run end to end without downloads. Its decoder has 32 layers, so the
LLaVA-1.5-7B layer schedules of FastV, SparseVLM, AdaptInfer and PDrop apply unchanged.

    from harness.model import load_llava
    model, processor = load_llava(pretrained="harness/assets/tiny-llava-shapes", dtype="float32")
    # prompt: "USER: <image>\\n{{question}} ASSISTANT:", greedy, stop at </s>

Reproduce: `python -m harness.shapes.train` (resumable; `--export-only` rewrites this directory).
CDPruner's CLIP text tower for this model's vision tower (the model config's `text_encoder`):
[tiny-clip-shapes](../tiny-clip-shapes/README.md), trained by `python -m harness.shapes.train_text`.

## Architecture
- Vision: CLIP tower, hidden 128, 4 layers, 4 heads, MLP 512, 336 px, patch 14 -> 576 patch tokens + CLS;
  features from layer -2, CLS dropped (`vision_feature_select_strategy="default"`).
- Projector: GELU MLP 128 -> 64 -> 64.
- Language model: Llama, hidden 64, 32 layers, 2 heads (head_dim 32, 2 KV heads), MLP 170, RoPE
  (theta 10000), tied embeddings, {vocab_size}-token word-level vocabulary.
- fp32 safetensors.

## Data
Endless fresh images from `harness.shapes.data.training_batches` (seeds {args.seed} for the vision stage,
{args.seed + 2} for the projector alignment, {args.seed + 1} for the language stage; evaluation seeds >= 10000 are never used for training), 1-6
objects of 6 shapes x 8 colours, questions of the three families (pope / gqa / mme styles) on the
exact evaluation template. Images used: vision {state.images['vision']}, align {state.images['align']}, language {state.images['lm']}.

## Recipe
1. **Vision stage** ({state.step['vision']} steps, {elapsed.get('vision', 0) / 60:.1f} min, batch {args.batch_vision},
   AdamW {args.lr_vision}): linear heads on the layer -2 patch features and on the projector output
   predict per patch the colour, shape and size of the covering object (or background), the
   patch's own row and column and whether it is the object's first evidence patch; CLS heads predict the set of
   (colour, shape) pairs and the number of objects. Held-out accuracy on object patches (projector
   side): {", ".join(f"{k.removeprefix('patch_')} {v:.3f}" for k, v in vision.items() if not k.endswith("_all"))}.
2. **Projector alignment** ({state.step['align']} steps, {elapsed.get('align', 0) / 60:.1f} min, batch {args.batch_vision},
   AdamW {args.lr_align}, tower frozen): the projector is re-initialised and fitted (weighted MSE,
   object patches x5) to a fixed code of each patch's attributes: orthogonal directions for every
   colour, shape and size (background included) and the anchor flag, plus the patch's row and column
   (linear and sinusoidal), summed (`patch_code`). Held-out nearest-direction decoding on object
   patches: {", ".join(f"{k.removeprefix('code_')} {v:.3f}" for k, v in align.items())}.
3. **Language stage** ({state.step['lm']} steps, {elapsed.get('lm', 0) / 60:.1f} min, batch {args.batch_lm} images,
   AdamW {args.lr_lm} (betas 0.9/0.95), {args.warmup_steps} warm-up steps, constant until the pope answer loss
   falls below 0.5 ({decay_text}), then cosine to 10%, clip {args.clip}); tower frozen, projector {"frozen" if args.lm_projector == "freeze" else "trained"}. Each image is one sequence: `<s> USER:` + image block +
   {args.questions_per_image} question blocks (`\\n question ASSISTANT: answer`), each block attending to
   the prefix, the image and itself; loss on the answer words and `</s>`. Questions are drawn from
   a pool per image, weighted toward harder types and toward types with a higher running loss.{lookup_text}
   {bind_text}
   Curriculum over the rest of the time budget: first ({args.warmup_fraction:.0%} of it, longer while the pope answer
   loss stays above 0.45) only 96 image tokens (all object patches + random background) with original
   positions; then for {args.ramp_fraction - args.warmup_fraction:.0%} 96-256 tokens with some compact
   positions and 15% full images; then 30% full images with standard positions
   (the vanilla case), 15% a switch to a smaller object-preserving subset at a random layer 1-20
   (original or compact positions after it, answer tokens at their global positions), and 55%
   subsets of 24-448 tokens, half with original positions (token i at 2 + i, text at 578), half
   renumbered contiguously, with random text shifts of 1-128 positions and answer jumps. The LLM's
   attention is never supervised.{extend_text}
4. Wall-clock of this recipe: {recipe_minutes:.1f} min on 2 CPU cores (fp32, torch {torch_version}); with the
   discarded language stages (below) and evaluations, {elapsed.get('total', 0) / 60:.1f} min on this machine in all.

## Learning curve (periodic held-out evaluation, vanilla generation)
Stage: the language stage (the discarded ones are described below); min: machine time in all.

{_table(curve_rows, ["stage", "step", "min", "pope F1", "gqa EM", "mme % of max", "mme count acc", "mme position acc", "mme color acc", "gqa EM L2 rnd192 orig", "gqa EM L2 rnd192 compact"])}

Full curve: `training_curve.jsonl` (loss, lr, image tokens and layout per logged step; per-task loss).

## Final accuracies ({final.get('n_questions', '?')} held-out questions from the evaluation seeds)
{rows_text}

{_table(final_rows, ["mode", "pope F1", "gqa EM", "mme % of max"] + list(data.MME_CATEGORIES))}

The harness's own evaluation (`python run.py ...` on the full shapes suite) is the reference; this
table is a smaller held-out sample.

## Run history of this checkpoint
{history}

## What did not work (this run)
{discarded_text.lstrip(chr(10))}
- Vision heads for the block row / column of the covering object stayed at chance; the patch's own
  row / column on object patches too, because the position embeddings (norm ~0.5) were swamped by
  content features (norm ~70). Fixed by scaling the position embeddings x8 and supervising the own
  row / column on every patch (dense), which then learned in ~400 steps.
- Training the projector in the language stage: it drifted toward shape features (colour share of
  its normalised output ~0.44 -> ~0.12); gqa colour and all yes/no tasks stayed at chance while
  shape / relation questions were learned. Hence `--lm-projector freeze` (and, later, the align stage).

## What did not work (prototype on this machine)
- Training the language model on all 576 image tokens from the start: at chance for 20+ minutes
  (always "yes"), with or without down-scaled residual projections or projector alignment.
- LR 1.5e-3 gave gradient-norm spikes; 1e-3 with cosine decay was stable.
- A model trained only with standard positions collapsed (0% GQA-like) when kept tokens were
  renumbered contiguously (SparseVLM / AdaptInfer): hence the compact layouts and text shifts.
- Supervising the answer's attention toward the evidence patches taught where to look but not to
  answer, and builds FastV's criterion into the model: not used.
"""
