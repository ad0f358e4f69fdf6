"""Synthetic "shapes" benchmark: scenes, images, questions and the materialised datasets.

Images are 336x336 RGB on the 24x24 grid of 14-px CLIP patches (patch index = row * 24 + col,
row-major, as CLIP orders its patch tokens). A scene holds 1-6 objects; each object is one of 6
shapes in one of 8 colours, drawn inside a square block of whole patches (small = 2x2, large =
4x4), with at least one empty patch between blocks, and no two objects share a (colour, shape)
pair, so "the red circle" always names one object. An object's `evidence` is the sorted list of
patches that contain at least one of its pixels, computed from the drawn mask.

Three families mirror the paper benchmarks (same hub schemas, plus an `evidence` column holding
the patches of every object the question is about):

- pope (`shapes_pope`, splits random/popular/adversarial): "Is there a red circle in the image?",
  one yes and one no per image; negatives sampled the POPE way.
- gqa (`shapes_gqa`, split test): one-word answers about colour, shape, relations and counts.
- mme (`shapes_mme`, split test): a Yes and a No question per image in the categories
  existence, count, position, color.

Seeds: every image has its own RNG, `random.Random(f"{seed}:{index}")`. Evaluation uses the seeds
in `EVAL_SEEDS` (>= EVAL_SEED_BASE = 10_000); `training_batches` only accepts seeds in
[0, EVAL_SEED_BASE), so training and evaluation images never share an RNG stream.

Relations ("Which shape is to the left of the red circle?", "Is the red circle above the green
square?"): object A is *left of* B when A's whole column range lies left of B's
(A.col + A.width <= B.col); likewise right, above, below. A "Which shape is ..." question is only
asked when exactly one object stands in that relation to the reference object.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import random
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

# ---- geometry and appearance ------------------------------------------------------------------
GRID = 24  # patches per side
PATCH = 14  # pixels per patch side
IMAGE_SIZE = GRID * PATCH  # 336
MAX_OBJECTS = 6
SIZES = {"small": 2, "large": 4}  # block side in patches
INSET = 2  # pixels between a block's border and its shape
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
PLURALS = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "star": "stars",
    "cross": "crosses",
    "diamond": "diamonds",
}
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (40, 80, 235),
    "yellow": (240, 225, 30),
    "purple": (150, 50, 200),
    "orange": (255, 135, 0),
    "white": (245, 245, 245),
    "cyan": (0, 215, 225),
}
ALL_PAIRS = [(colour, shape) for colour in COLOURS for shape in SHAPES]  # 48 (colour, shape)
BACKGROUND = 48  # dark grey level
NOISE = 8  # background texture amplitude (+-8/255), constant over 7x7-pixel cells
NUMBER_WORDS = ("one", "two", "three", "four", "five", "six")
RELATIONS = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}
OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}

# ---- tasks -----------------------------------------------------------------------------------
SHORT_ANSWER = "\nAnswer the question using a single word or phrase."  # pope and gqa prompts
YES_NO = " Please answer yes or no."  # ends every mme question
POPE_SPLITS = ("random", "popular", "adversarial")
POPULAR_TOP_K = 3  # a popular negative is drawn from the 3 most frequent absent pairs
GQA_TYPES = ("colour", "shape", "relation", "count")
GQA_ANSWERS = {
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "relation": SHAPES,
    "count": NUMBER_WORDS,
}
MME_CATEGORIES = ("existence", "count", "position", "color")
TEMPLATE_WORDS = (
    "is", "there", "a", "an", "in", "the", "image", "?", ".",
    "answer", "question", "using", "single", "word", "or", "phrase", "please", "yes", "no",
    "what", "colour", "shape", "object", "objects", "which", "to", "of",
    "left", "right", "above", "below", "how", "many", "are",
)  # fmt: skip

# ---- the evaluation suite --------------------------------------------------------------------
DATA_VERSION = 1  # bump on any generator change: cached datasets with another version are rebuilt
EVAL_SEED_BASE = 10_000
EVAL_SEEDS = {"pope": 10_000, "gqa": 10_001, "mme": 10_002}
SUITE_SIZES = {"pope": 30, "gqa": 100, "mme": 50}  # images: 3 x 60 + 100 + 100 = 380 questions
DATASET_NAMES = {"pope": "shapes_pope", "gqa": "shapes_gqa", "mme": "shapes_mme"}
STAMP_FILE = "prunebench_shapes.json"  # written last; a directory without it is incomplete


@dataclass
class Obj:
    """One object: a shape of one colour in a square block of patches.

    Attributes:
        shape: one of SHAPES.
        colour: one of COLOURS.
        size: "small" (2x2 patches) or "large" (4x4 patches).
        row: top patch row of the block.
        col: left patch column of the block.
        evidence: sorted indices (row * 24 + col) of the patches holding any of its pixels.
    """

    shape: str
    colour: str
    size: str
    row: int
    col: int
    evidence: list[int]


@dataclass
class Scene:
    """The objects of one image (distinct (colour, shape) pairs, non-overlapping blocks)."""

    objects: list[Obj]


class QA(NamedTuple):
    """One training example: model prompt, target answer, evidence patches, task tag."""

    prompt: str
    answer: str
    evidence: list[int]
    task: str  # e.g. "pope/adversarial", "gqa/count", "mme/position"


# ---- scenes and images -----------------------------------------------------------------------
@functools.cache
def shape_mask(shape: str, size: str) -> np.ndarray:
    """Pixels of a shape drawn in its block.

    Args:
        shape: one of SHAPES.
        size: "small" or "large".

    Returns:
        Read-only bool array [side, side], side = block patches * 14.
    """
    side = SIZES[size] * PATCH
    lo, hi = INSET, side - 1 - INSET
    mid = (side - 1) / 2
    canvas = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(canvas)
    if shape == "circle":
        draw.ellipse([lo, lo, hi, hi], fill=255)
    elif shape == "square":
        draw.rectangle([lo, lo, hi, hi], fill=255)
    elif shape == "triangle":
        draw.polygon([(mid, lo), (hi, hi), (lo, hi)], fill=255)
    elif shape == "diamond":
        draw.polygon([(mid, lo), (hi, mid), (mid, hi), (lo, mid)], fill=255)
    elif shape == "cross":
        half = 0.18 * (hi - lo)  # arm half-width
        draw.rectangle([lo, mid - half, hi, mid + half], fill=255)
        draw.rectangle([mid - half, lo, mid + half, hi], fill=255)
    elif shape == "star":
        extent = hi - lo
        outer = extent / (2 * math.sin(math.radians(72)))  # widest points touch the block sides
        centre_y = lo + outer + (extent - outer * (1 + math.cos(math.radians(36)))) / 2
        points = []
        for k in range(10):
            radius = outer if k % 2 == 0 else 0.5 * outer
            angle = math.radians(36 * k)
            points.append((mid + radius * math.sin(angle), centre_y - radius * math.cos(angle)))
        draw.polygon(points, fill=255)
    else:
        raise ValueError(f"shape={shape!r} is not one of {SHAPES}")
    mask = np.asarray(canvas) > 0
    mask.setflags(write=False)
    return mask


def object_evidence(shape: str, size: str, row: int, col: int) -> list[int]:
    """Sorted patch indices that contain at least one pixel of the drawn shape."""
    mask = shape_mask(shape, size)
    side = SIZES[size]
    return [
        (row + r) * GRID + col + c
        for r in range(side)
        for c in range(side)
        if mask[r * PATCH : (r + 1) * PATCH, c * PATCH : (c + 1) * PATCH].any()
    ]


def _blocks_apart(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    """True if two blocks (row, col, side) leave at least one patch between them."""
    (ra, ca, sa), (rb, cb, sb) = a, b
    return ra + sa + 1 <= rb or rb + sb + 1 <= ra or ca + sa + 1 <= cb or cb + sb + 1 <= ca


def sample_scene(
    rng: random.Random,
    n_objects: int | None = None,
    shape_count: tuple[str, int] | None = None,
) -> Scene:
    """Samples a scene: distinct (colour, shape) pairs in non-overlapping blocks.

    Args:
        rng: the image's RNG.
        n_objects: number of objects (default: uniform 1..6, at least shape_count's k).
        shape_count: (shape, k) to make exactly k objects of that shape (for count questions).

    Returns:
        The scene, objects in sampling order.
    """
    if n_objects is None:
        n_objects = rng.randint(shape_count[1] if shape_count else 1, MAX_OBJECTS)
    if not 1 <= n_objects <= MAX_OBJECTS:
        raise ValueError(f"n_objects={n_objects} (allowed: 1..{MAX_OBJECTS})")
    if shape_count is None:
        pairs = rng.sample(ALL_PAIRS, n_objects)
    else:
        shape, k = shape_count
        if not 1 <= k <= n_objects:
            raise ValueError(f"shape_count k={k} (allowed: 1..n_objects={n_objects})")
        pairs = [(colour, shape) for colour in rng.sample(list(COLOURS), k)]
        others = [pair for pair in ALL_PAIRS if pair[1] != shape]
        pairs += rng.sample(others, n_objects - k)
    while True:  # placement almost never fails; if it does, lay the scene out again
        objects: list[Obj] = []
        blocks: list[tuple[int, int, int]] = []
        for colour, shape in pairs:
            size = rng.choice(("small", "large"))
            side = SIZES[size]
            for _ in range(200):
                block = (rng.randint(0, GRID - side), rng.randint(0, GRID - side), side)
                if all(_blocks_apart(block, other) for other in blocks):
                    break
            else:
                break
            blocks.append(block)
            evidence = object_evidence(shape, size, block[0], block[1])
            objects.append(Obj(shape, colour, size, block[0], block[1], evidence))
        if len(objects) == len(pairs):
            return Scene(objects)


def render(scene: Scene, rng: random.Random) -> Image.Image:
    """Draws a scene on a dark grey, lightly textured background.

    Args:
        scene: the objects to draw.
        rng: the image's RNG (seeds the background texture).

    Returns:
        A 336x336 RGB image.
    """
    noise_rng = np.random.default_rng(rng.getrandbits(64))
    cells = noise_rng.integers(-NOISE, NOISE + 1, size=(GRID * 2, GRID * 2))  # 7x7-px cells
    grey = BACKGROUND + cells.repeat(PATCH // 2, axis=0).repeat(PATCH // 2, axis=1)  # [336, 336]
    pixels = np.repeat(grey[:, :, None], 3, axis=2).astype(np.uint8)  # [336, 336, 3]
    for obj in scene.objects:
        mask = shape_mask(obj.shape, obj.size)
        top, left, side = obj.row * PATCH, obj.col * PATCH, mask.shape[0]
        pixels[top : top + side, left : left + side][mask] = COLOURS[obj.colour]
    return Image.fromarray(pixels, "RGB")


# ---- question helpers ------------------------------------------------------------------------
def _side(obj: Obj) -> int:
    return SIZES[obj.size]


def is_related(a: Obj, b: Obj, relation: str) -> bool:
    """True if a's whole block lies `relation` (left/right/above/below) of b's block."""
    if relation == "left":
        return a.col + _side(a) <= b.col
    if relation == "right":
        return b.col + _side(b) <= a.col
    if relation == "above":
        return a.row + _side(a) <= b.row
    if relation == "below":
        return b.row + _side(b) <= a.row
    raise ValueError(f"relation={relation!r} is not one of {tuple(RELATIONS)}")


def _with_article(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def _name(obj: Obj) -> str:
    return f"{obj.colour} {obj.shape}"


def _question(question: str, answer: str, evidence: list[int], kind: str) -> dict:
    return {"question": question, "answer": answer, "evidence": sorted(evidence), "type": kind}


def prompt(family: str, question: str) -> str:
    """The text the model sees for a question (what the task's doc_to_text returns)."""
    return question if family == "mme" else question + SHORT_ANSWER


def tokenize_words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks, as the embedded model's tokenizer splits them."""
    return re.findall(r"\w+|[^\w\s]", text.lower())


def vocabulary() -> list[str]:
    """Every word or punctuation token of any prompt or answer (sorted, lower-case)."""
    words = set(TEMPLATE_WORDS) | set(COLOURS) | set(SHAPES) | set(PLURALS.values())
    return sorted(words | set(NUMBER_WORDS))


# ---- pope ------------------------------------------------------------------------------------
def pope_positives(scene: Scene, rng: random.Random, n: int = 1) -> list[dict]:
    """Questions about n distinct present objects (answer "yes")."""
    objects = rng.sample(scene.objects, min(n, len(scene.objects)))
    return [
        _question(f"Is there {_with_article(_name(obj))} in the image?", "yes", obj.evidence, "positive")
        for obj in objects
    ]


def pope_negatives(
    scene: Scene,
    rng: random.Random,
    strategy: str,
    n: int = 1,
    pair_counts: Counter | None = None,
) -> list[dict]:
    """Questions about n distinct absent (colour, shape) pairs (answer "no", empty evidence).

    Args:
        scene: the image's objects.
        rng: RNG for the choice.
        strategy: "random" (any absent pair), "popular" (among the POPULAR_TOP_K + n - 1 absent
            pairs most frequent in `pair_counts`, ties in ALL_PAIRS order) or "adversarial" (absent
            pairs sharing a colour or a shape with a present object).
        n: number of negatives.
        pair_counts: (colour, shape) -> number of images holding it; needed for "popular".

    Returns:
        The question dicts.
    """
    present = {(obj.colour, obj.shape) for obj in scene.objects}
    absent = [pair for pair in ALL_PAIRS if pair not in present]
    if strategy == "random":
        pool = absent
    elif strategy == "popular":
        if pair_counts is None:
            raise ValueError("strategy='popular' needs pair_counts")
        pool = sorted(absent, key=lambda pair: -pair_counts[pair])[: POPULAR_TOP_K + n - 1]
    elif strategy == "adversarial":
        colours = {colour for colour, _ in present}
        shapes = {shape for _, shape in present}
        pool = [pair for pair in absent if pair[0] in colours or pair[1] in shapes]
    else:
        raise ValueError(f"strategy={strategy!r} is not one of {POPE_SPLITS}")
    return [
        _question(f"Is there {_with_article(f'{colour} {shape}')} in the image?", "no", [], strategy)
        for colour, shape in rng.sample(pool, min(n, len(pool)))
    ]


# ---- gqa -------------------------------------------------------------------------------------
def gqa_questions(scene: Scene) -> list[dict]:
    """Every well-defined one-word question about a scene, each with its "type" (GQA_TYPES).

    colour: "What colour is the star?" (exactly one star); shape: "What shape is the red object?"
    (exactly one red object); relation: "Which shape is to the left of the red circle?" (exactly
    one object in that relation, see `is_related`); count: "How many circles are there?" (shapes
    present, answer one..six).
    """
    objects = scene.objects
    shape_counts = Counter(obj.shape for obj in objects)
    colour_counts = Counter(obj.colour for obj in objects)
    questions = []
    for obj in objects:
        if shape_counts[obj.shape] == 1:
            questions.append(_question(f"What colour is the {obj.shape}?", obj.colour, obj.evidence, "colour"))
        if colour_counts[obj.colour] == 1:
            text = f"What shape is the {obj.colour} object?"
            questions.append(_question(text, obj.shape, obj.evidence, "shape"))
        for relation, phrase in RELATIONS.items():
            hits = [other for other in objects if other is not obj and is_related(other, obj, relation)]
            if len(hits) == 1:
                text = f"Which shape is {phrase} the {_name(obj)}?"
                questions.append(_question(text, hits[0].shape, hits[0].evidence + obj.evidence, "relation"))
    for shape, count in shape_counts.items():
        evidence = [p for obj in objects if obj.shape == shape for p in obj.evidence]
        text = f"How many {PLURALS[shape]} are there?"
        questions.append(_question(text, NUMBER_WORDS[count - 1], evidence, "count"))
    return questions


def _gqa_item(rng: random.Random, kind: str, answer: str) -> tuple[Scene, dict]:
    """Samples scenes until one has a `kind` question with this answer; returns scene, question."""
    for _ in range(1000):
        if kind == "count":
            scene = sample_scene(rng, shape_count=(rng.choice(SHAPES), NUMBER_WORDS.index(answer) + 1))
        else:
            scene = sample_scene(rng, n_objects=rng.randint(2, MAX_OBJECTS) if kind == "relation" else None)
        candidates = [q for q in gqa_questions(scene) if q["type"] == kind and q["answer"] == answer]
        if candidates:
            return scene, rng.choice(candidates)
    raise RuntimeError(f"no scene with a {kind} question answered {answer!r} in 1000 tries")


# ---- mme -------------------------------------------------------------------------------------
def _count_question(k: int) -> str:
    if k == 1:
        return "Is there one object in the image?"
    return f"Are there {NUMBER_WORDS[k - 1]} objects in the image?"


def mme_questions(scene: Scene, rng: random.Random, category: str) -> list[dict]:
    """A Yes and a No question of one MME category, in random order ([] if the scene can't).

    existence: a present object vs a random absent pair; count: the true number of objects vs
    another number in 1..6; position: a strict relation between two objects vs its opposite;
    color: the true colour of a shape that occurs once vs another colour.
    """
    objects = scene.objects
    if category == "existence":
        obj = rng.choice(objects)
        present = {(o.colour, o.shape) for o in objects}
        colour, shape = rng.choice([pair for pair in ALL_PAIRS if pair not in present])
        yes = (f"Is there {_with_article(_name(obj))} in the image?", obj.evidence)
        no = (f"Is there {_with_article(f'{colour} {shape}')} in the image?", [])
    elif category == "count":
        evidence = [p for obj in objects for p in obj.evidence]
        wrong = rng.choice([k for k in range(1, MAX_OBJECTS + 1) if k != len(objects)])
        yes = (_count_question(len(objects)), evidence)
        no = (_count_question(wrong), evidence)
    elif category == "position":
        options = [
            (a, b, relation)
            for a in objects
            for b in objects
            if a is not b
            for relation in RELATIONS
            if is_related(a, b, relation)
        ]
        if not options:
            return []
        a, b, relation = rng.choice(options)
        evidence = a.evidence + b.evidence
        yes = (f"Is the {_name(a)} {RELATIONS[relation]} the {_name(b)}?", evidence)
        no = (f"Is the {_name(a)} {RELATIONS[OPPOSITE[relation]]} the {_name(b)}?", evidence)
    elif category == "color":
        shape_counts = Counter(obj.shape for obj in objects)
        unique = [obj for obj in objects if shape_counts[obj.shape] == 1]
        if not unique:
            return []
        obj = rng.choice(unique)
        wrong = rng.choice([colour for colour in COLOURS if colour != obj.colour])
        yes = (f"Is the {obj.shape} {obj.colour}?", obj.evidence)
        no = (f"Is the {obj.shape} {wrong}?", obj.evidence)
    else:
        raise ValueError(f"category={category!r} is not one of {MME_CATEGORIES}")
    pair = [
        _question(yes[0] + YES_NO, "Yes", yes[1], category),
        _question(no[0] + YES_NO, "No", no[1], category),
    ]
    rng.shuffle(pair)
    return pair


def _mme_item(rng: random.Random, category: str) -> tuple[Scene, list[dict]]:
    for _ in range(1000):
        scene = sample_scene(rng, n_objects=rng.randint(2, MAX_OBJECTS) if category == "position" else None)
        pair = mme_questions(scene, rng, category)
        if pair:
            return scene, pair
    raise RuntimeError(f"no scene supports an mme {category} pair in 1000 tries")


# ---- splits ----------------------------------------------------------------------------------
def _image_rng(seed: int, index: int) -> random.Random:
    return random.Random(f"{seed}:{index}")


def make_split(family: str, split: str | None, seed: int, n_images: int) -> list[dict]:
    """Generates one split deterministically (rows in the hub schema + `evidence`).

    Args:
        family: "pope", "gqa" or "mme".
        split: for pope one of POPE_SPLITS (all three share images and positive questions);
            None (or "test") otherwise.
        seed: split seed; image i uses random.Random(f"{seed}:{i}").
        n_images: number of images (pope and mme: 2 questions per image, gqa: 1).

    Returns:
        Row dicts; "image" holds a PIL image.
    """
    rows: list[dict] = []
    if family == "pope":
        if split not in POPE_SPLITS:
            raise ValueError(f"pope split={split!r} is not one of {POPE_SPLITS}")
        scenes, images = [], []
        for i in range(n_images):
            rng = _image_rng(seed, i)
            scenes.append(sample_scene(rng))
            images.append(render(scenes[-1], rng))
        pair_counts = Counter((obj.colour, obj.shape) for scene in scenes for obj in scene.objects)
        for i, (scene, image) in enumerate(zip(scenes, images)):
            split_rng = random.Random(f"{seed}:{i}:{split}")
            questions = pope_positives(scene, random.Random(f"{seed}:{i}:positive"))
            questions += pope_negatives(scene, split_rng, split, pair_counts=pair_counts)
            split_rng.shuffle(questions)
            for q in questions:
                rows.append({
                    "id": str(len(rows)),
                    "question_id": str(len(rows) + 1),
                    "question": q["question"],
                    "answer": q["answer"],
                    "image_source": f"shapes_{i:05d}",
                    "image": image,
                    "category": split,
                    "evidence": q["evidence"],
                })  # fmt: skip
        return rows
    if split not in (None, "test"):
        raise ValueError(f"{family} split={split!r} (allowed: None or 'test')")
    if family == "gqa":
        for i in range(n_images):
            rng = _image_rng(seed, i)
            kind = GQA_TYPES[i % len(GQA_TYPES)]
            answers = GQA_ANSWERS[kind]
            scene, q = _gqa_item(rng, kind, answers[(i // len(GQA_TYPES)) % len(answers)])
            rows.append({
                "id": str(i),
                "imageId": f"shapes_{i:05d}",
                "question": q["question"],
                "answer": q["answer"],
                "image": render(scene, rng),
                "evidence": q["evidence"],
                "type": kind,
            })  # fmt: skip
        return rows
    if family == "mme":
        for i in range(n_images):
            rng = _image_rng(seed, i)
            category = MME_CATEGORIES[i % len(MME_CATEGORIES)]
            scene, pair = _mme_item(rng, category)
            image = render(scene, rng)
            for q in pair:
                rows.append({
                    "question_id": f"{category}/{i:05d}.png",
                    "image": image,
                    "question": q["question"],
                    "answer": q["answer"],
                    "category": category,
                    "evidence": q["evidence"],
                })  # fmt: skip
        return rows
    raise ValueError(f"family={family!r} is not one of {tuple(DATASET_NAMES)}")


# ---- materialised evaluation data ------------------------------------------------------------
def _features(family: str):
    from datasets import Features, Sequence, Value
    from datasets import Image as ImageFeature

    text = Value("string")
    columns = {
        "pope": ["id", "question_id", "question", "answer", "image_source", "image", "category"],
        "gqa": ["id", "imageId", "question", "answer", "image", "type"],
        "mme": ["question_id", "image", "question", "answer", "category"],
    }[family]
    features = {name: ImageFeature() if name == "image" else text for name in columns}
    features["evidence"] = Sequence(Value("int32"))
    return Features(features)


def _stamp(family: str) -> dict:
    splits = list(POPE_SPLITS) if family == "pope" else ["test"]
    return {"data_version": DATA_VERSION, "seed": EVAL_SEEDS[family], "n_images": SUITE_SIZES[family], "splits": splits}


def _is_complete(path: Path, stamp: dict) -> bool:
    try:
        return json.loads((path / STAMP_FILE).read_text()) == stamp
    except (OSError, ValueError):
        return False


def build_eval_data(root: str | Path, force: bool = False) -> dict[str, Path]:
    """Materialises the evaluation suite as `datasets.DatasetDict`s under root (once).

    `root/shapes_pope` (splits random, popular, adversarial), `root/shapes_gqa` and
    `root/shapes_mme` (split test), each readable with `datasets.load_from_disk`. A directory is
    complete when its stamp file matches DATA_VERSION, the seed and the size; otherwise it is built
    in a temporary directory and renamed into place, so a crash never leaves half a dataset.

    Args:
        root: directory to hold the datasets.
        force: rebuild even if a complete copy exists.

    Returns:
        Dataset name -> directory, e.g. {"shapes_pope": root/"shapes_pope", ...}.
    """
    import datasets
    from datasets import Dataset, DatasetDict

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    paths = {}
    for family, name in DATASET_NAMES.items():
        final = root / name
        paths[name] = final
        stamp = _stamp(family)
        if not force and _is_complete(final, stamp):
            continue
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        bars_were_on = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()  # one bar per split is noise here
        try:
            splits = {
                split: Dataset.from_list(
                    make_split(family, split, EVAL_SEEDS[family], SUITE_SIZES[family]),
                    features=_features(family),
                )
                for split in stamp["splits"]
            }
            DatasetDict(splits).save_to_disk(str(tmp))
            (tmp / STAMP_FILE).write_text(json.dumps(stamp))
            if not force and _is_complete(final, stamp):  # another process finished it meanwhile
                continue
            if final.exists():  # stale or forced: move it aside, then swap in the new copy
                trash = Path(tempfile.mkdtemp(prefix=f".{name}.old.", dir=root))
                os.replace(final, trash / name)
                shutil.rmtree(trash, ignore_errors=True)
            try:
                os.rename(tmp, final)
            except OSError:  # another process won the race; keep its copy if it is complete
                if not _is_complete(final, stamp):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            if bars_were_on:
                datasets.enable_progress_bars()
    return paths


# ---- training stream -------------------------------------------------------------------------
def training_questions(scene: Scene, rng: random.Random, pair_counts: Counter) -> list[QA]:
    """All three families' questions for one training image, as prompts.

    pope: up to 3 positives and as many negatives of one random strategy; gqa: one question of
    each possible type; mme: one Yes/No pair of each possible category.
    """
    n_pairs = min(3, len(scene.objects))
    strategy = rng.choice(POPE_SPLITS)
    pope = pope_positives(scene, rng, n_pairs) + pope_negatives(scene, rng, strategy, n_pairs, pair_counts)
    items = [QA(prompt("pope", q["question"]), q["answer"], q["evidence"], f"pope/{strategy}") for q in pope]
    by_type: dict[str, list[dict]] = {}
    for q in gqa_questions(scene):
        by_type.setdefault(q["type"], []).append(q)
    for kind, questions in by_type.items():
        q = rng.choice(questions)
        items.append(QA(prompt("gqa", q["question"]), q["answer"], q["evidence"], f"gqa/{kind}"))
    for category in MME_CATEGORIES:
        for q in mme_questions(scene, rng, category):
            items.append(QA(prompt("mme", q["question"]), q["answer"], q["evidence"], f"mme/{category}"))
    return items


def training_batches(seed: int) -> Iterator[tuple[Image.Image, Scene, list[QA]]]:
    """Endless stream of training images with questions from all three families.

    Image i uses random.Random(f"{seed}:{i}") with 0 <= seed < EVAL_SEED_BASE, disjoint from the
    evaluation seeds. A quarter of the scenes hold k = 1..6 objects of one shape so that count
    answers up to "six" occur. "popular" negatives use pair frequencies over the images so far.

    Args:
        seed: training seed in [0, EVAL_SEED_BASE).

    Yields:
        (image, scene, questions) per image.
    """
    if not 0 <= seed < EVAL_SEED_BASE:
        raise ValueError(f"training seed={seed} (allowed: 0..{EVAL_SEED_BASE - 1}; larger seeds are evaluation seeds)")
    assert EVAL_SEED_BASE <= min(EVAL_SEEDS.values()), "evaluation seeds must stay outside the training range"
    pair_counts: Counter = Counter()
    for i in itertools.count():
        rng = _image_rng(seed, i)
        shape_count = (rng.choice(SHAPES), rng.randint(1, MAX_OBJECTS)) if rng.random() < 0.25 else None
        scene = sample_scene(rng, shape_count=shape_count)
        image = render(scene, rng)
        pair_counts.update((obj.colour, obj.shape) for obj in scene.objects)
        yield image, scene, training_questions(scene, rng, pair_counts)
