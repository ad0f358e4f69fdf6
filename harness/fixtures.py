"""Tiny GQA / MME / POPE datasets in the hub schemas, for tests without network.

    python -m harness.fixtures <out_dir>

Writes three directories that `harness.tasks.load_tasks` accepts as local data locations
(each saved with `save_to_disk`, as lmms-eval's `load_from_disk` path expects):

    <out_dir>/gqa/                              DatasetDict {testdev}: lmms-lab/GQA testdev_balanced_instructions
    <out_dir>/gqa/testdev_balanced_images/      DatasetDict {testdev}: lmms-lab/GQA testdev_balanced_images
    <out_dir>/mme/                              DatasetDict {test}: lmms-lab/MME
    <out_dir>/pope/                             DatasetDict {adversarial, popular, random}: lmms-lab/POPE, config Full

Column names and feature types follow the hub datasets. The columns that tasks/utils.py reads
(GQA id/imageId/question/answer + images id/image; all MME and POPE columns) are exact; GQA's
annotation columns (isBalanced, groups, equivalent, types, annotations, semantic, semanticStr)
carry plausible values, with nested types read off the GQA question JSON, not checked against
the hub (no network here). Images are deterministic 336x336 drawings.
"""

import sys
from pathlib import Path

from datasets import Dataset, DatasetDict, Features, Image, Sequence, Value
from PIL import Image as PILImage
from PIL import ImageDraw

SIZE = 336
COLORS = {"red": (220, 30, 30), "green": (30, 160, 60), "blue": (30, 60, 220), "yellow": (235, 200, 20)}


