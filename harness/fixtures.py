"""Tiny datasets in the hub schemas of every real benchmark, for tests without network.

    python -m harness.fixtures <out_dir>

Writes directories that `harness.tasks.load_tasks` accepts as local data locations
(each saved with `save_to_disk`, as lmms-eval's `load_from_disk` path expects):

    <out_dir>/gqa/                              DatasetDict {testdev}: lmms-lab/GQA testdev_balanced_instructions
    <out_dir>/gqa/testdev_balanced_images/      DatasetDict {testdev}: lmms-lab/GQA testdev_balanced_images
    <out_dir>/mme/                              DatasetDict {test}: lmms-lab/MME
    <out_dir>/pope/                             DatasetDict {adversarial, popular, random}: lmms-lab/POPE, config Full
    <out_dir>/mmbench_en/, mmbench_cn/          DatasetDict {dev}: lmms-lab/MMBench, configs en / cn
    <out_dir>/scienceqa/                        DatasetDict {test}: lmms-lab/ScienceQA, config ScienceQA-IMG
    <out_dir>/textvqa/                          DatasetDict {validation}: lmms-lab/textvqa
    <out_dir>/vqav2/                            DatasetDict {validation, testdev}: lmms-lab/VQAv2
    <out_dir>/seedbench/                        DatasetDict {test}: lmms-lab/SEED-Bench (image and video rows)

Each benchmark's record (harness/benchmarks.py) names its function here (`gqa`, `mme`, ...: `{folder:
{split: (rows, features)}}`); `write_fixtures` writes those of every record. Each top folder holds a
`.prunebench-generated` marker (harness.generated). Only a folder with one (or as versions 1 and 2 left
it, see `previous_version`) is ever replaced; a `gqa/`, `pope/`, ... of the user's in `out_dir` stops
`write_fixtures` with an error naming it, before anything is written.

Column names and feature types follow the hub datasets. The columns that tasks/{gqa,mme,pope}/utils.py read
(GQA id/imageId/question/answer + images id/image; all MME and POPE columns) are exact; GQA's
annotation columns (isBalanced, groups, equivalent, types, annotations, semantic, semanticStr)
carry plausible values, with nested types read off the GQA question JSON, not checked against
the hub (no network here). The newer benchmarks' columns are those lmms-eval 0.7.3's task utils
and LLaVA's scripts read, with the hub's feature types. Images are deterministic 336x336 drawings.
"""

import fcntl
import functools
import os
import shutil
import sys
import tempfile
from pathlib import Path

from datasets import Dataset, DatasetDict, Features, Image, Sequence, Value
from PIL import Image as PILImage
from PIL import ImageDraw

from harness.generated import read_marker, refuse_foreign, write_marker

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

GQA_IMAGES_DIR = "testdev_balanced_images"  # inside the GQA directory, as tasks/gqa/utils.py expects
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


# ---------------------------------------------------------------- MMBench (lmms-lab/MMBench, en / cn, split dev)

MMBENCH_FEATURES = Features({
    "index": Value("int64"), "question": Value("string"), "hint": Value("string"),
    "A": Value("string"), "B": Value("string"), "C": Value("string"), "D": Value("string"),
    "answer": Value("string"), "category": Value("string"), "image": Image(), "source": Value("string"),
    "L2-category": Value("string"), "comment": Value("string"), "split": Value("string"),
})
# (question, hint, options, right option, shape, colour); every question appears once per rotation.
MMBENCH_QUESTIONS = {
    "en": [("What shape is shown?", None, ["circle", "square", "triangle", "star"], "circle", "circle", "red"),
           ("What colour is the object?", "The picture shows one object.", ["blue", "green"], "blue", "square", "blue")],
    "cn": [("图中是什么形状？", None, ["圆形", "正方形", "三角形", "星形"], "圆形", "circle", "red"),
           ("物体是什么颜色？", "图中有一个物体。", ["蓝色", "绿色"], "蓝色", "square", "blue")],
}


def mmbench_rows(lang: str) -> list[dict]:
    """Each question once per rotation of its options; copy k has index = original + k * 1e6."""
    rows = []
    for number, (question, hint, options, right, shape, color) in enumerate(MMBENCH_QUESTIONS[lang]):
        image = draw(shape, color)
        for k in range(len(options)):
            rotated = options[k:] + options[:k]
            letters = dict(zip("ABCD", rotated))
            rows.append({
                "index": number + k * 1_000_000, "question": question, "hint": hint,
                **{letter: letters.get(letter) for letter in "ABCD"},
                "answer": "ABCD"[rotated.index(right)], "category": "attribute_recognition", "image": image,
                "source": "fixture", "L2-category": "finegrained_perception (instance-level)", "comment": None,
                "split": "dev",
            })
    return rows


