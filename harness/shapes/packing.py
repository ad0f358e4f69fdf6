"""Packed language-model batches: one image block + many question blocks per sequence.

A sequence is `<s> USER:` + an image block (a subset of the 576 image tokens) + question blocks
`\\n {prompt} ASSISTANT: {answer}`, each block attending to the prefix, the image and itself. A
`Layout` says how the image block and the text are numbered (original or compact RoPE positions,
text shifts) and whether a smaller subset takes over at some decoder layer (what in-LLM pruning does).
`lm_hidden` runs the decoder layers on such a batch; `packed_attention` computes exactly what SDPA
with the block mask computes, at about half the cost (`python -m harness.shapes.train --check`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from harness.model import IMAGE_TOKEN
from harness.shapes import data
from harness.shapes.tiny import N_PATCHES

PREFIX_LEN = 2  # "<s> USER:" precede the image block
VANILLA_TEXT_START = PREFIX_LEN + N_PATCHES  # 578: position of the "\n" after a full image block


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


def register_packed_attention() -> str:
    """Registers `packed_attention` (and SDPA's mask builder, so `generate` still gets its masks) with
    transformers under PACKED_ATTENTION; returns the name for `set_attn_implementation`."""
    AttentionInterface.register(PACKED_ATTENTION, packed_attention)
    AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)
    return PACKED_ATTENTION



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

