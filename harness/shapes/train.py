"""Train the embedded model tiny-llava-shapes from scratch on the synthetic shapes benchmark.

    python -m harness.shapes.train                    # the full recipe (~3 h on 2 CPU cores); rerun to resume
    python -m harness.shapes.train --export-only      # final evaluation + HF checkpoint from the last state
    python -m harness.shapes.train --check            # numerical checks of the packed forward, then exit

The model is transformers' `LlavaForConditionalGeneration` (CLIP tower 128 x 4 layers, 336 px / patch
14 -> 576 image tokens; GELU projector 128 -> 64 -> 64; Llama 64 wide x 32 layers x 2 heads, tied
embeddings, ~2.5 M parameters, fp32). Three stages, each resumable from `--workdir/state.pt`
(written atomically every `--checkpoint-minutes`):

1. vision: the tower and projector alone, densely supervised (tower features and projector output). Linear heads on the layer -2 patch
   features (and on the projector output) predict, per patch, the colour, shape and size of the
   object covering it (or background), the patch's own row and column (every patch, so that the
   layout survives renumbered positions) and whether the patch is the object's first evidence
   patch ("anchor", a handle for counting); heads on the CLS token predict the set
   of (colour, shape) pairs and the number of objects (CLIP-like global content). Stops when the
   held-out per-patch accuracies pass `--vision-target` or after `--minutes-vision`.
2. lm: tower (and by default the projector) frozen; the language model is trained on the answer
   tokens (+ `</s>`) of packed sequences: `<s> USER:` + an image block + ~12 question blocks `\\n {prompt} ASSISTANT: {answer}`,
   each block seeing the prefix, the image and itself (block attention mask; equal to separate
   prompts, see `--check`). The image block is a subset of the 576 tokens: all object patches plus
   random background (96 tokens at first, then up to all 576: the prototype stayed at chance when
   trained on all 576 tokens from the start), under original RoPE positions or renumbered
   contiguously ("compact"), with random shifts of the text block, and sometimes a switch to a
   smaller subset at a random decoder layer (what in-LLM pruning does). A fraction of the steps uses
   the full image with standard positions (the vanilla case).
3. final: robustness evaluation (random 192 / 32 kept tokens, original vs compact positions, before
   the LLM and at layer 2), then the HF checkpoint, processor and model card in `--out`.

The learning curve goes to `--workdir/curve.jsonl` (and `--out/training_curve.jsonl`). The LLM's
attention is never supervised: that would build one pruning method's criterion into the model.
"""

from __future__ import annotations

import os

# Sleep rather than spin while waiting for OpenMP work: on a shared 2-core machine spinning threads
# of concurrent torch processes slow each other down several-fold. Must precede `import torch`.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import importlib.util
import json
import math
import random
import shutil
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm
from transformers import (
    AttentionInterface,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
)
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from harness.model import IMAGE_TOKEN, build_word_processor, load_llava
from harness.shapes import data

REPO = Path(__file__).resolve().parents[2]
N_PATCHES = data.GRID * data.GRID  # 576 image tokens
PREFIX_LEN = 2  # "<s> USER:" precede the image block
VANILLA_TEXT_START = PREFIX_LEN + N_PATCHES  # 578: position of the "\n" after a full image block
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
TASKS = (
    "pope/random", "pope/popular", "pope/adversarial", "gqa/colour", "gqa/shape", "gqa/relation", "gqa/count",
    "mme/existence", "mme/count", "mme/position", "mme/color",
)  # fmt: skip
BASE_TASK_WEIGHT = {  # harder question types are drawn more often into a packed sequence
    "pope/adversarial": 1.25, "gqa/relation": 1.25, "gqa/count": 1.5, "mme/count": 1.5,
    "mme/position": 1.25, "mme/color": 1.25,
}  # fmt: skip
BIND_TASKS = {"gqa/colour", "gqa/shape"}  # the bind phase's questions (with the lookup block)
MAX_NEW_TOKENS = 3  # as the shapes task YAMLs


# ---- model -----------------------------------------------------------------------------------
def build_model(processor, seed: int) -> LlavaForConditionalGeneration:
    """The tiny LLaVA with seeded random weights, fp32, SDPA attention."""
    tokenizer = processor.tokenizer
    vocab = tokenizer.get_vocab()
    vision = CLIPVisionConfig(
        hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
        image_size=336, patch_size=14, projection_dim=64,
    )  # fmt: skip
    text = LlamaConfig(
        hidden_size=64, intermediate_size=170, num_hidden_layers=32, num_attention_heads=2,
        num_key_value_heads=2, head_dim=32, vocab_size=len(vocab), max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )  # fmt: skip
    config = LlavaConfig(
        vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_index=vocab[IMAGE_TOKEN],
        projector_hidden_act="gelu", vision_feature_layer=-2, vision_feature_select_strategy="default",
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )  # fmt: skip
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).float()
    with torch.no_grad():  # position embeddings x8: at norm ~0.5 they are swamped by content features
        model.model.vision_tower.embeddings.position_embedding.weight.mul_(8.0)  # (norm ~70): row/col unlearnable
    assert model.lm_head.weight is model.get_input_embeddings().weight, "embeddings must be tied"
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    gen.do_sample, gen.max_new_tokens = False, MAX_NEW_TOKENS
    return model