# ---------------------------------------------------------------- ScienceQA (lmms-lab/ScienceQA, ScienceQA-IMG, test)

SCIENCEQA_FEATURES = Features({
    "image": Image(), "question": Value("string"), "choices": Sequence(Value("string")), "answer": Value("int8"),
    "hint": Value("string"), "task": Value("string"), "grade": Value("string"), "subject": Value("string"),
    "topic": Value("string"), "category": Value("string"), "skill": Value("string"), "lecture": Value("string"),
    "solution": Value("string"),
})


def scienceqa_rows() -> list[dict]:
    """Three questions with 2-4 choices, with and without a hint."""
    specs = [("Which shape is in the picture?", "", ["square", "circle"], 1, "circle", "green"),
             ("Which colour is the object?", "Look at the picture.", ["red", "yellow", "blue"], 2, "triangle", "blue"),
             ("How many objects are there?", "", ["zero", "one", "two", "three"], 1, "square", "red")]
    return [{"image": draw(shape, color), "question": q, "choices": c, "answer": a, "hint": h,
             "task": "closed choice", "grade": "grade2", "subject": "natural science", "topic": "shapes",
             "category": "Shapes", "skill": "Identify shapes", "lecture": "", "solution": ""}
            for q, h, c, a, shape, color in specs]


# ---------------------------------------------------------------- TextVQA (lmms-lab/textvqa, validation)

TEXTVQA_FEATURES = Features({
    "image_id": Value("string"), "question_id": Value("int32"), "question": Value("string"),
    "question_tokens": Sequence(Value("string")), "image": Image(), "image_width": Value("int32"),
    "image_height": Value("int32"), "flickr_original_url": Value("string"), "flickr_300k_url": Value("string"),
    "answers": Sequence(Value("string")), "image_classes": Sequence(Value("string")), "set_name": Value("string"),
    "ocr_tokens": Sequence(Value("string")),
})


def textvqa_rows() -> list[dict]:
    """Three questions, 10 human answers each (disagreeing on purpose), OCR tokens on two."""
    specs = [("what colour is the shape?", ["red"] * 7 + ["dark red"] * 3, ["red", "sale"], "circle", "red"),
             ("how many sides does it have?", ["4"] * 6 + ["four"] * 2 + ["square", "4 sides"], [], "square", "blue"),
             ("what word is written?", ["stop"] * 10, ["stop"], "triangle", "yellow")]
    return [{"image_id": f"{n:016x}", "question_id": 34602 + n, "question": q, "question_tokens": q.rstrip("?").split(),
             "image": draw(shape, color), "image_width": SIZE, "image_height": SIZE, "flickr_original_url": "",
             "flickr_300k_url": "", "answers": answers, "image_classes": ["Shape"], "set_name": "val", "ocr_tokens": ocr}
            for n, (q, answers, ocr, shape, color) in enumerate(specs)]


# ---------------------------------------------------------------- VQAv2 (lmms-lab/VQAv2, validation / testdev)

VQAV2_FEATURES = Features({
    "question_type": Value("string"), "multiple_choice_answer": Value("string"),
    "answers": [{"answer": Value("string"), "answer_confidence": Value("string"), "answer_id": Value("int64")}],
    "image_id": Value("int64"), "answer_type": Value("string"), "question_id": Value("int64"),
    "question": Value("string"), "image": Image(),
})


def vqav2_rows(split: str) -> list[dict]:
    """validation: three questions with 10 answers; testdev: two questions without answers."""
    specs = [("How many circles are there?", ["1"] * 8 + ["one", "2"], "number", "circle", "red"),
             ("What color is the square?", ["blue"] * 10, "other", "square", "blue"),
             ("Is this a triangle?", ["yes"] * 9 + ["no"], "yes/no", "triangle", "green")]
    rows = []
    for n, (question, answers, kind, shape, color) in enumerate(specs[: 3 if split == "validation" else 2]):
        labelled = split == "validation"
        rows.append({
            "question_type": question.split()[0].lower() if labelled else None,
            "multiple_choice_answer": max(set(answers), key=answers.count) if labelled else None,
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]
            if labelled else None,
            "image_id": 262148 + n, "answer_type": kind if labelled else None,
            "question_id": (262148 + n) * 1000 + (0 if labelled else 7), "question": question, "image": draw(shape, color),
        })
    return rows


# ---------------------------------------------------------------- SEED-Bench (lmms-lab/SEED-Bench, test)

