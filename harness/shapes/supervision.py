"""Vision-stage supervision: per-patch labels, linear probe heads, and the projector's target code."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.shapes import data
from harness.shapes.tiny import N_PATCHES, tower_hidden

COLOUR_INDEX = {colour: i for i, colour in enumerate(data.COLOURS)}
SHAPE_INDEX = {shape: i for i, shape in enumerate(data.SHAPES)}
PAIR_INDEX = {pair: i for i, pair in enumerate(data.ALL_PAIRS)}
PATCH_HEADS = {  # per-patch classes; 0 = background
    "colour": 1 + len(data.COLOURS),
    "shape": 1 + len(data.SHAPES),
    "size": 1 + len(data.SIZES),
    "row": 1 + data.GRID,  # every patch's own row / column (class 0 unused): keeps the spatial
    "col": 1 + data.GRID,  # layout readable from the features when positions are renumbered
    "anchor": 2,
}


def patch_labels(scene: data.Scene) -> dict[str, np.ndarray]:
    """Per-patch class of every PATCH_HEADS head ([576] int64 each; 0 = background)."""
    labels = {name: np.zeros(N_PATCHES, dtype=np.int64) for name in PATCH_HEADS}
    labels["row"] = 1 + np.arange(N_PATCHES) // data.GRID  # every patch's own grid row and column
    labels["col"] = 1 + np.arange(N_PATCHES) % data.GRID
    for obj in scene.objects:
        evidence = obj.evidence
        labels["colour"][evidence] = 1 + COLOUR_INDEX[obj.colour]
        labels["shape"][evidence] = 1 + SHAPE_INDEX[obj.shape]
        labels["size"][evidence] = 1 + list(data.SIZES).index(obj.size)
        labels["anchor"][evidence[0]] = 1
    return labels


class VisionHeads(nn.Module):
    """Linear probes used only in the vision stage (not exported)."""

    def __init__(self, tower_dim: int, projector_dim: int):
        super().__init__()
        self.tower = nn.ModuleDict({name: nn.Linear(tower_dim, n) for name, n in PATCH_HEADS.items()})
        self.projector = nn.ModuleDict({name: nn.Linear(projector_dim, n) for name, n in PATCH_HEADS.items()})
        self.cls_pairs = nn.Linear(tower_dim, len(data.ALL_PAIRS))
        self.cls_count = nn.Linear(tower_dim, data.MAX_OBJECTS)


def vision_batch_labels(scenes: list[data.Scene]) -> dict[str, torch.Tensor]:
    per_scene = [patch_labels(scene) for scene in scenes]
    labels = {name: torch.from_numpy(np.stack([p[name] for p in per_scene])) for name in PATCH_HEADS}  # [B, 576]
    pairs = torch.zeros(len(scenes), len(data.ALL_PAIRS))
    for b, scene in enumerate(scenes):
        for obj in scene.objects:
            pairs[b, PAIR_INDEX[(obj.colour, obj.shape)]] = 1.0
    labels["pairs"] = pairs
    labels["count"] = torch.tensor([len(scene.objects) - 1 for scene in scenes])
    return labels


def vision_loss(model, heads: VisionHeads, pixels: torch.Tensor, labels: dict) -> tuple[torch.Tensor, dict]:
    """Weighted per-patch CE (object patches x5) on tower and projector features + CLS losses."""
    hidden = tower_hidden(model, pixels)  # [B, 577, 128]
    patches, cls = hidden[:, 1:], hidden[:, 0]
    projected = model.model.multi_modal_projector(patches)  # [B, 576, 64]
    weight = 1.0 + 4.0 * (labels["colour"] > 0).float()  # [B, 576]
    total = torch.zeros(())
    logits_by_head = {}
    for name in PATCH_HEADS:
        for features, head, scale in ((patches, heads.tower[name], 1.0), (projected, heads.projector[name], 0.5)):
            logits = head(features)  # [B, 576, C]
            ce = F.cross_entropy(logits.flatten(0, 1), labels[name].flatten(), reduction="none")
            total = total + scale * (ce * weight.flatten()).sum() / weight.sum()
        logits_by_head[name] = logits
    total = total + F.binary_cross_entropy_with_logits(heads.cls_pairs(cls), labels["pairs"])
    total = total + F.cross_entropy(heads.cls_count(cls), labels["count"])
    return total, logits_by_head


@torch.no_grad()
def vision_accuracy(model, heads, heldout: list[tuple[torch.Tensor, dict]]) -> dict[str, float]:
    """Held-out per-patch accuracy of the projector-side heads on object patches (and all patches)."""
    correct, total, correct_all, total_all = defaultdict(float), 0.0, defaultdict(float), 0.0
    for pixels, labels in heldout:
        _, logits = vision_loss(model, heads, pixels, labels)
        obj = labels["colour"] > 0
        total += obj.sum().item()
        total_all += obj.numel()
        for name in PATCH_HEADS:
            hit = logits[name].argmax(-1) == labels[name]
            correct[name] += (hit & obj).sum().item()
            correct_all[name] += hit.sum().item()
    result = {f"patch_{name}": correct[name] / total for name in PATCH_HEADS}
    result.update({f"patch_{name}_all": correct_all[name] / total_all for name in PATCH_HEADS})
    return result


# ---- projector alignment --------------------------------------------------------------------
def patch_code(seed: int, dim: int) -> dict[str, torch.Tensor]:
    """The fixed target code of the projector output: orthogonal directions (a seeded random
    rotation of `dim` axes) for each colour, shape and size (index 0 = background), the anchor flag,
    and the patch's row and column (linear + 3 sinusoid pairs each). A patch's target is the sum of
    its attributes' directions: distinct attributes are orthogonal, so the language model can match
    a question word to the patches that have it with one dot product."""
    gen = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(dim, dim, generator=gen))[0]  # [dim, dim] orthonormal columns
    sizes = {"colour": PATCH_HEADS["colour"], "shape": PATCH_HEADS["shape"], "size": PATCH_HEADS["size"], "anchor": 2}
    code, start = {}, 0
    for name, n in sizes.items():
        code[name] = basis[:, start : start + n].T.contiguous()  # [n, dim]
        start += n
    grid = torch.arange(data.GRID, dtype=torch.float32)
    coords = [(grid - (data.GRID - 1) / 2) / ((data.GRID - 1) / 2)]  # linear in [-1, 1]
    for k in (1, 2, 4):
        coords += [torch.cos(math.pi * k * grid / data.GRID), torch.sin(math.pi * k * grid / data.GRID)]
    coords = torch.stack(coords, 1)  # [24, 7]
    for name in ("row", "col"):
        code[name] = coords @ basis[:, start : start + coords.shape[1]].T  # [24, dim]
        start += coords.shape[1]
    assert start <= dim, f"the code needs {start} dims, the projector has {dim}"
    return code


def code_targets(code: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-patch target vectors [B, 576, dim] from `patch_labels`-style labels (norm ~2-3)."""
    target = code["colour"][labels["colour"]] + code["shape"][labels["shape"]] + code["size"][labels["size"]]
    target = target + 0.5 * code["anchor"][labels["anchor"]]
    return target + code["row"][labels["row"] - 1] + code["col"][labels["col"] - 1]


@torch.no_grad()
def code_accuracy(projected: torch.Tensor, code: dict[str, torch.Tensor], labels: dict) -> dict[str, float]:
    """Nearest-direction decoding of the projector output on object patches, per attribute."""
    obj = labels["colour"] > 0  # [B, 576]
    result = {}
    for name in ("colour", "shape", "size"):
        guess = (projected @ code[name].T).argmax(-1)  # [B, 576]
        result[f"code_{name}"] = (guess == labels[name])[obj].float().mean().item()
    for name in ("row", "col"):
        target = code[name] - code[name].mean(0)
        guess = (projected @ target.T).argmax(-1) + 1
        result[f"code_{name}_within1"] = ((guess - labels[name]).abs() <= 1)[obj].float().mean().item()
    return result