def pixel_values(images: list, processor) -> torch.Tensor:
    """CLIP-normalised pixels [B, 3, 336, 336]; equals the processor's output (336 px images, no resize)."""
    ip = processor.image_processor
    mean = torch.tensor(ip.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(ip.image_std).view(1, 3, 1, 1)
    arr = np.stack([np.array(image, dtype=np.float32) for image in images]) / 255.0  # [B, H, W, 3]
    return (torch.from_numpy(arr).permute(0, 3, 1, 2) - mean) / std


def tower_hidden(model: LlavaForConditionalGeneration, pixels: torch.Tensor) -> torch.Tensor:
    """The tower's hidden states at `vision_feature_layer` (CLS first): [B, 577, 128].

    Runs only the layers needed (3 of 4 for layer -2); equal to `hidden_states[-2]` of the tower.
    """
    tower = model.model.vision_tower
    hidden = tower.pre_layrnorm(tower.embeddings(pixels))
    n_layers = len(tower.encoder.layers) + 1 + model.config.vision_feature_layer
    for layer in tower.encoder.layers[:n_layers]:
        hidden = layer(hidden, None)
    return hidden


def cosine_to_10pct(progress: float) -> float:
    """LR factor: cosine from 1 at progress 0 down to 0.1 at progress >= 1."""
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# ---- vision-stage supervision ----------------------------------------------------------------
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


# ---- questions and token blocks --------------------------------------------------------------
class Blocks:
    """Token ids of question blocks: `\\n {prompt} ASSISTANT:` + answer words (label: answer + `</s>`)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        ids = tokenizer.convert_tokens_to_ids
        self.bos, self.eos, self.pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
        self.user, self.image, self.newline, self.assistant = ids("USER:"), ids(IMAGE_TOKEN), ids("\n"), ids("ASSISTANT:")
        self.unk = tokenizer.unk_token_id
        self._cache: dict[str, list[int]] = {}

    def words(self, text: str) -> list[int]:
        if text not in self._cache:
            tokens = self.tokenizer(text, add_special_tokens=False).input_ids
            if self.unk in tokens:
                raise ValueError(f"text {text!r} has words outside the vocabulary")
            self._cache[text] = tokens
        return self._cache[text]

    def prompt(self, prompt: str) -> list[int]:
        return [self.newline] + self.words(prompt) + [self.assistant]


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


# ---- sequence layouts ------------------------------------------------------------------------
KIND_PREFIX, KIND_IMAGE, KIND_PROMPT, KIND_ANSWER, KIND_PAD = 0, 1, 2, 3, 4


@dataclass
class Layout:
    """How the image block and the text are laid out for one training step (shared by the batch).

    n_image: image tokens entering layer 0 (576 = the full image).
    positions: "original" (image token i at 2 + i, text at 578 + shift) or "compact" (kept image
        tokens at 2, 3, ..., text right after, + shift).
    text_shift: extra positions between the image block and the text.
    answer_jump: compact only: answer tokens sit at the positions they would have after a full
        image block (HF decoding after an in-LLM compaction gives new tokens the global position).
    thin: probability that an item's objects keep only part of their patches (>= 1 each).
    switch_layer / n_switch / switch_positions: from that decoder layer on, only n_switch of the
        image tokens remain (an object-preserving subset), with original or compact positions.
    """

    n_image: int = N_PATCHES
    positions: str = "original"
    text_shift: int = 0
    answer_jump: bool = False
    thin: float = 0.0
    switch_layer: int | None = None
    n_switch: int = 0
    switch_positions: str = "original"

    def describe(self) -> str:
        text = f"{self.n_image}/{self.positions}"
        if self.switch_layer is not None:
            text += f">L{self.switch_layer}:{self.n_switch}/{self.switch_positions}"
        return text


def choose_patches(scene: data.Scene, k: int, rng: random.Random, thin: float, allowed: list[int] | None = None) -> list[int]:
    """k sorted patch indices: the objects' evidence patches (thinned with probability `thin`, at
    least one per object) plus random background; only from `allowed` if given."""
    allowed_set = set(range(N_PATCHES)) if allowed is None else set(allowed)
    if k >= len(allowed_set):
        return sorted(allowed_set)
    evidences = [[p for p in obj.evidence if p in allowed_set] for obj in scene.objects]
    evidences = [ev for ev in evidences if ev]
    object_patches = {p for ev in evidences for p in ev}
    if rng.random() < thin:
        evidences = [rng.sample(ev, max(1, round(len(ev) * rng.uniform(0.25, 1.0)))) for ev in evidences]
    chosen = {p for ev in evidences for p in ev}
    if len(chosen) > k:  # keep one patch per object (as far as k allows), then random object patches
        first = [rng.choice(ev) for ev in evidences]
        rng.shuffle(first)
        first = set(first[:k])
        rest = sorted(chosen - first)
        rng.shuffle(rest)
        chosen = first | set(rest[: k - len(first)])
    background = sorted(allowed_set - object_patches)
    chosen |= set(rng.sample(background, min(len(background), k - len(chosen))))
    if len(chosen) < k:  # the allowed set is nearly all objects: top up with dropped object patches
        chosen |= set(rng.sample(sorted(allowed_set - chosen), k - len(chosen)))
    return sorted(chosen)


@dataclass
class Sequence:
    """One packed sequence (lists of equal length, one entry per token)."""

    ids: list[int]
    kind: list[int]
    patch: list[int]  # image patch index for image tokens, -1 otherwise
    offset: list[int]  # position offset within its question block (text tokens), 0 otherwise
    group: list[int]  # 0 = prefix + image (seen by all), j = question block j
    labels: list[int]  # next-token target or -100
    tasks: list[str | None]  # task of each labelled token (None elsewhere)
    kept: list[int]  # image patches in the block (sorted)
    kept_switch: list[int] | None  # image patches after the layout's switch layer

    def append_block(self, ids: list[int], kind: list[int], labels: list[int], tasks: list[str | None]) -> None:
        """Appends a text block as the next group (it sees the prefix, the image and itself)."""
        group = max(self.group) + 1
        self.ids += ids
        self.kind += kind
        self.patch += [-1] * len(ids)
        self.offset += list(range(len(ids)))
        self.group += [group] * len(ids)
        self.labels += labels
        self.tasks += tasks


def build_sequence(blocks: Blocks, kept: list[int], questions: list[tuple[list[int], list[int], str]]) -> Sequence:
    """`<s> USER:` + image tokens for `kept` + one block per (prompt ids, answer ids, task).

    A block's input is prompt + answer ids; its labels predict the answer after `ASSISTANT:` and
    `</s>` after the last answer word. `answer ids` may be empty (evaluation: nothing generated yet).
    """
    k = len(kept)
    seq = Sequence(
        ids=[blocks.bos, blocks.user] + [blocks.image] * k,
        kind=[KIND_PREFIX] * PREFIX_LEN + [KIND_IMAGE] * k,
        patch=[-1] * PREFIX_LEN + list(kept),
        offset=[0] * (PREFIX_LEN + k),
        group=[0] * (PREFIX_LEN + k),
        labels=[-100] * (PREFIX_LEN + k),
        tasks=[None] * (PREFIX_LEN + k),
        kept=list(kept),
        kept_switch=None,
    )
    for prompt_ids, answer_ids, task in questions:  # block j = group j (1, 2, ...)
        tokens = prompt_ids + answer_ids
        kind = [KIND_PROMPT] * len(prompt_ids) + [KIND_ANSWER] * len(answer_ids)
        if answer_ids or task is not None:
            labels = [-100] * (len(prompt_ids) - 1) + answer_ids + [blocks.eos]
            tasks = [None] * (len(prompt_ids) - 1) + [task] * len(answer_ids) + [None]
        else:
            labels, tasks = [-100] * len(tokens), [None] * len(tokens)
        seq.append_block(tokens, kind, labels, tasks)
    return seq


def add_lookup_block(seq: Sequence, blocks: Blocks, scene: data.Scene, rng: random.Random) -> None:
    """Appends a training-only attribute-lookup block `\\n star red circle blue ...` to `seq`.

    Word pairs (shape, its colour) for every shape that occurs once and (colour, its shape) for every
    colour that occurs once, shuffled; the second word of each pair is labelled. It is the gqa
    colour/shape question in two tokens, so one image teaches several bindings for a few tokens of
    compute (a caption-like objective; the attention is not supervised). Tasks: lookup/colour, lookup/shape.
    """
    shapes = [obj.shape for obj in scene.objects]
    colours = [obj.colour for obj in scene.objects]
    pairs = [(obj.shape, obj.colour, "lookup/colour") for obj in scene.objects if shapes.count(obj.shape) == 1]
    pairs += [(obj.colour, obj.shape, "lookup/shape") for obj in scene.objects if colours.count(obj.colour) == 1]
    if not pairs:
        return
    rng.shuffle(pairs)
    ids, labels, tasks = [blocks.newline], [-100], [None]
    for key, value, task in pairs:
        (key_id,), (value_id,) = blocks.words(key), blocks.words(value)
        ids += [key_id, value_id]
        labels += [value_id, -100]
        tasks += [task, None]
    seq.append_block(ids, [KIND_PROMPT] * len(ids), labels, tasks)


def layout_positions(kind, patch, offset, n_image: int, positions: str, text_shift: int, answer_jump: bool) -> torch.Tensor:
    """RoPE positions of a (possibly gathered) token sequence; all args [B, L] tensors but the layout."""
    if positions == "original":
        image_pos = PREFIX_LEN + patch
        text_start = VANILLA_TEXT_START + text_shift
    elif positions == "compact":
        image_pos = PREFIX_LEN + (kind == KIND_IMAGE).long().cumsum(1) - 1
        text_start = PREFIX_LEN + n_image + text_shift
    else:
        raise ValueError(f"positions={positions!r} (allowed: original, compact)")
    prefix_pos = torch.arange(kind.shape[1]).expand_as(kind)
    text_pos = text_start + offset
    if answer_jump and positions == "compact":
        text_pos = torch.where(kind == KIND_ANSWER, text_pos + (N_PATCHES - n_image), text_pos)
    pos = torch.where(kind == KIND_IMAGE, image_pos, text_pos)
    pos = torch.where(kind == KIND_PREFIX, prefix_pos, pos)
    return torch.where(kind == KIND_PAD, torch.zeros_like(pos), pos)


def block_mask(group: torch.Tensor) -> torch.Tensor:
    """[B, 1, L, L] bool: causal, and a question block sees only the prefix + image and itself."""
    length = group.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    same = (group[:, :, None] == group[:, None, :]) | (group[:, None, :] == 0)
    return (causal & same)[:, None]


@dataclass
class Batch:
    ids: torch.Tensor  # [B, L]
    kept: torch.Tensor  # [B, k] image patches in sequence order
    positions: torch.Tensor  # [B, L]
    mask: torch.Tensor  # [B, 1, L, L] bool
    labels: torch.Tensor  # [B, L]
    tasks: list[list[str | None]]
    switch: tuple | None  # (layer, index [B, L2], positions [B, L2], mask [B, 1, L2, L2], labels [B, L2])


def collate(seqs: list[Sequence], layout: Layout, pad_id: int) -> Batch:
    """Pads sequences (same number of image tokens) at the end and builds positions and masks."""
    length = max(len(s.ids) for s in seqs)

    def pad(values, fill):
        return torch.tensor([list(v) + [fill] * (length - len(v)) for v in values])

    kind = pad([s.kind for s in seqs], KIND_PAD)
    patch = pad([s.patch for s in seqs], -1)
    offset = pad([s.offset for s in seqs], 0)
    group = pad([s.group for s in seqs], -1)
    labels = pad([s.labels for s in seqs], -100)
    tasks = [s.tasks + [None] * (length - len(s.tasks)) for s in seqs]
    switch = None
    if layout.switch_layer is None:
        positions = layout_positions(kind, patch, offset, layout.n_image, layout.positions, layout.text_shift, layout.answer_jump)
    else:  # original positions up to the switch layer, then a subset with its own layout
        positions = layout_positions(kind, patch, offset, layout.n_image, "original", layout.text_shift, False)
        keep = torch.stack([
            (kind[b] != KIND_IMAGE) | torch.isin(patch[b], torch.tensor(s.kept_switch)) for b, s in enumerate(seqs)
        ])  # fmt: skip
        index = keep.nonzero()[:, 1].view(len(seqs), -1)  # [B, L2]: same count per row by construction
        sub = [t.gather(1, index) for t in (kind, patch, offset, group, labels)]
        sub_positions = layout_positions(*sub[:3], layout.n_switch, layout.switch_positions, layout.text_shift, True)
        switch = (layout.switch_layer, index, sub_positions, block_mask(sub[3]), sub[4])
    return Batch(
        ids=pad([s.ids for s in seqs], pad_id),
        kept=torch.tensor([s.kept for s in seqs]),
        positions=positions,
        mask=block_mask(group),
        labels=labels,
        tasks=tasks,
        switch=switch,
    )


@dataclass
class PackedMask:
    """Attention mask of a packed batch, handed through the decoder layers to `packed_attention`.

    The first `n_prefix` positions (`<s> USER:` + image block, the same count in every row) attend
    causally among themselves; the other rows (question blocks, padding) use `text`
    [B, 1, L - n_prefix, L], additive float (0 = attend).
    """

    n_prefix: int
    text: torch.Tensor

    @classmethod
    def from_bool(cls, mask: torch.Tensor, n_prefix: int) -> PackedMask:
        text = mask[:, :, n_prefix:]  # [B, 1, T, L]
        return cls(n_prefix, torch.zeros(text.shape).masked_fill_(~text, torch.finfo(torch.float32).min))


PACKED_ATTENTION = "prunebench_packed"


def packed_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """SDPA split in two: causal prefix + image block, then the text rows against all keys.

    Computes the same as SDPA with the full block mask (`--check`) at about half the cost: the
    image block's rows use the causal kernel and skip the mask. Any other mask goes to plain SDPA.
    query [B, H, L, D]; key/value [B, H_kv, L, D]; returns [B, L, H, D].
    """
    if not isinstance(attention_mask, PackedMask):
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    n = attention_mask.n_prefix
    head = F.scaled_dot_product_attention(query[:, :, :n], key[:, :, :n], value[:, :, :n], is_causal=True, scale=scaling)
    tail = F.scaled_dot_product_attention(query[:, :, n:], key, value, attn_mask=attention_mask.text, scale=scaling)
    return torch.cat([head, tail], dim=2).transpose(1, 2).contiguous(), None


AttentionInterface.register(PACKED_ATTENTION, packed_attention)
AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)  # generate() then builds SDPA's masks


def lm_hidden(model, batch: Batch, projected: torch.Tensor, layers: set[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs the language model on a packed batch.

    Args:
        model: the LLaVA model.
        batch: from `collate`.
        projected: projector output of every image [B, 576, 64].
        layers: run only these decoder layers (the others are skipped: identity), or all if None.

    Returns:
        final hidden states [B, L', 64] (L' = L, or the switched length) and their labels [B, L'].
    """
    language_model = model.model.language_model
    embeds = model.get_input_embeddings()(batch.ids)  # [B, L, 64]
    k = batch.kept.shape[1]
    image = projected.gather(1, batch.kept[..., None].expand(-1, -1, projected.shape[-1]))  # [B, k, 64]
    hidden = torch.cat([embeds[:, :PREFIX_LEN], image, embeds[:, PREFIX_LEN + k :]], dim=1)
    packed = model.config.text_config._attn_implementation == PACKED_ATTENTION
    positions, mask, labels = batch.positions, batch.mask, batch.labels
    if packed:
        mask = PackedMask.from_bool(mask, PREFIX_LEN + k)
    cos_sin = language_model.rotary_emb(hidden, positions)
    for i, layer in enumerate(language_model.layers):
        if batch.switch is not None and i == batch.switch[0]:
            _, index, positions, mask, labels = batch.switch
            if packed:
                mask = PackedMask.from_bool(mask, int((index[0] < PREFIX_LEN + k).sum()))  # prefix + kept image
            hidden = hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[-1]))
            cos_sin = language_model.rotary_emb(hidden, positions)
        if layers is None or i in layers:
            hidden = layer(hidden, attention_mask=mask, position_ids=positions, position_embeddings=cos_sin)
    return language_model.norm(hidden), labels