SEEDBENCH_FEATURES = Features({
    "answer": Value("string"), "choice_a": Value("string"), "choice_b": Value("string"),
    "choice_c": Value("string"), "choice_d": Value("string"), "data_id": Value("string"),
    "data_type": Value("string"), "question": Value("string"), "question_id": Value("string"),
    "question_type_id": Value("int16"), "image": Sequence(Image()), "segment": Sequence(Value("int64")),
})


def seedbench_rows() -> list[dict]:
    """Three image questions (scene understanding, instances counting x2) and one video question."""
    specs = [("image", 1, "What is the main object?", ["a circle", "a car", "a tree", "a dog"], "A", "circle", "red"),
             ("image", 5, "How many objects are there?", ["3", "2", "1", "0"], "C", "square", "blue"),
             ("image", 5, "How many squares are there?", ["0", "1", "2", "3"], "B", "square", "green"),
             ("video", 10, "What happens next?", ["it rolls", "it stops", "it jumps", "it falls"], "B", "circle", "yellow")]
    rows = []
    for n, (kind, qtype, question, choices, answer, shape, color) in enumerate(specs):
        frames = [draw(shape, color)] * (1 if kind == "image" else 2)
        rows.append({"answer": answer, **{f"choice_{l}": c for l, c in zip("abcd", choices)},
                     "data_id": f"{n}.jpg", "data_type": kind, "question": question, "question_id": str(101669 + n),
                     "question_type_id": qtype, "image": frames, "segment": None if kind == "image" else [0, 1]})
    return rows


# ---------------------------------------------------------------- writing

VERSION = 3  # bump when the fixtures change: the copies an older version generated are replaced
GENERATOR = "harness.fixtures"
PREVIOUS_DONE = ("fixtures.done", "fixtures-2.done")  # what versions 1 and 2 wrote into out_dir (no markers)


def to_dataset(rows: list[dict], features: Features) -> Dataset:
    """Rows as a Dataset with the hub's column order."""
    return Dataset.from_list([{name: row[name] for name in features} for row in rows], features=features)


Splits = dict[str, tuple[list[dict], Features]]  # {split: (rows, features)} of one saved DatasetDict


def gqa() -> dict[str, Splits]:
    """The GQA questions and, inside their folder, the image table (as the hub's two configs)."""
    questions, images = gqa_rows()
    return {"gqa": {"testdev": (questions, GQA_INSTRUCTION_FEATURES)},
            f"gqa/{GQA_IMAGES_DIR}": {"testdev": (images, GQA_IMAGE_FEATURES)}}


def mme() -> dict[str, Splits]:
    return {"mme": {"test": (mme_rows(), MME_FEATURES)}}


def pope() -> dict[str, Splits]:
    return {"pope": {s: (pope_rows(s), POPE_FEATURES) for s in POPE_SPLITS}}


def mmbench() -> dict[str, Splits]:
    return {f"mmbench_{lang}": {"dev": (mmbench_rows(lang), MMBENCH_FEATURES)} for lang in MMBENCH_QUESTIONS}


def scienceqa() -> dict[str, Splits]:
    return {"scienceqa": {"test": (scienceqa_rows(), SCIENCEQA_FEATURES)}}


def textvqa() -> dict[str, Splits]:
    return {"textvqa": {"validation": (textvqa_rows(), TEXTVQA_FEATURES)}}


def vqav2() -> dict[str, Splits]:
    return {"vqav2": {s: (vqav2_rows(s), VQAV2_FEATURES) for s in ("validation", "testdev")}}


def seedbench() -> dict[str, Splits]:
    return {"seedbench": {"test": (seedbench_rows(), SEEDBENCH_FEATURES)}}


def specs() -> list[tuple[str, Splits]]:
    """(folder relative to out_dir, {split: (rows, features)}) of every fixture dataset, in writing order:
    the writers that the records of harness/benchmarks.py name."""
    from harness.benchmarks import BENCHMARKS

    return [item for bench in BENCHMARKS if bench.fixture is not None for item in bench.fixture().items()]


@functools.cache
def names() -> tuple[str, ...]:
    """The top folders under out_dir (each with a marker), which are the data keys `write_fixtures` returns."""
    return tuple(folder for folder in _layout() if "/" not in folder)


def features(task: str) -> Features | None:
    """The features of the fixture that task `task` reads (the folder whose name is its longest prefix)."""
    from harness.benchmarks import longest_prefix

    folder = longest_prefix(task, names())
    return next(iter(_layout()[folder].values()))[0] if folder is not None else None


def marker(name: str) -> dict:
    """The marker (harness.generated) of fixture `name` as this version writes it."""
    return {"generator": GENERATOR, "dataset": name, "version": VERSION}


