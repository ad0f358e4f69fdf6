"""Numerical checks of the recipe's own forward pieces (`python -m harness.shapes.train --check`).

Each value is a max |difference|: our pixels / tower / projector against the processor and HF's
tower, and a packed batch (`lm_hidden` with the block mask and `packed_attention`) against HF's
forward of each prompt alone, for the full image and for every kind of subset layout. All should be
~1e-6 or less; the control (a plain causal mask, letting blocks see each other) must be large.
"""

from __future__ import annotations

import random

import torch

from harness.shapes import data
from harness.shapes.curriculum import make_sequences, question_pool
from harness.shapes.packing import (
    KIND_ANSWER,
    KIND_PROMPT,
    Batch,
    Blocks,
    Layout,
    block_mask,
    build_sequence,
    choose_patches,
    collate,
    lm_hidden,
)
from harness.shapes.tiny import N_PATCHES, pixel_values, tower_hidden


@torch.no_grad()
def run_checks(model, processor, blocks: Blocks, seed: int) -> dict[str, float]:
    """Packed forward vs separate prompts (and our pixels/tower vs the processor/HF tower)."""
    model.eval()
    results = {}
    stream = data.training_batches(seed + 2)
    items = [next(stream) for _ in range(2)]
    rng = random.Random(0)
    pools = [(scene, question_pool(scene, qas, rng)) for _, scene, qas in items]
    # pixels and tower
    enc = processor(images=items[0][0], text="USER: <image>\nx ASSISTANT:", return_tensors="pt")
    pixels = pixel_values([item[0] for item in items], processor)
    results["pixels_vs_processor"] = (pixels[:1] - enc["pixel_values"]).abs().max().item()
    reference = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[-2]
    results["tower_vs_hf_hidden_states"] = (tower_hidden(model, pixels) - reference).abs().max().item()
    projected = model.model.multi_modal_projector(tower_hidden(model, pixels)[:, 1:])  # [2, 576, 64]
    hf_features = model.model.get_image_features(pixel_values=pixels, vision_feature_layer=-2,
                                                 vision_feature_select_strategy="default").pooler_output  # fmt: skip
    results["projected_vs_get_image_features"] = (projected - torch.stack(list(hf_features))).abs().max().item()

    # 1) packed full-image sequences (2 images, padded batch) vs HF forward of each prompt alone
    layout = Layout()
    seqs = make_sequences(blocks, layout, pools, {}, 6, [random.Random(1), random.Random(2)])
    batch = collate(seqs, layout, blocks.pad)
    hidden, labels = lm_hidden(model, batch, projected)
    worst = 0.0
    for b, seq in enumerate(seqs):
        for j in sorted(set(seq.group) - {0}):
            idx = [i for i, g in enumerate(seq.group) if g == j]
            ids = torch.tensor([[blocks.bos, blocks.user] + [blocks.image] * N_PATCHES + [seq.ids[i] for i in idx]])
            logits = model(input_ids=ids, pixel_values=pixels[b : b + 1]).logits[0, -len(idx) :]  # [T, V]
            packed = model.lm_head(hidden[b, idx])
            lab = torch.tensor([seq.labels[i] for i in idx]) != -100
            worst = max(worst, (logits[lab] - packed[lab]).abs().max().item())
    results["packed_full_vs_hf_separate"] = worst
    # control: the same packed batch with a plain causal mask (blocks see each other) must differ
    plain = Batch(**{**batch.__dict__, "mask": block_mask(torch.zeros_like(batch.ids))})
    hidden_plain, _ = lm_hidden(model, plain, projected)
    sel = labels != -100
    results["control_plain_causal_mask_differs_by"] = (model.lm_head(hidden_plain[sel]) - model.lm_head(hidden[sel])).abs().max().item()

    # 2) subset layouts (original / compact with shift and answer jump / a switch) vs unpacked single-question runs
    for name, layout in {
        "subset_original": Layout(n_image=96, positions="original", text_shift=7, thin=0.5),
        "subset_compact_jump": Layout(n_image=128, positions="compact", text_shift=5, answer_jump=True),
        "switch_L3_compact": Layout(n_image=256, switch_layer=3, n_switch=40, switch_positions="compact", text_shift=3),
        "switch_L1_original": Layout(n_image=576, switch_layer=1, n_switch=100, switch_positions="original"),
    }.items():
        seqs = make_sequences(blocks, layout, pools, {}, 5, [random.Random(3), random.Random(4)])
        if layout.switch_layer is not None:
            for s, (scene, _) in zip(seqs, pools):
                s.kept_switch = choose_patches(scene, layout.n_switch, random.Random(5), 0.2, allowed=s.kept)
        batch = collate(seqs, layout, blocks.pad)
        hidden, labels = lm_hidden(model, batch, projected)
        worst = 0.0
        for b, seq in enumerate(seqs):
            row_labels = labels[b]
            for j in sorted(set(seq.group) - {0}):
                idx = [i for i, g in enumerate(seq.group) if g == j]
                single = build_sequence(blocks, seq.kept, [([seq.ids[i] for i in idx if seq.kind[i] == KIND_PROMPT],
                                                              [seq.ids[i] for i in idx if seq.kind[i] == KIND_ANSWER], "x")])  # fmt: skip
                single.kept_switch = seq.kept_switch
                one = collate([single], layout, blocks.pad)
                h1, l1 = lm_hidden(model, one, projected[b : b + 1])
                # the labelled rows of block j inside the packed (possibly switched) sequence
                group_row = torch.tensor(seq.group + [-1] * (batch.ids.shape[1] - len(seq.group)))
                if batch.switch is not None:
                    group_row = group_row.gather(0, batch.switch[1][b])
                sel = (group_row == j) & (row_labels != -100)
                a = model.lm_head(hidden[b][sel])
                c = model.lm_head(h1[0][l1[0] != -100])
                worst = max(worst, (a - c).abs().max().item())
        results[f"packed_vs_single_{name}"] = worst
    return results