def batch_tasks(batch: Batch) -> list[list[str | None]]:
    """Per-token tasks aligned with `lm_hidden`'s labels (gathered when the layout switches)."""
    if batch.switch is None:
        return batch.tasks
    index = batch.switch[1]
    return [[row[i] for i in index[b].tolist()] for b, row in enumerate(batch.tasks)]


# ---- curriculum ------------------------------------------------------------------------------
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


# ---- evaluation ------------------------------------------------------------------------------
def load_scoring():
    """tasks/shapes_utils.py (pure scoring helpers; lmms-eval loads it by path, so we do too)."""
    spec = importlib.util.spec_from_file_location("prunebench_shapes_utils", REPO / "tasks" / "shapes_utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def eval_items(n_pope: int, n_gqa: int, n_mme: int) -> list[dict]:
    """A fixed held-out set from the evaluation seeds (the first images of each evaluation split)."""
    items = []
    for split in data.POPE_SPLITS:
        for row in data.make_split("pope", split, data.EVAL_SEEDS["pope"], n_pope):
            items.append({"family": "pope", "group": split, "prompt": data.prompt("pope", row["question"]), **row})
    for row in data.make_split("gqa", None, data.EVAL_SEEDS["gqa"], n_gqa):
        items.append({"family": "gqa", "group": row["type"], "prompt": data.prompt("gqa", row["question"]), **row})
    for row in data.make_split("mme", None, data.EVAL_SEEDS["mme"], n_mme):
        items.append({"family": "mme", "group": row["category"], "prompt": data.prompt("mme", row["question"]), **row})
    return items


def score(items: list[dict], responses: list[str], scoring) -> dict[str, float]:
    """pope F1 per split + mean, gqa EM (+ per type), mme acc / acc+ per category and total (% of max)."""
    metrics: dict[str, float] = {}
    by = defaultdict(list)
    for item, response in zip(items, responses):
        by[item["family"]].append((item, response))
    if by["pope"]:
        f1s = []
        for split in data.POPE_SPLITS:
            rows = [(i, r) for i, r in by["pope"] if i["group"] == split]
            m = scoring.pope_metrics([scoring.pope_parse(r) for _, r in rows], [i["answer"] for i, _ in rows])
            metrics[f"pope_{split}_f1"] = m["f1"]
            metrics[f"pope_{split}_yes"] = m["yes_ratio"]
            f1s.append(m["f1"])
        metrics["pope_f1"] = sum(f1s) / len(f1s)
    if by["gqa"]:
        hits = defaultdict(list)
        for item, response in by["gqa"]:
            hit = float(scoring.gqa_normalize(response) == scoring.gqa_normalize(item["answer"]))
            hits["all"].append(hit)
            hits[item["group"]].append(hit)
        metrics["gqa_em"] = 100.0 * sum(hits["all"]) / len(hits["all"])
        for kind in data.GQA_TYPES:
            if hits[kind]:
                metrics[f"gqa_{kind}"] = 100.0 * sum(hits[kind]) / len(hits[kind])
    if by["mme"]:
        records = [
            {"question_id": i["question_id"], "category": i["category"],
             "score": float(scoring.mme_parse(r) == i["answer"].lower())}
            for i, r in by["mme"]
        ]  # fmt: skip
        cats = scoring.mme_category_scores(records)
        for category, s in cats.items():
            metrics[f"mme_{category}_acc"] = s["acc"]
            metrics[f"mme_{category}_acc+"] = s["acc_plus"]
        metrics["mme_total_pct"] = 100.0 * sum(s["score"] for s in cats.values()) / (200.0 * len(cats))
    return {key: round(value, 2) for key, value in metrics.items()}


@torch.no_grad()
def generate_answers(model, processor, items: list[dict]) -> list[str]:
    """Greedy answers through `model.generate` on the real template, full image (vanilla)."""
    model.eval()
    newline = processor.tokenizer.convert_tokens_to_ids("\n")
    answers = []
    for item in items:
        enc = processor(images=item["image"], text=f"USER: <image>\n{item['prompt']} ASSISTANT:", return_tensors="pt")
        out = model.generate(
            **enc, max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
            eos_token_id=[processor.tokenizer.eos_token_id, newline], pad_token_id=processor.tokenizer.pad_token_id,
        )  # fmt: skip
        answers.append(processor.tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip())
    return answers


@torch.no_grad()
def greedy_subset_answer(model, blocks: Blocks, projected: torch.Tensor, prompt: str, layout: Layout, kept, kept_switch=None) -> str:
    """Greedy answer with our own forward (no cache) for a pruned image block.

    Args:
        projected: [1, 576, 64] projector output of the image.
        layout: positions of the first layers (and the switch, if any).
        kept / kept_switch: image patches entering layer 0 / the switch layer.
    """
    answer: list[int] = []
    for _ in range(MAX_NEW_TOKENS):
        seq = build_sequence(blocks, kept, [(blocks.prompt(prompt), answer, None)])
        seq.kept_switch = kept_switch
        batch = collate([seq], layout, blocks.pad)
        hidden, _ = lm_hidden(model, batch, projected)
        token = model.lm_head(hidden[0, -1]).argmax().item()
        if token in (blocks.eos, blocks.newline):
            break
        answer.append(token)
    return blocks.tokenizer.decode(answer, skip_special_tokens=True).strip()


ROBUSTNESS_MODES = {  # name -> (kept tokens at layer 0, positions, switch layer, kept after it, its positions)
    "full_ownforward": (576, "original", None, 0, None),
    "pre_random192_original": (192, "original", None, 0, None),
    "pre_random192_compact": (192, "compact", None, 0, None),
    "pre_random32_original": (32, "original", None, 0, None),
    "L2_random192_original": (576, "original", 2, 192, "original"),
    "L2_random192_compact": (576, "original", 2, 192, "compact"),
    "L2_random32_original": (576, "original", 2, 32, "original"),
}


@torch.no_grad()
def robustness_answers(model, processor, blocks: Blocks, items: list[dict], mode: str, seed: int) -> list[str]:
    """Answers with random kept image tokens (seeded per item), before the LLM or at layer 2."""
    model.eval()
    n0, positions, switch_layer, n1, switch_positions = ROBUSTNESS_MODES[mode]
    answers = []
    for index, item in enumerate(items):
        rng = random.Random(f"robust:{seed}:{index}")
        projected = model.model.multi_modal_projector(tower_hidden(model, pixel_values([item["image"]], processor))[:, 1:])
        kept = sorted(rng.sample(range(N_PATCHES), n0))
        kept_switch = sorted(rng.sample(kept, n1)) if switch_layer is not None else None
        layout = Layout(n_image=n0, positions=positions, switch_layer=switch_layer, n_switch=n1,
                        switch_positions=switch_positions or "original")  # fmt: skip
        answers.append(greedy_subset_answer(model, blocks, projected, item["prompt"], layout, kept, kept_switch))
    return answers


# ---- checkpoints and the learning curve ------------------------------------------------------
def atomic_torch_save(obj, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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


class Clock:
    """Wall-clock seconds, cumulative across resumes: in all and per stage ("vision", "lm")."""

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


class Trainer:
    """State of one training run: model, heads, data streams, checkpointing, curve."""

    def __init__(self, args):
        self.args = args
        self.workdir = Path(args.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.state_path = self.workdir / "state.pt"
        self.processor = build_word_processor(data.vocabulary())
        self.blocks = Blocks(self.processor.tokenizer)
        self.model = build_model(self.processor, args.seed)
        self.model.set_attn_implementation({"text_config": PACKED_ATTENTION})  # == SDPA, faster on packed batches
        tower_dim = self.model.config.vision_config.hidden_size
        self.heads = VisionHeads(tower_dim, self.model.config.text_config.hidden_size)
        self.scoring = load_scoring()
        self.state = {
            "stage": "vision", "step": {"vision": 0, "align": 0, "lm": 0}, "images": {"vision": 0, "align": 0, "lm": 0},
            "elapsed": {"total": 0.0, "vision": 0.0, "align": 0.0, "lm": 0.0}, "task_loss": {t: 1.0 for t in TASKS},
            "curve_lines": 0, "optimizer": None, "phase": 0, "phase1_start": None, "last_eval": {}, "final": None, "args": vars(args),
        }  # fmt: skip
        if self.state_path.exists():
            saved = torch.load(self.state_path, map_location="cpu", weights_only=False)
            self.model.load_state_dict(saved.pop("model"))
            self.heads.load_state_dict(saved.pop("heads"))
            torch.set_rng_state(saved.pop("torch_rng"))
            self.state.update(saved)
            self.state["args"] = vars(args)
            print(f"resumed from {self.state_path}: stage={self.state['stage']} steps={self.state['step']} "
                  f"elapsed={self.state['elapsed']['total'] / 60:.1f} min", flush=True)  # fmt: skip
        for key in ("step", "images", "elapsed"):  # states written before the align stage existed
            self.state[key].setdefault("align", 0)
        if args.restart_lm:
            self.restart_lm()
        if args.extend_lm > 0:
            self.extend_lm()
        self.curve = Curve(self.workdir / "curve.jsonl", self.state["curve_lines"])
        self.clock = Clock(self.state["elapsed"])
        self.last_save = time.time()

    def restart_lm(self) -> None:
        """Keeps the vision stage, discards the language model (and, unless `--keep-align`, the
        projector): the next run re-fits the projector (align) and trains a fresh language model.
        The discarded time stays in the total and is recorded as `elapsed["discarded_lm"]`."""
        state = self.state
        if state["stage"] == "vision":
            raise ValueError("--restart-lm: the vision stage has not finished yet (nothing to restart)")
        if self.args.keep_align and state["step"]["align"] == 0:
            raise ValueError("--restart-lm --keep-align: the align stage has not run (nothing to keep)")
        redo = ("lm",) if self.args.keep_align else ("align", "lm")
        fresh = build_model(self.processor, self.args.seed)
        self.model.model.language_model.load_state_dict(fresh.model.language_model.state_dict())
        minutes = sum(state["elapsed"][key] for key in redo) / 60
        state["elapsed"]["discarded_lm"] = state["elapsed"].get("discarded_lm", 0.0) + 60 * minutes
        entry = {"steps": dict(state["step"]), "minutes": round(minutes, 1), "last_eval": state.get("last_eval", {})}
        if self.args.restart_why:
            entry["why"] = self.args.restart_why
        state["discarded"] = state.get("discarded", []) + [entry]
        for key in redo:
            state["step"][key] = state["images"][key] = 0
            state["elapsed"][key] = 0.0
        state.update(stage=redo[0], optimizer=None, phase=0, phase1_start=None, decay_start=None, last_eval={}, final=None,
                     task_loss={t: 1.0 for t in TASKS}, bind={"end": None}, extensions=[])  # fmt: skip
        what = "the language model" if self.args.keep_align else "the projector was re-fitted to the patch code (align stage) and the language model"
        self.add_note(f"after {minutes:.1f} min of language stage {what} trained again from scratch (--restart-lm)", "restart")

    def add_note(self, note: str, kind: str) -> None:
        """Appends to the run history shown in the model card."""
        self.state["note"] = "; ".join(n for n in (self.state.get("note", ""), note) if n)
        print(f"{kind}: {note}", flush=True)

    def extend_lm(self) -> None:
        """Continues a finished language stage for `--extend-lm` more minutes (warm restart: LR
        warm-up to `--lr-extend`, then cosine to 10% over the extension; same data stream and
        curriculum). Rerunning the same command while the extension runs resumes it."""
        state, args = self.state, self.args
        extensions = state.setdefault("extensions", [])
        if state["stage"] == "lm" and extensions:
            return  # resuming the running extension
        if state["stage"] not in ("final", "done"):
            raise ValueError(f"--extend-lm: the language stage has not finished (stage={state['stage']!r}); "
                             "resume without --extend-lm first")  # fmt: skip
        before = (state.get("final") or {}).get("vanilla") or state.get("last_eval", {})  # held-out, vanilla
        extensions.append({"start_seconds": state["elapsed"]["lm"], "start_step": state["step"]["lm"],
                           "minutes": args.extend_lm, "lr": args.lr_extend, "before": before})  # fmt: skip
        state.update(stage="lm", optimizer=None, final=None)
        note = (f"after {state['elapsed']['lm'] / 60:.1f} min the language stage was continued for {args.extend_lm:g} min "
                f"(--extend-lm, LR warm restart to {args.lr_extend:g}, cosine to 10%)")  # fmt: skip
        if args.restart_why:
            note += f": {args.restart_why}"
        self.add_note(note, "extend")

    @property
    def extension(self) -> dict | None:
        """The latest `--extend-lm` continuation of the language stage (running while stage is "lm"), if any."""
        return (self.state.get("extensions") or [None])[-1]

    def save(self, optimizer=None) -> None:
        self.state["elapsed"] = self.clock.snapshot()
        self.state["curve_lines"] = len(self.curve.lines)
        self.state["optimizer"] = optimizer.state_dict() if optimizer is not None else None
        payload = dict(self.state, model=self.model.state_dict(), heads=self.heads.state_dict(), torch_rng=torch.get_rng_state())
        atomic_torch_save(payload, self.state_path)
        self.last_save = time.time()

    def maybe_save(self, optimizer) -> None:
        if time.time() - self.last_save >= 60 * self.args.checkpoint_minutes:
            self.save(optimizer)

    def stream(self, name: str, seed: int):
        """The stage's image stream, fast-forwarded past the images already used."""
        stream = data.training_batches(seed)
        skip = self.state["images"][name]
        if skip:
            print(f"fast-forwarding the {name} stream by {skip} images", flush=True)
            for _ in range(skip):
                next(stream)
        return stream

    def take(self, stream, name: str, n: int) -> list:
        batch = [next(stream) for _ in range(n)]
        self.state["images"][name] += n
        return batch

    # ---- stage 1 ---------------------------------------------------------------------------
    def train_vision(self) -> None:
        args, model, heads = self.args, self.model, self.heads
        budget = 60 * args.minutes_vision
        params = list(model.model.vision_tower.parameters()) + list(model.model.multi_modal_projector.parameters())
        params += list(heads.parameters())
        optimizer = torch.optim.AdamW(params, lr=args.lr_vision, weight_decay=0.01)
        if self.state["optimizer"] is not None:
            optimizer.load_state_dict(self.state["optimizer"])
        heldout_stream = data.training_batches(data.EVAL_SEED_BASE - 1 - args.seed)  # disjoint training-range seed
        heldout = []
        for _ in range(args.vision_heldout // 16):
            chunk = [next(heldout_stream) for _ in range(16)]
            heldout.append((pixel_values([c[0] for c in chunk], self.processor), vision_batch_labels([c[1] for c in chunk])))
        stream = self.stream("vision", args.seed)
        model.train()
        self.clock.begin("vision")
        bar = tqdm(total=int(budget), initial=int(min(budget, self.clock.stage("vision"))), desc="vision",
                   unit="s", mininterval=args.bar_seconds)  # fmt: skip
        while self.clock.stage("vision") < budget:
            step = self.state["step"]["vision"]
            fraction = self.clock.stage("vision") / budget
            lr = args.lr_vision * min(1.0, (step + 1) / 50) * cosine_to_10pct(fraction)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = self.take(stream, "vision", args.batch_vision)
            pixels = pixel_values([b[0] for b in batch], self.processor)
            loss, _ = vision_loss(model, heads, pixels, vision_batch_labels([b[1] for b in batch]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            self.state["step"]["vision"] = step + 1
            bar.update(int(min(budget, self.clock.stage("vision"))) - bar.n)
            bar.set_postfix(loss=f"{loss.item():.3f}", step=step + 1, refresh=False)
            record = {"step": step + 1, "stage": "vision", "elapsed": round(self.clock.total(), 1),
                      "loss": round(loss.item(), 4), "lr": lr, "n_image_tokens": N_PATCHES}  # fmt: skip
            done = False
            if (step + 1) % args.vision_eval_every == 0:
                model.eval()
                accuracy = vision_accuracy(model, heads, heldout)
                model.train()
                record["eval"] = {k: round(v, 4) for k, v in accuracy.items()}
                self.state["last_eval"] = record["eval"]
                tqdm.write(f"[vision step {step + 1}] " + " ".join(f"{k}={v:.4f}" for k, v in accuracy.items() if not k.endswith("_all")))
                done = all(accuracy[f"patch_{name}"] >= args.vision_target for name in PATCH_HEADS)
            if (step + 1) % args.log_every == 0 or "eval" in record:
                self.curve.log(record)
            if done:
                tqdm.write(f"vision stage reached the target {args.vision_target} at step {step + 1}")
                break
            self.maybe_save(optimizer)
        bar.close()
        model.eval()
        accuracy = vision_accuracy(model, heads, heldout)
        self.curve.log({"step": self.state["step"]["vision"], "stage": "vision", "elapsed": round(self.clock.total(), 1),
                        "eval": {k: round(v, 4) for k, v in accuracy.items()}, "final": True})  # fmt: skip
        self.state["vision_final"] = accuracy
        tqdm.write("vision stage done: " + json.dumps({k: round(v, 4) for k, v in accuracy.items()}))
        self.clock.end()
        self.state["stage"] = "align"
        self.state["optimizer"] = None
        self.save(None)

    # ---- stage 1b --------------------------------------------------------------------------
    def train_align(self) -> None:
        """Re-fits the projector (fresh weights, tower frozen) to the fixed `patch_code` of each
        patch's attributes (weighted MSE, object patches x5). The projector trained only through
        linear probes gave the language model tokens dominated by one shared direction (mean norm
        184 of 202; colour means 43 apart with within-colour spread 58): the language model then
        stayed at chance on colour and yes/no questions for 80 minutes."""
        args, model = self.args, self.model
        budget = 60 * args.minutes_align
        projector = model.model.multi_modal_projector
        if self.state["step"].get("align", 0) == 0:  # fresh projector weights (seeded)
            torch.manual_seed(args.seed + 7)
            for layer in (projector.linear_1, projector.linear_2):
                layer.reset_parameters()
        model.model.vision_tower.requires_grad_(False)
        projector.requires_grad_(True)
        code = patch_code(args.seed, model.config.text_config.hidden_size)
        optimizer = torch.optim.AdamW(projector.parameters(), lr=args.lr_align, weight_decay=0.0)
        if self.state["optimizer"] is not None:
            optimizer.load_state_dict(self.state["optimizer"])
        heldout_stream = data.training_batches(data.EVAL_SEED_BASE - 2 - args.seed)
        held = [next(heldout_stream) for _ in range(32)]
        with torch.no_grad():
            held_features = tower_hidden(model, pixel_values([h[0] for h in held], self.processor))[:, 1:]
        # the tower's features have std ~9: the fit runs on features / scale (from scratch it stalls
        # otherwise) and the scale is folded into linear_1 at the end
        scale = self.state.setdefault("align_scale", held_features.std().item())
        held_features = held_features / scale
        held_labels = vision_batch_labels([h[1] for h in held])
        stream = self.stream("align", args.seed + 2)
        self.clock.begin("align")
        bar = tqdm(total=int(budget), initial=int(min(budget, self.clock.stage("align"))), desc="align", unit="s",
                   mininterval=args.bar_seconds)  # fmt: skip
        while self.clock.stage("align") < budget:
            step = self.state["step"].get("align", 0)
            fraction = self.clock.stage("align") / budget
            lr = args.lr_align * min(1.0, (step + 1) / 20) * cosine_to_10pct(fraction)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = self.take(stream, "align", args.batch_vision)
            with torch.no_grad():
                features = tower_hidden(model, pixel_values([b[0] for b in batch], self.processor))[:, 1:] / scale
            labels = vision_batch_labels([b[1] for b in batch])
            target = code_targets(code, labels)  # [B, 576, dim]
            weight = 1.0 + 4.0 * (labels["colour"] > 0).float()  # [B, 576]
            error = (projector(features) - target).pow(2).sum(-1)  # [B, 576]
            loss = (error * weight).sum() / weight.sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            self.state["step"]["align"] = step + 1
            bar.update(int(min(budget, self.clock.stage("align"))) - bar.n)
            bar.set_postfix(loss=f"{loss.item():.3f}", step=step + 1, refresh=False)
            record = {"step": step + 1, "stage": "align", "elapsed": round(self.clock.total(), 1), "loss": round(loss.item(), 4), "lr": lr}
            if (step + 1) % 50 == 0:
                record["eval"] = {k: round(v, 4) for k, v in code_accuracy(projector(held_features), code, held_labels).items()}
                tqdm.write(f"[align step {step + 1}] " + json.dumps(record["eval"]))
            if (step + 1) % args.log_every == 0 or "eval" in record:
                self.curve.log(record)
            self.maybe_save(optimizer)
        bar.close()
        with torch.no_grad():
            projected = projector(held_features)
        accuracy = code_accuracy(projected, code, held_labels)
        target = code_targets(code, held_labels)  # [B, 576, dim]
        accuracy["code_r2"] = 1 - ((projected - target).pow(2).sum() / target.var(dim=(0, 1)).sum() / projected[..., 0].numel()).item()
        self.curve.log({"step": self.state["step"]["align"], "stage": "align", "elapsed": round(self.clock.total(), 1),
                        "eval": {k: round(v, 4) for k, v in accuracy.items()}, "final": True})  # fmt: skip
        self.state["align_final"] = accuracy
        tqdm.write("align stage done: " + json.dumps({k: round(v, 4) for k, v in accuracy.items()}))
        with torch.no_grad():  # fold the input scale: projector(features) == fitted(features / scale)
            projector.linear_1.weight.div_(scale)
        projector.requires_grad_(False)
        self.clock.end()
        self.state["stage"] = "lm"
        self.state["optimizer"] = None
        self.save(None)

    # ---- stage 2 ---------------------------------------------------------------------------
    def task_weights(self) -> dict[str, float]:
        return {t: BASE_TASK_WEIGHT.get(t, 1.0) * math.sqrt(0.05 + self.state["task_loss"][t]) for t in TASKS}

    def evaluate(self, items: list[dict], robust_items: list[dict]) -> dict:
        start = time.time()
        metrics = score(items, generate_answers(self.model, self.processor, items), self.scoring)
        for mode in ("L2_random192_original", "L2_random192_compact"):
            answers = robustness_answers(self.model, self.processor, self.blocks, robust_items, mode, self.args.seed)
            metrics[f"gqa_em_{mode}"] = score(robust_items, answers, self.scoring)["gqa_em"]
        metrics["eval_seconds"] = round(time.time() - start, 1)
        return metrics

    def pope_answer_loss(self) -> float:
        """Running answer loss of the three pope splits (chance ~0.69): drives the curriculum and LR."""
        return sum(self.state["task_loss"][t] for t in TASKS if t.startswith("pope/")) / 3

    def bind_status(self, fraction: float) -> tuple[bool, float]:
        """(bind phase on?, teacher weight) at this LM time fraction.

        Bind phase: only gqa colour/shape questions and the lookup block, 96 tokens, on the patch
        code itself (teacher weight 1). It ends when both running answer losses fall below
        `--bind-target` (chance: ln 8 = 2.08 and ln 6 = 1.79) or at `--bind-fraction` of the budget.
        Then the teacher weight falls linearly to 0 over `--teacher-fraction`: the language model
        learns the bindings on clean features, then moves to the projector's real output."""
        args, state = self.args, self.state
        bind = state.setdefault("bind", {"end": None})
        if args.bind_fraction <= 0:
            return False, 0.0
        if self.binding:
            losses = {t: state["task_loss"].get(t, 9.0) for t in sorted(BIND_TASKS)}
            if all(v < args.bind_target for v in losses.values()) or fraction >= args.bind_fraction:
                bind["end"] = fraction
                tqdm.write(f"[lm step {state['step']['lm']}] bind phase ends at {fraction:.3f} of the budget: "
                           + " ".join(f"{t}={v:.3f}" for t, v in losses.items()))  # fmt: skip
                self.curve.log({"step": state["step"]["lm"], "stage": "lm", "elapsed": round(self.clock.total(), 1),
                                "bind_end": round(fraction, 4), "bind_losses": {t: round(v, 4) for t, v in losses.items()}})  # fmt: skip
            else:
                return True, 1.0
        if self.grow_layers and not bind.get("grown"):
            self.grow()
        return False, max(0.0, 1.0 - (fraction - bind["end"]) / max(1e-6, args.teacher_fraction))

    @property
    def binding(self) -> bool:
        """The bind phase is on (enabled and not yet ended)."""
        return self.args.bind_fraction > 0 and self.state.get("bind", {}).get("end") is None

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
        self.state["bind"]["grown"] = True
        tqdm.write(f"[lm step {self.state['step']['lm']}] grown from layers {sorted(self.grow_layers)} to all "
                   f"{len(self.model.model.language_model.layers)} (new layers' residual outputs start at zero)")  # fmt: skip
        self.curve.log({"step": self.state["step"]["lm"], "stage": "lm", "elapsed": round(self.clock.total(), 1), "grown": True})

    def advance_phase(self, fraction: float) -> None:
        """Curriculum phases by LM time fraction: 0 -> 1 at `--warmup-fraction` once the pope answer
        loss is below 0.45 (chance ~0.69), or at three times that fraction regardless; 1 -> 2 after
        `--ramp-fraction` - `--warmup-fraction` of the budget in phase 1."""
        args, state = self.args, self.state
        pope_loss = self.pope_answer_loss()
        fraction -= state.get("bind", {}).get("end") or 0.0  # phases count from the end of the bind phase
        if state["phase"] == 0 and fraction >= args.warmup_fraction and (pope_loss < 0.45 or fraction >= 3 * args.warmup_fraction):
            state["phase"], state["phase1_start"] = 1, fraction
        elif state["phase"] == 1 and fraction >= state["phase1_start"] + args.ramp_fraction - args.warmup_fraction:
            state["phase"] = 2
        else:
            return
        tqdm.write(f"[lm step {state['step']['lm']}] curriculum phase {state['phase']} (pope answer loss {pope_loss:.3f})")
        self.curve.log({"step": state["step"]["lm"], "stage": "lm", "elapsed": round(self.clock.total(), 1),
                        "phase": state["phase"], "pope_loss": round(pope_loss, 4)})  # fmt: skip

    def lr_factor(self, fraction: float) -> float:
        """Constant until the yes/no plateau breaks (pope answer loss < 0.5), then cosine to 10% over
        the rest of the budget: a cosine from the start decayed the LR while the model sat at chance."""
        state = self.state
        pope_loss = self.pope_answer_loss()
        if state.get("decay_start") is None and pope_loss < 0.5:
            state["decay_start"] = fraction
            tqdm.write(f"[lm step {state['step']['lm']}] pope answer loss {pope_loss:.3f}: LR decay starts")
            self.curve.log({"step": state["step"]["lm"], "stage": "lm", "elapsed": round(self.clock.total(), 1),
                            "decay_start": round(fraction, 4), "pope_loss": round(pope_loss, 4)})  # fmt: skip
        if state.get("decay_start") is None:
            return 1.0
        progress = (fraction - state["decay_start"]) / max(1e-6, 1.0 - state["decay_start"])
        return cosine_to_10pct(progress)

    def train_lm(self) -> None:
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
        if self.state["optimizer"] is not None:
            optimizer.load_state_dict(self.state["optimizer"])
        code = patch_code(args.seed, model.config.text_config.hidden_size)
        items = eval_items(args.eval_pope, args.eval_gqa, args.eval_mme)
        robust_items = [item for item in items if item["family"] == "gqa"][: args.eval_robust]
        stream = self.stream("lm", args.seed + 1)
        self.clock.begin("lm")
        last_eval = self.clock.stage("lm") if self.state["step"]["lm"] else -1e9
        bar = tqdm(total=int(budget), initial=int(min(budget, self.clock.stage("lm"))), desc="lm", unit="s",
                   mininterval=args.bar_seconds)  # fmt: skip
        running = []
        while self.clock.stage("lm") < budget:
            if not self.binding and self.clock.stage("lm") - last_eval >= 60 * args.eval_minutes:  # (bind phase: layers missing)
                metrics = self.evaluate(items, robust_items)
                last_eval = self.clock.stage("lm")
                self.state["last_eval"] = metrics
                self.curve.log({"step": self.state["step"]["lm"], "stage": "lm", "elapsed": round(self.clock.total(), 1),
                                "lm_elapsed": round(last_eval, 1), "eval": metrics})  # fmt: skip
                tqdm.write(f"[lm step {self.state['step']['lm']}, {last_eval / 60:.1f} min] " + json.dumps(metrics))
                self.save(optimizer)
            step = self.state["step"]["lm"]
            fraction = min(1.0, self.clock.stage("lm") / budget)
            if extension:  # warm restart over the extension; the bind phase and the curriculum are behind
                progress = (self.clock.stage("lm") - extension["start_seconds"]) / (60 * extension["minutes"])
                warm = min(1.0, (step + 1 - extension["start_step"]) / args.warmup_steps)
                lr = extension["lr"] * warm * cosine_to_10pct(progress)
                binding, teacher = False, 0.0
            else:
                lr = args.lr_lm * min(1.0, (step + 1) / args.warmup_steps) * self.lr_factor(fraction)
                binding, teacher = self.bind_status(fraction)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if binding:
                layout = Layout(n_image=96)
            else:
                self.advance_phase(fraction)
                layout = curriculum(self.state["phase"], random.Random(f"layout:{args.seed}:{step}"))
            first_image = self.state["images"]["lm"]
            batch_items = self.take(stream, "lm", args.batch_lm)
            rngs = [random.Random(f"image:{args.seed}:{first_image + i}") for i in range(len(batch_items))]
            pools = [(scene, question_pool(scene, qas, rng)) for (_, scene, qas), rng in zip(batch_items, rngs)]
            seqs = make_sequences(self.blocks, layout, pools, self.task_weights(), args.questions_per_image, rngs,
                                  tasks=BIND_TASKS if binding else None, lookup=args.lookup)  # fmt: skip
            batch = collate(seqs, layout, self.blocks.pad)
            model.train()
            with torch.no_grad():
                features = tower_hidden(model, pixel_values([b[0] for b in batch_items], self.processor))[:, 1:]
            projected = model.model.multi_modal_projector(features)  # [B, 576, 64]
            if teacher > 0:  # blend toward the patch code the projector was fitted to
                target = code_targets(code, vision_batch_labels([b[1] for b in batch_items]))  # [B, 576, 64]
                projected = teacher * target + (1.0 - teacher) * projected
            hidden, labels = lm_hidden(model, batch, projected, layers=(self.grow_layers or None) if binding else None)
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
                self.state["task_loss"][t] = 0.98 * self.state["task_loss"].get(t, 1.0) + 0.02 * (sum(values) / len(values))
            self.state["step"]["lm"] = step + 1
            running.append(loss.item())
            bar.update(int(min(budget, self.clock.stage("lm"))) - bar.n)
            bar.set_postfix(loss=f"{loss.item():.3f}", step=step + 1, layout=layout.describe(), refresh=False)
            if (step + 1) % args.log_every == 0:
                self.curve.log({
                    "step": step + 1, "stage": "lm", "elapsed": round(self.clock.total(), 1),
                    "lm_elapsed": round(self.clock.stage("lm"), 1), "loss": round(sum(running) / len(running), 4),
                    "lr": round(lr, 7), "grad_norm": round(grad_norm, 3), "n_image_tokens": layout.n_image,
                    "layout": layout.describe(), "phase": "bind" if binding else self.state["phase"], "teacher": round(teacher, 3), "task_loss": {t: round(v, 3) for t, v in self.state["task_loss"].items()},
                })  # fmt: skip
                running = []
            self.maybe_save(optimizer)
        bar.close()
        metrics = self.evaluate(items, robust_items)
        self.state["last_eval"] = metrics
        self.curve.log({"step": self.state["step"]["lm"], "stage": "lm", "elapsed": round(self.clock.total(), 1),
                        "lm_elapsed": round(self.clock.stage("lm"), 1), "eval": metrics, "final": True})  # fmt: skip
        tqdm.write("lm stage done: " + json.dumps(metrics))
        self.clock.end()
        self.state["stage"] = "final"
        self.save(None)

    # ---- stage 3 ---------------------------------------------------------------------------
    def final(self, out: Path) -> None:
        args = self.args
        self.model.eval()
        items = eval_items(args.final_pope, args.final_gqa, args.final_mme)
        start = time.time()
        vanilla_answers = generate_answers(self.model, self.processor, items)
        final = {"n_questions": len(items), "vanilla": score(items, vanilla_answers, self.scoring)}
        agree = None
        for mode in ROBUSTNESS_MODES:
            answers = robustness_answers(self.model, self.processor, self.blocks, items, mode, args.seed)
            final[mode] = score(items, answers, self.scoring)
            if mode == "full_ownforward":
                agree = sum(a == b for a, b in zip(answers, vanilla_answers)) / len(items)
        final["ownforward_agrees_with_generate"] = round(agree, 4)
        final["eval_seconds"] = round(time.time() - start, 1)
        self.state["final"] = final
        print("final evaluation: " + json.dumps(final, indent=1), flush=True)
        export(self, out, items[: args.verify_items], vanilla_answers[: args.verify_items])
        self.state["stage"] = "done"
        self.save(None)


# ---- export ----------------------------------------------------------------------------------
def export(trainer: Trainer, out: Path, items: list[dict], answers: list[str]) -> None:
    """HF checkpoint + processor + model card + curve into `out`, then reload and compare answers."""
    out.mkdir(parents=True, exist_ok=True)
    model = trainer.model
    model.eval()
    model.set_attn_implementation({"text_config": "sdpa"})
    model.save_pretrained(out)
    trainer.processor.save_pretrained(out)
    shutil.copyfile(trainer.curve.path, out / "training_curve.jsonl")
    (out / "README.md").write_text(model_card(trainer))
    for path in out.iterdir():
        path.chmod(0o644)
    size_mb = (out / "model.safetensors").stat().st_size / 2**20
    reloaded, processor = load_llava(pretrained=str(out), dtype="float32", device="cpu")
    again = generate_answers(reloaded, processor, items)
    same = sum(a == b for a, b in zip(again, answers))
    print(f"exported to {out} ({size_mb:.1f} MB); reload gives the same answer on {same}/{len(items)} questions", flush=True)
    if same != len(items):
        raise RuntimeError(f"the exported model answers differently after reload ({same}/{len(items)} equal)")


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


def model_card(trainer: Trainer) -> str:
    state, args = trainer.state, trainer.args
    n_params = sum(p.numel() for p in trainer.model.parameters())
    lm_records = [r for r in trainer.curve.records() if r["stage"] == "lm"]
    stages = lm_stage_labels(lm_records, len(state.get("discarded") or []),
                             [e["start_step"] for e in state.get("extensions") or []])  # fmt: skip
    evals = [(label, r) for label, r in zip(stages, lm_records) if "eval" in r]
    curve_rows = [
        [label, r["step"], f"{r['elapsed'] / 60:.0f}", r["eval"].get("pope_f1", ""), r["eval"].get("gqa_em", ""),
         r["eval"].get("mme_total_pct", ""), r["eval"].get("mme_count_acc", ""), r["eval"].get("mme_position_acc", ""),
         r["eval"].get("mme_color_acc", ""), r["eval"].get("gqa_em_L2_random192_original", ""),
         r["eval"].get("gqa_em_L2_random192_compact", "")]
        for label, r in evals
    ]  # fmt: skip
    vision = state.get("vision_final") or {}
    final = state.get("final") or {}
    final_rows = []
    for mode, metrics in final.items():
        if isinstance(metrics, dict):
            final_rows.append([mode, metrics.get("pope_f1", ""), metrics.get("gqa_em", ""), metrics.get("mme_total_pct", "")]
                              + [f"{metrics.get(f'mme_{c}_acc', '')} / {metrics.get(f'mme_{c}_acc+', '')}" for c in data.MME_CATEGORIES])  # fmt: skip
    elapsed = state["elapsed"]
    notes = [n.strip() for n in state.get("note", "").split(";") if n.strip()]
    history = "\n".join(f"- {n}" for n in notes) if notes else "- trained in one go with the defaults above."
    align = state.get("align_final") or {}
    discarded = state.get("discarded") or []
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
    bind_end = (state.get("bind") or {}).get("end")
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
    for e in state.get("extensions") or []:
        before = e["before"]
        extend_text += (
            f"\n   Then continued for {e['minutes']:g} min from step {e['start_step']} (`--extend-lm`; why: run history"
            f" below): LR warm-up to {e['lr']:g} over {args.warmup_steps} steps, then cosine to 10%, the last curriculum phase"
            f" throughout. Before it (held-out, vanilla): pope F1 {before.get('pope_f1', '?')}, gqa EM {before.get('gqa_em', '?')},"
            f" mme {before.get('mme_total_pct', '?')}% of max."
        )
    decay = state.get("decay_start")
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

## Architecture
- Vision: CLIP tower, hidden 128, 4 layers, 4 heads, MLP 512, 336 px, patch 14 -> 576 patch tokens + CLS;
  features from layer -2, CLS dropped (`vision_feature_select_strategy="default"`).
- Projector: GELU MLP 128 -> 64 -> 64.
- Language model: Llama, hidden 64, 32 layers, 2 heads (head_dim 32, 2 KV heads), MLP 170, RoPE
  (theta 10000), tied embeddings, {len(trainer.processor.tokenizer)}-token word-level vocabulary.
- fp32 safetensors.

## Data
Endless fresh images from `harness.shapes.data.training_batches` (seeds {args.seed} for the vision stage,
{args.seed + 2} for the projector alignment, {args.seed + 1} for the language stage; evaluation seeds >= 10000 are never used for training), 1-6
objects of 6 shapes x 8 colours, questions of the three families (pope / gqa / mme styles) on the
exact evaluation template. Images used: vision {state['images']['vision']}, align {state['images'].get('align', 0)}, language {state['images']['lm']}.

## Recipe
1. **Vision stage** ({state['step']['vision']} steps, {elapsed.get('vision', 0) / 60:.1f} min, batch {args.batch_vision},
   AdamW {args.lr_vision}): linear heads on the layer -2 patch features and on the projector output
   predict per patch the colour, shape and size of the covering object (or background), the
   patch's own row and column and whether it is the object's first evidence patch; CLS heads predict the set of
   (colour, shape) pairs and the number of objects. Held-out accuracy on object patches (projector
   side): {", ".join(f"{k.removeprefix('patch_')} {v:.3f}" for k, v in vision.items() if not k.endswith("_all"))}.
2. **Projector alignment** ({state['step'].get('align', 0)} steps, {elapsed.get('align', 0) / 60:.1f} min, batch {args.batch_vision},
   AdamW {args.lr_align}, tower frozen): the projector is re-initialised and fitted (weighted MSE,
   object patches x5) to a fixed code of each patch's attributes: orthogonal directions for every
   colour, shape and size (background included) and the anchor flag, plus the patch's row and column
   (linear and sinusoidal), summed (`patch_code`). Held-out nearest-direction decoding on object
   patches: {", ".join(f"{k.removeprefix('code_')} {v:.3f}" for k, v in align.items())}.
3. **Language stage** ({state['step']['lm']} steps, {elapsed.get('lm', 0) / 60:.1f} min, batch {args.batch_lm} images,
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
4. Wall-clock of this recipe: {recipe_minutes:.1f} min on 2 CPU cores (fp32, torch {torch.__version__}); with the
   discarded language stages (below) and evaluations, {elapsed.get('total', 0) / 60:.1f} min on this machine in all.

## Learning curve (periodic held-out evaluation, vanilla generation)
Stage: the language stage (the discarded ones are described below); min: machine time in all.

{_table(curve_rows, ["stage", "step", "min", "pope F1", "gqa EM", "mme % of max", "mme count acc", "mme position acc", "mme color acc", "gqa EM L2 rnd192 orig", "gqa EM L2 rnd192 compact"])}

Full curve: `training_curve.jsonl` (loss, lr, image tokens and layout per logged step; per-task loss).

## Final accuracies ({final.get('n_questions', '?')} held-out questions from the evaluation seeds)
Rows: vanilla `generate`; our own forward with all 576 tokens (agrees with `generate` on
{final.get('ownforward_agrees_with_generate', '?')} of the answers); random kept image tokens before
the LLM ("pre") or entering layer 2 ("L2", as the harness's random method), with original or
compact positions. MME cells: acc / acc+.

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


# ---- checks ----------------------------------------------------------------------------------
@torch.no_grad()
def run_checks(trainer: Trainer) -> dict[str, float]:
    """Packed forward vs separate prompts (and our pixels/tower vs the processor/HF tower)."""
    model, processor, blocks = trainer.model, trainer.processor, trainer.blocks
    model.eval()
    results = {}
    stream = data.training_batches(trainer.args.seed + 2)
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


# ---- main ------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="harness/assets/tiny-llava-shapes", help="HF checkpoint directory")
    p.add_argument("--workdir", default="harness/shapes/checkpoints", help="state.pt, curve.jsonl (resume from here)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--minutes-vision", type=float, default=36.0, help="vision-stage budget (stops earlier at the target)")
    p.add_argument("--minutes-lm", type=float, default=50.0, help="language-stage budget, periodic evaluation included")
    p.add_argument("--checkpoint-minutes", type=float, default=5.0)
    p.add_argument("--eval-minutes", type=float, default=10.0, help="periodic held-out evaluation interval")
    p.add_argument("--batch-vision", type=int, default=16)
    p.add_argument("--lr-vision", type=float, default=2e-3)
    p.add_argument("--vision-target", type=float, default=0.995, help="stop when every per-patch head reaches it")
    p.add_argument("--vision-eval-every", type=int, default=100)
    p.add_argument("--vision-heldout", type=int, default=64, help="held-out images for per-patch accuracy")
    p.add_argument("--minutes-align", type=float, default=6.0, help="projector re-fit to the patch code")
    p.add_argument("--lr-align", type=float, default=5e-3)
    p.add_argument("--restart-lm", action="store_true", help="keep the vision stage, redo align + lm from scratch")
    p.add_argument("--batch-lm", type=int, default=4, help="images per language-stage step")
    p.add_argument("--questions-per-image", type=int, default=12, help="question blocks packed per image")
    p.add_argument("--lr-lm", type=float, default=1e-3)
    p.add_argument("--lm-projector", choices=("freeze", "train"), default="freeze",
                   help="projector in the language stage (trained, it drifted toward shape features and "
                        "the colour share of its output fell from ~44%% to ~10%%)")  # fmt: skip
    p.add_argument("--lookup", action=argparse.BooleanOptionalAction, default=True,
                   help="append an attribute-lookup block (`star red circle blue ...`) to every training sequence")
    p.add_argument("--bind-fraction", type=float, default=0.35,
                   help="bind phase (colour/shape questions + lookup on the patch code), at most this fraction of the budget; 0 = off")
    p.add_argument("--bind-target", type=float, default=0.3, help="bind phase ends when gqa colour and shape answer losses are below")
    p.add_argument("--teacher-fraction", type=float, default=0.15, help="after the bind phase, patch code -> projector output over this fraction")
    p.add_argument("--grow-from", default="0,1,2,3",
                   help="decoder layers trained alone in the bind phase; the rest join after it with zero residual "
                        "outputs ('' = all 32 from the start: the deep narrow model did not bind colours in 10 min; "
                        "0,8,16,24: layers 1-7 never read the image, unfair to methods that score at layers 1-2)")
    p.add_argument("--restart-why", default="", help="with --restart-lm / --extend-lm: why the language stage is discarded / continued (model card)")
    p.add_argument("--extend-lm", type=float, default=0.0,
                   help="continue a finished language stage for this many minutes (warm restart), then evaluate and export")
    p.add_argument("--lr-extend", type=float, default=5e-4, help="peak LR of an --extend-lm continuation")
    p.add_argument("--keep-align", action="store_true", help="with --restart-lm: keep the fitted projector, retrain the language model only")
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--warmup-fraction", type=float, default=0.12, help="96-token phase (min), fraction of the LM budget")
    p.add_argument("--ramp-fraction", type=float, default=0.3, help="warmup + 96-256-token phase, fraction of the budget")
    p.add_argument("--eval-pope", type=int, default=10, help="periodic eval: pope images (x2 questions x3 splits)")
    p.add_argument("--eval-gqa", type=int, default=40)
    p.add_argument("--eval-mme", type=int, default=20, help="images (x2 questions)")
    p.add_argument("--eval-robust", type=int, default=24, help="gqa questions for the periodic position check")
    p.add_argument("--final-pope", type=int, default=30)
    p.add_argument("--final-gqa", type=int, default=100)
    p.add_argument("--final-mme", type=int, default=48)
    p.add_argument("--verify-items", type=int, default=40, help="questions compared after reloading the export")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--bar-seconds", type=float, default=30.0, help="progress-bar refresh interval")
    p.add_argument("--export-only", action="store_true", help="final evaluation + export from the last state")
    p.add_argument("--card-only", action="store_true", help="rewrite the model card in --out from the last state")
    p.add_argument("--check", action="store_true", help="numerical checks of the packed forward, then exit")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    trainer = Trainer(args)
    out = Path(args.out)
    if args.check:
        print(json.dumps(run_checks(trainer), indent=1))
        return
    if args.export_only:
        trainer.final(out)
        return
    if args.card_only:
        (out / "README.md").write_text(model_card(trainer))
        print(f"model card rewritten: {out / 'README.md'}")
        return
    if trainer.state["stage"] == "vision":
        trainer.train_vision()
    if trainer.state["stage"] == "align":
        trainer.train_align()
    if trainer.state["stage"] == "lm":
        trainer.train_lm()
    if trainer.state["stage"] in ("final", "done"):
        trainer.final(out)
    print(f"done: {trainer.clock.total() / 60:.1f} min in all", flush=True)


if __name__ == "__main__":
    main()
