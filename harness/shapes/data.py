"""Synthetic "shapes" benchmark: the splits, the materialised evaluation suite and the training stream.

Scenes and images are drawn by `scenes.py` (24x24 grid of 14-px patches, 1-6 objects of distinct
(colour, shape) pairs); the questions about them come from `questions.py`. This module holds what is
built from both, and re-exports both modules' public names, so `harness.shapes.data` is the one
namespace callers import (`data.GRID`, `data.sample_scene`, `data.prompt`, ...).

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
"""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from PIL import Image

from harness.generated import MARKER, read_marker, refuse_foreign, write_marker
from harness.shapes.questions import (
    GQA_ANSWERS,
    GQA_TYPES,
    MME_CATEGORIES,
    NUMBER_WORDS,
    OPPOSITE,
    PLURALS,
    POPE_SPLITS,
    POPULAR_TOP_K,
    RELATIONS,
    SHORT_ANSWER,
    TEMPLATE_WORDS,
    YES_NO,
    gqa_questions,
    is_related,
    mme_questions,
    pope_negatives,
    pope_positives,
    prompt,
    tokenize_words,
    vocabulary,
)
from harness.shapes.scenes import (
    ALL_PAIRS,
    BACKGROUND,
    COLOURS,
    GRID,
    IMAGE_SIZE,
    INSET,
    MAX_OBJECTS,
    NOISE,
    PATCH,
    SHAPES,
    SIZES,
    Obj,
    Scene,
    object_evidence,
    render,
    sample_scene,
    shape_mask,
)

__all__ = [  # the public names of scenes.py and questions.py, and this module's own
    "ALL_PAIRS", "BACKGROUND", "COLOURS", "DATASET_NAMES", "DATA_VERSION", "EVAL_SEEDS", "EVAL_SEED_BASE",
    "GQA_ANSWERS", "GQA_TYPES", "GRID", "IMAGE_SIZE", "INSET", "MAX_OBJECTS", "MME_CATEGORIES", "NOISE",
    "NUMBER_WORDS", "OPPOSITE", "PATCH", "PLURALS", "POPE_SPLITS", "POPULAR_TOP_K", "PREVIOUS_STAMP_FILE", "QA",
    "RELATIONS", "SHAPES", "SHORT_ANSWER", "SIZES", "STAMP_FILE", "SUITE_SIZES", "TEMPLATE_WORDS", "YES_NO", "Obj",
    "Scene", "build_eval_data", "gqa_questions", "is_related", "make_split", "mme_questions", "object_evidence",
    "pope_negatives", "pope_positives", "prompt", "render", "sample_scene", "shape_mask", "tokenize_words",
    "training_batches", "training_questions", "vocabulary",
]  # fmt: skip

# ---- the evaluation suite --------------------------------------------------------------------
DATA_VERSION = 1  # bump on any generator change: cached datasets with another version are rebuilt
EVAL_SEED_BASE = 10_000
EVAL_SEEDS = {"pope": 10_000, "gqa": 10_001, "mme": 10_002}
SUITE_SIZES = {"pope": 30, "gqa": 100, "mme": 50}  # images: 3 x 60 + 100 + 100 = 380 questions
DATASET_NAMES = {"pope": "shapes_pope", "gqa": "shapes_gqa", "mme": "shapes_mme"}
STAMP_FILE = MARKER  # harness.generated's marker, written last: a folder without it is incomplete (or not ours)
PREVIOUS_STAMP_FILE = "prunebench_shapes.json"  # what versions before the marker wrote instead (no generator)
GENERATOR = "harness.shapes.data"


class QA(NamedTuple):
    """One training example: model prompt, target answer, evidence patches, task tag."""

    prompt: str
    answer: str
    evidence: list[int]
    task: str  # e.g. "pope/adversarial", "gqa/count", "mme/position"


# ---- splits ----------------------------------------------------------------------------------
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


def _mme_item(rng: random.Random, category: str) -> tuple[Scene, list[dict]]:
    """Samples scenes until one supports a Yes/No pair of `category`; returns scene, pair."""
    for _ in range(1000):
        scene = sample_scene(rng, n_objects=rng.randint(2, MAX_OBJECTS) if category == "position" else None)
        pair = mme_questions(scene, rng, category)
        if pair:
            return scene, pair
    raise RuntimeError(f"no scene supports an mme {category} pair in 1000 tries")


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
    return {"generator": GENERATOR, "dataset": DATASET_NAMES[family], "data_version": DATA_VERSION,
            "seed": EVAL_SEEDS[family], "n_images": SUITE_SIZES[family], "splits": splits}


def _is_complete(path: Path, stamp: dict) -> bool:
    return read_marker(path) == stamp


def _generated(path: Path) -> bool:
    """True when `path` is missing or a folder this module generated: it holds the marker, or the stamp file
    of the versions before it (a JSON object with `data_version`; such a copy is rebuilt once)."""
    if not path.exists() and not path.is_symlink():
        return True
    if read_marker(path) is not None:
        return True
    try:
        previous = json.loads((path / PREVIOUS_STAMP_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(previous, dict) and "data_version" in previous


def build_eval_data(root: str | Path, force: bool = False) -> dict[str, Path]:
    """Materialises the evaluation suite as `datasets.DatasetDict`s under root (once).

    `root/shapes_pope` (splits random, popular, adversarial), `root/shapes_gqa` and
    `root/shapes_mme` (split test), each readable with `datasets.load_from_disk`. A directory is
    complete when its marker (STAMP_FILE, harness.generated) matches DATA_VERSION, the seed and the size;
    otherwise it is built in a temporary directory and renamed into place, so a crash never leaves half a
    dataset. Only a folder this module generated is replaced: a `shapes_pope/`, ... without the marker (or
    the previous versions' PREVIOUS_STAMP_FILE) stops the call before anything is written.

    Args:
        root: directory to hold the datasets.
        force: rebuild even if a complete copy exists.

    Returns:
        Dataset name -> directory, e.g. {"shapes_pope": root/"shapes_pope", ...}.

    Raises:
        ValueError: a folder at a dataset's path was not generated here (naming it).
    """
    import datasets
    from datasets import Dataset, DatasetDict

    root = Path(root)
    refuse_foreign([root / name for name in DATASET_NAMES.values() if not _generated(root / name)],
                   "tasks.data.root", root)
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
            write_marker(tmp, stamp)
            if not force and _is_complete(final, stamp):  # another process finished it meanwhile
                continue
            refuse_foreign([] if _generated(final) else [final], "tasks.data.root", root)
            if final.exists():  # stale or forced (and generated here): move it aside, then swap in the new copy
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