def draw(shape: str, color: str, background: tuple[int, int, int] = (255, 255, 255)) -> PILImage.Image:
    """One object on a plain background.

    Args:
        shape: "circle", "square" or "triangle".
        color: a key of COLORS.
        background: RGB background colour.

    Returns:
        A 336x336 RGB image.
    """
    image = PILImage.new("RGB", (SIZE, SIZE), background)
    pen = ImageDraw.Draw(image)
    box = (SIZE // 4, SIZE // 4, 3 * SIZE // 4, 3 * SIZE // 4)
    if shape == "circle":
        pen.ellipse(box, fill=COLORS[color])
    elif shape == "square":
        pen.rectangle(box, fill=COLORS[color])
    elif shape == "triangle":
        corners = [(SIZE // 2, SIZE // 4), (SIZE // 4, 3 * SIZE // 4), (3 * SIZE // 4, 3 * SIZE // 4)]
        pen.polygon(corners, fill=COLORS[color])
    else:
        raise ValueError(f"shape={shape!r} is not drawable (allowed: circle, square, triangle)")
    return image


# ---------------------------------------------------------------- GQA (lmms-lab/GQA, testdev-balanced)

GQA_INSTRUCTION_FEATURES = Features({
    "id": Value("string"),
    "imageId": Value("string"),
    "question": Value("string"),
    "answer": Value("string"),
    "fullAnswer": Value("string"),
    "isBalanced": Value("bool"),
    "groups": {"global": Value("string"), "local": Value("string")},
    "equivalent": Sequence(Value("string")),
    "types": {"structural": Value("string"), "semantic": Value("string"), "detailed": Value("string")},
    "annotations": {"answer": Value("string"), "question": Value("string"), "fullAnswer": Value("string")},
    "semantic": [{"operation": Value("string"), "argument": Value("string"), "dependencies": Sequence(Value("int64"))}],
    "semanticStr": Value("string"),
})
GQA_IMAGE_FEATURES = Features({"id": Value("string"), "image": Image()})

GQA_IMAGES_DIR = "testdev_balanced_images"  # inside the GQA directory, as tasks/utils.py expects
# (imageId, shape, colour) of the three images; two questions each.
GQA_IMAGES = [("2400001", "square", "red"), ("2400002", "circle", "blue"), ("n300003", "triangle", "green")]


def gqa_rows() -> tuple[list[dict], list[dict]]:
    """Instruction rows and image rows of the GQA fixture."""
    images, questions = [], []
    for n, (image_id, shape, color) in enumerate(GQA_IMAGES):
        images.append({"id": image_id, "image": draw(shape, color)})
        obj = str(1000 + n)
        color_q = {
            "question": f"What color is the {shape}?", "answer": color, "fullAnswer": f"The {shape} is {color}.",
            "types": {"structural": "query", "semantic": "attr", "detailed": "color"},
            "semantic": [
                {"operation": "select", "argument": f"{shape} ({obj})", "dependencies": []},
                {"operation": "query", "argument": "color", "dependencies": [0]},
            ],
            "semanticStr": f"select: {shape} ({obj})->query: color [0]",
            "groups": {"global": "color", "local": f"10q-{shape}_color"},
        }
        exist_q = {
            "question": f"Is there a {shape} in the picture?", "answer": "yes", "fullAnswer": f"Yes, there is a {shape}.",
            "types": {"structural": "verify", "semantic": "obj", "detailed": "exist"},
            "semantic": [
                {"operation": "select", "argument": f"{shape} ({obj})", "dependencies": []},
                {"operation": "exist", "argument": "?", "dependencies": [0]},
            ],
            "semanticStr": f"select: {shape} ({obj})->exist: ? [0]",
            "groups": {"global": None, "local": f"03-{shape}"},
        }
        for k, q in enumerate([color_q, exist_q]):
            question_id = f"20{n:02d}{k:04d}"
            questions.append({
                "id": question_id, "imageId": image_id, "isBalanced": True, "equivalent": [question_id],
                "annotations": {"answer": "{}", "question": f'{{"3": "{obj}"}}', "fullAnswer": f'{{"1": "{obj}"}}'},
                **q,
            })
    return questions, images


# ---------------------------------------------------------------- MME (lmms-lab/MME)

MME_FEATURES = Features({
    "question_id": Value("string"),
    "image": Image(),
    "question": Value("string"),
    "answer": Value("string"),
    "category": Value("string"),
})

# (category, question_id, shape, colour): two perception categories and one cognition category,
# existence with two images so acc and acc+ differ.
MME_IMAGES = [
    ("existence", "existence/000000000101.jpg", "circle", "red"),
    ("existence", "existence/000000000102.jpg", "square", "blue"),
    ("color", "color/000000000201.jpg", "triangle", "yellow"),
    ("commonsense_reasoning", "commonsense_reasoning/0001.png", "circle", "green"),
]


def mme_rows() -> list[dict]:
    """MME rows: two questions per image, one "Yes" and one "No"."""
    rows = []
    other = {"circle": "square", "square": "triangle", "triangle": "circle"}
    for category, question_id, shape, color in MME_IMAGES:
        image = draw(shape, color)
        if category == "color":
            pairs = [(f"Is the {shape} in the image {color}?", "Yes"), (f"Is the {shape} in the image purple?", "No")]
        elif category == "commonsense_reasoning":
            pairs = [(f"Could this {color} {shape} be drawn with a single colour?", "Yes"),
                     (f"Does this picture contain more than ten {shape}s?", "No")]
        else:
            pairs = [(f"Is there a {shape} in this image?", "Yes"), (f"Is there a {other[shape]} in this image?", "No")]
        for question, answer in pairs:
            rows.append({"question_id": question_id, "image": image, "answer": answer, "category": category,
                         "question": f"{question} Please answer yes or no."})
    return rows


# ---------------------------------------------------------------- POPE (lmms-lab/POPE, config Full)

POPE_FEATURES = Features({
    "id": Value("string"),
    "question_id": Value("string"),
    "question": Value("string"),
    "answer": Value("string"),
    "image_source": Value("string"),
    "image": Image(),
    "category": Value("string"),
})
POPE_SPLITS = ("adversarial", "popular", "random")

# (shape in the image, colour): each image gets one "yes" and one "no" question.
POPE_IMAGES = [("circle", "red"), ("square", "green"), ("triangle", "blue")]
POPE_ABSENT = {"adversarial": "oval", "popular": "dog", "random": "bicycle"}


def pope_rows(split: str) -> list[dict]:
    """Six POPE rows of one split, answers yes, yes, yes, no, no, no."""
    positives, negatives = [], []
    for n, (shape, color) in enumerate(POPE_IMAGES):
        image = draw(shape, color)
        source = f"COCO_val2014_{POPE_SPLITS.index(split) * 100 + n:012d}"
        common = {"image_source": source, "image": image}
        positives.append({"question": f"Is there a {shape} in the image?", "answer": "yes", **common})
        negatives.append({"question": f"Is there a {POPE_ABSENT[split]} in the image?", "answer": "no", **common})
    rows = positives + negatives
    return [{"id": str(i), "question_id": str(i + 1), "category": split, **row} for i, row in enumerate(rows)]


# ---------------------------------------------------------------- writing

def to_dataset(rows: list[dict], features: Features) -> Dataset:
    """Rows as a Dataset with the hub's column order."""
    return Dataset.from_list([{name: row[name] for name in features} for row in rows], features=features)


def write_fixtures(out_dir: str | Path) -> dict[str, Path]:
    """Write the three fixture datasets.

    Args:
        out_dir: Directory to write into (created if missing).

    Returns:
        {"gqa": dir, "mme": dir, "pope": dir}: the data locations to give `harness.tasks.load_tasks`.
    """
    out = Path(out_dir)
    done = out / "fixtures.done"
    complete = done.exists() and all((out / name).is_dir() for name in ("gqa", "mme", "pope"))
    if not complete:  # written once; a crash midway (or a removed dataset) leaves it incomplete: rewritten
        questions, images = gqa_rows()
        DatasetDict({"testdev": to_dataset(questions, GQA_INSTRUCTION_FEATURES)}).save_to_disk(out / "gqa")
        DatasetDict({"testdev": to_dataset(images, GQA_IMAGE_FEATURES)}).save_to_disk(out / "gqa" / GQA_IMAGES_DIR)
        DatasetDict({"test": to_dataset(mme_rows(), MME_FEATURES)}).save_to_disk(out / "mme")
        DatasetDict({s: to_dataset(pope_rows(s), POPE_FEATURES) for s in POPE_SPLITS}).save_to_disk(out / "pope")
        done.write_text("ok\n")
    return {"gqa": out / "gqa", "mme": out / "mme", "pope": out / "pope"}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m harness.fixtures <out_dir>")
    for name, path in write_fixtures(sys.argv[1]).items():
        print(f"{name}: {path}")