def _write_all(out: Path) -> None:
    """Every fixture dataset under `out` (a fresh directory), each with its marker."""
    for folder, splits in specs():
        parts = {split: to_dataset(rows, features) for split, (rows, features) in splits.items()}
        DatasetDict(parts).save_to_disk(out / folder)
    for name in names():
        write_marker(out / name, marker(name))


@functools.cache
def _layout() -> dict[str, dict[str, tuple[Features, int]]]:
    """{folder: {split: (features, number of rows)}} of every fixture dataset."""
    return {folder: {split: (features, len(rows)) for split, (rows, features) in splits.items()}
            for folder, splits in specs()}


def previous_version(out: Path, name: str) -> bool:
    """True for `out/name` as fixture versions 1 and 2 left it (they wrote no marker): `out` holds their
    completion file, and the folder holds exactly this fixture's saved datasets, nothing else (the files
    `save_to_disk` writes, the same splits, features and row counts). A user's copy of the real benchmark
    (thousands of rows) or a folder with any other file is not theirs."""
    if not any((out / done).is_file() for done in PREVIOUS_DONE):
        return False
    import datasets

    for folder, splits in _layout().items():
        if folder.split("/")[0] != name:
            continue
        path = out / folder
        nested = {GQA_IMAGES_DIR} if folder == "gqa" else set()
        try:
            if set(os.listdir(path)) != {"dataset_dict.json", *splits, *nested}:
                return False
            for split in splits:
                files = set(os.listdir(path / split))
                if not {"state.json", "dataset_info.json"} <= files or not all(
                        f in ("state.json", "dataset_info.json") or (f.startswith("data-") and f.endswith(".arrow"))
                        for f in files):
                    return False
            saved = datasets.load_from_disk(str(path))
        except Exception:  # noqa: BLE001 - unreadable: not recognisably theirs
            return False
        if not isinstance(saved, DatasetDict) or set(saved) != set(splits):
            return False
        for split, (features, n_rows) in splits.items():
            if saved[split].features != features or saved[split].num_rows != n_rows:
                return False
    return True


def _states(out: Path) -> dict[str, str]:
    """{name: "missing" | "current" | "outdated" | "foreign"} of every fixture folder under `out`."""
    states = {}
    for name in names():
        path = out / name
        found = read_marker(path)
        if not path.exists() and not path.is_symlink():
            states[name] = "missing"
        elif found is not None:
            states[name] = "current" if found == marker(name) and path.is_dir() else "outdated"
        else:
            states[name] = "outdated" if previous_version(out, name) else "foreign"
    return states


def write_fixtures(out_dir: str | Path) -> dict[str, Path]:
    """Write every fixture dataset (once; safe for parallel jobs sharing `out_dir`).

    Only folders this writer generated are ever replaced (an older version's copy): each holds a marker
    (harness.generated); a `gqa/`, `pope/`, ... folder without one is the user's and stops the call before
    anything is written.

    Args:
        out_dir: Directory to write into (created if missing).

    Returns:
        {name: dir} for every name in `names()`: the data locations to give `harness.tasks.load_tasks`
        (keys are task names or prefixes: "pope" covers pope_random, "mmbench_en" mmbench_en_dev).

    Raises:
        ValueError: a folder at a fixture's path was not generated here (naming it).
    """
    out = Path(out_dir)
    states = _states(out)
    refuse_foreign([out / n for n, state in states.items() if state == "foreign"], "tasks.data.out_dir", out)
    if all(state == "current" for state in states.values()):
        return {name: out / name for name in names()}
    out.mkdir(parents=True, exist_ok=True)
    # One writer at a time (parallel jobs share the cache), and never in place: each dataset is written to a
    # temporary dir and renamed into `out`, so a file another process has memory-mapped is never truncated
    # (that is a SIGBUS there) and a crash midway leaves no half dataset.
    with open(out / ".fixtures.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        states = _states(out)  # another process may have finished while this one waited
        refuse_foreign([out / n for n, state in states.items() if state == "foreign"], "tasks.data.out_dir", out)
        if not all(state == "current" for state in states.values()):
            tmp = Path(tempfile.mkdtemp(prefix=".fixtures-", dir=out))
            try:
                _write_all(tmp)
                for name in names():
                    if states[name] != "missing":  # generated here (marker or a previous version's layout)
                        os.replace(out / name, tmp / f"old-{name}")  # unlinked with tmp: open maps stay valid
                    os.replace(tmp / name, out / name)
                for done in PREVIOUS_DONE:
                    (out / done).unlink(missing_ok=True)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return {name: out / name for name in names()}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m harness.fixtures <out_dir>")
    for name, path in write_fixtures(sys.argv[1]).items():
        print(f"{name}: {path}")
