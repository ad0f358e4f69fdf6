"""The embedded shapes benchmark: generator invariants, task scoring, materialised datasets."""

import importlib.util
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from harness.shapes import data

TASKS_DIR = Path(__file__).resolve().parents[1] / "tasks"


def _load_shapes_utils():
    """tasks/ is not a package (lmms-eval loads its files by path), so do the same here."""
    spec = importlib.util.spec_from_file_location("shapes_utils", TASKS_DIR / "shapes" / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


utils = _load_shapes_utils()


def _all_splits(n_images: int = 8, seed: int = 123) -> dict[str, list[dict]]:
    splits = {f"pope_{s}": data.make_split("pope", s, seed, n_images) for s in data.POPE_SPLITS}
    splits["gqa"] = data.make_split("gqa", None, seed, n_images)
    splits["mme"] = data.make_split("mme", None, seed, n_images)
    return splits


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory):
    return data.build_eval_data(tmp_path_factory.mktemp("shapes"))


# ---- generator -------------------------------------------------------------------------------
def test_determinism():
    first, again, other = _all_splits(seed=5), _all_splits(seed=5), _all_splits(seed=6)
    for name in first:
        assert len(first[name]) == len(again[name])
        for a, b in zip(first[name], again[name]):
            assert a["image"].tobytes() == b["image"].tobytes()
            assert {k: v for k, v in a.items() if k != "image"} == {k: v for k, v in b.items() if k != "image"}
        assert [r["image"].tobytes() for r in first[name]] != [r["image"].tobytes() for r in other[name]]
        assert [r["question"] for r in first[name]] != [r["question"] for r in other[name]]


def test_image_format_and_pope_splits_share_images():
    rows = {s: data.make_split("pope", s, 9, 4) for s in data.POPE_SPLITS}
    image = rows["random"][0]["image"]
    assert image.size == (336, 336) and image.mode == "RGB"
    for split in data.POPE_SPLITS:
        assert {r["category"] for r in rows[split]} == {split}
        assert [r["image"].tobytes() for r in rows[split]] == [r["image"].tobytes() for r in rows["random"]]
        positives = [r["question"] for r in rows[split] if r["answer"] == "yes"]
        assert positives == [r["question"] for r in rows["random"] if r["answer"] == "yes"]


def test_evidence_matches_rendered_pixels():
    """Every evidence patch holds pixels of its object; no object pixel lies outside them."""
    rng = random.Random(0)
    for _ in range(150):
        scene = data.sample_scene(rng)
        pixels = np.asarray(data.render(scene, rng)).astype(int)  # [336, 336, 3]
        covered = np.zeros((336, 336), dtype=bool)
        for obj in scene.objects:
            side = data.SIZES[obj.size] * data.PATCH
            top, left = obj.row * data.PATCH, obj.col * data.PATCH
            in_block = np.zeros((336, 336), dtype=bool)
            in_block[top : top + side, left : left + side] = True
            own = in_block & (pixels == data.COLOURS[obj.colour]).all(-1)  # this object's pixels
            rows, cols = np.nonzero(own)
            patches = sorted(set((rows // data.PATCH * data.GRID + cols // data.PATCH).tolist()))
            assert patches == obj.evidence
            assert own.sum() > 0.25 * side * side  # the shape fills a good part of its block
            covered |= own
        # everything else is the grey textured background
        rest = pixels[~covered]
        assert (rest[:, 0] == rest[:, 1]).all() and (rest[:, 1] == rest[:, 2]).all()
        assert (np.abs(rest[:, 0] - data.BACKGROUND) <= data.NOISE).all()
        # and the evidence patches of all objects are disjoint
        evidence = [p for obj in scene.objects for p in obj.evidence]
        assert len(evidence) == len(set(evidence))


def test_scene_layout():
    rng = random.Random(1)
    n_objects = Counter()
    for _ in range(300):
        scene = data.sample_scene(rng)
        objects = scene.objects
        n_objects[len(objects)] += 1
        assert len({(o.colour, o.shape) for o in objects}) == len(objects)
        for i, a in enumerate(objects):
            side = data.SIZES[a.size]
            assert 0 <= a.row <= data.GRID - side and 0 <= a.col <= data.GRID - side
            for b in objects[i + 1 :]:  # at least one empty patch between blocks
                sb = data.SIZES[b.size]
                assert a.row + side < b.row or b.row + sb < a.row or a.col + side < b.col or b.col + sb < a.col
    assert set(n_objects) == set(range(1, 7))
    forced = data.sample_scene(random.Random(2), shape_count=("star", 6))
    assert [o.shape for o in forced.objects] == ["star"] * 6


def test_answer_balance():
    pope = [data.make_split("pope", s, 7, 30) for s in data.POPE_SPLITS]
    for rows in pope:
        assert Counter(r["answer"] for r in rows) == {"yes": 30, "no": 30}
        assert all(r["evidence"] for r in rows if r["answer"] == "yes")
    mme = data.make_split("mme", None, 7, 40)
    for question_id in {r["question_id"] for r in mme}:
        assert sorted(r["answer"] for r in mme if r["question_id"] == question_id) == ["No", "Yes"]
    assert Counter(r["category"] for r in mme) == {c: 20 for c in data.MME_CATEGORIES}
    assert all(r["question"].endswith(" Please answer yes or no.") for r in mme)
    gqa = data.make_split("gqa", None, 7, 96)
    assert Counter(r["type"] for r in gqa) == {t: 24 for t in data.GQA_TYPES}
    for kind, answers in data.GQA_ANSWERS.items():
        counts = Counter(r["answer"] for r in gqa if r["type"] == kind)
        assert set(counts) == set(answers) and max(counts.values()) - min(counts.values()) <= 1


def test_popular_and_adversarial_negatives():
    scene = data.Scene([data.Obj("circle", "red", "small", 0, 0, [0]), data.Obj("star", "blue", "small", 5, 5, [125])])
    counts = Counter({("green", "square"): 9, ("red", "circle"): 50, ("cyan", "cross"): 8, ("white", "star"): 7})
    for seed in range(20):
        rng = random.Random(seed)
        (adv,) = data.pope_negatives(scene, rng, "adversarial")
        colour, shape = adv["question"].split()[3:5]  # "Is there a <colour> <shape> in the image?"
        assert colour in ("red", "blue") or shape in ("circle", "star")
        (pop,) = data.pope_negatives(scene, rng, "popular", pair_counts=counts)
        assert pop["question"] in {
            "Is there a green square in the image?",
            "Is there a cyan cross in the image?",
            "Is there a white star in the image?",
        }
        assert adv["answer"] == pop["answer"] == "no" and adv["evidence"] == []


def test_gqa_questions_are_well_defined():
    rng = random.Random(3)
    for _ in range(100):
        scene = data.sample_scene(rng)
        for q in data.gqa_questions(scene):
            words = q["question"].rstrip("?").split()
            if q["type"] == "colour":
                matches = [o for o in scene.objects if o.shape == words[-1]]
                assert len(matches) == 1 and matches[0].colour == q["answer"]
            elif q["type"] == "relation":
                # "Which shape is to the left of the red circle" / "Which shape is above the red circle"
                relation = words[5] if words[3] == "to" else words[3]
                ref = next(o for o in scene.objects if (o.colour, o.shape) == (words[-2], words[-1]))
                hits = [o for o in scene.objects if o is not ref and data.is_related(o, ref, relation)]
                assert len(hits) == 1 and hits[0].shape == q["answer"]
                assert set(hits[0].evidence + ref.evidence) == set(q["evidence"])
            elif q["type"] == "count":
                plural = words[2]
                n = sum(data.PLURALS[o.shape] == plural for o in scene.objects)
                assert data.NUMBER_WORDS[n - 1] == q["answer"]


def test_vocabulary_closure():
    vocab = set(data.vocabulary())
    assert len(vocab) < 120 and data.vocabulary() == sorted(vocab)
    used = set()
    texts = []
    for family, split in [("pope", s) for s in data.POPE_SPLITS] + [("gqa", None), ("mme", None)]:
        for row in data.make_split(family, split, data.EVAL_SEEDS[family], data.SUITE_SIZES[family]):
            texts += [data.prompt(family, row["question"]), row["answer"]]
    batches = data.training_batches(0)
    for _ in range(100):
        _, _, items = next(batches)
        texts += [t for item in items for t in (item.prompt, item.answer)]
    for text in texts:
        tokens = data.tokenize_words(text)
        assert set(tokens) <= vocab, (text, set(tokens) - vocab)
        used |= set(tokens)
    assert used == vocab  # nothing in the vocabulary is dead weight


def test_prompts_match_task_doc_to_text():
    pope = data.make_split("pope", "random", 1, 2)[0]
    gqa = data.make_split("gqa", None, 1, 1)[0]
    mme = data.make_split("mme", None, 1, 1)[0]
    assert utils.short_answer_doc_to_text(pope, {}) == data.prompt("pope", pope["question"])
    assert utils.short_answer_doc_to_text(gqa, {}) == data.prompt("gqa", gqa["question"])
    assert utils.mme_doc_to_text(mme, {}) == data.prompt("mme", mme["question"]) == mme["question"]
    assert data.prompt("gqa", "Q?") == "Q?\nAnswer the question using a single word or phrase."
    assert utils.doc_to_visual(gqa)[0].mode == "RGB"


# ---- scoring ---------------------------------------------------------------------------------
def test_pope_scoring():
    targets = ["yes", "yes", "yes", "no", "no", "no"]
    responses = ["Yes", "No, there is not.", "yes.", "Yes, there is.", "Yes", "There is not a star."]
    records = [
        utils.pope_process_results({"question_id": str(i), "answer": t}, [r])["f1"]
        for i, (t, r) in enumerate(zip(targets, responses))
    ]
    assert [r["pred"] for r in records] == ["yes", "no", "yes", "yes", "yes", "no"]
    # TP 2, FN 1, FP 2, TN 1
    assert utils.pope_accuracy(records) == pytest.approx(50.0)
    assert utils.pope_precision(records) == pytest.approx(50.0)
    assert utils.pope_recall(records) == pytest.approx(200 / 3)
    assert utils.pope_f1(records) == pytest.approx(100 * 2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))  # 57.14
    assert utils.pope_yes_ratio(records) == pytest.approx(200 / 3)
    # LLaVA's rule looks at the first sentence only, and "Not" (capital) is not a no-word
    assert utils.pope_parse("Yes. But no.") == "yes"
    assert utils.pope_parse("Not really") == "yes"
    assert utils.pope_parse("no") == "no"


def test_gqa_scoring():
    # the real GQA's rule (LLaVA): .rstrip('.').lower() and string equality
    assert utils.gqa_normalize("Red.") == "red"
    assert utils.gqa_normalize("The Star!") == "the star!"
    docs = [{"id": "0", "answer": "red"}, {"id": "1", "answer": "two"}, {"id": "2", "answer": "star"}, {"id": "3", "answer": "red"}]
    responses = ["Red.", "three", "star", "the red"]
    records = [utils.gqa_process_results(d, [r])["exact_match"] for d, r in zip(docs, responses)]
    assert utils.gqa_exact_match(records) == pytest.approx(50.0)


def test_mme_scoring():
    def record(question_id, category, answer, response):
        doc = {"question_id": question_id, "category": category, "answer": answer}
        return utils.mme_process_results(doc, [response])["total"]

    records = [
        record("a", "existence", "Yes", "Yes, it is."),  # image a: both right
        record("a", "existence", "No", "no."),
        record("b", "existence", "Yes", "yes"),  # image b: one right
        record("b", "existence", "No", "Yes"),
        record("c", "existence", "Yes", "Maybe"),  # image c: none right ("other")
        record("c", "existence", "No", "y"),
        record("d", "count", "Yes", "Yes"),
        record("d", "count", "No", "n"),  # "n" is "other" for MME's calculation.py
    ]
    scores = utils.mme_category_scores(records)
    assert scores["existence"]["acc"] == pytest.approx(50.0)
    assert scores["existence"]["acc_plus"] == pytest.approx(100 / 3)
    assert utils.mme_existence(records) == pytest.approx(50 + 100 / 3)
    assert utils.mme_count(records) == pytest.approx(50.0)
    assert utils.mme_total(records) == pytest.approx(100 + 100 / 3)
    assert np.isnan(utils.mme_color(records))
    parsed = [utils.mme_parse(r) for r in ["Yes, it is.", "NO", "Maybe", "n", ""]]
    assert parsed == ["yes", "no", "other", "other", "other"]


# ---- materialised data -----------------------------------------------------------------------
def test_build_eval_data(suite_dir):
    import datasets

    pope = datasets.load_from_disk(str(suite_dir["shapes_pope"]))
    assert sorted(pope) == sorted(data.POPE_SPLITS)
    assert all(len(pope[s]) == 2 * data.SUITE_SIZES["pope"] for s in data.POPE_SPLITS)
    assert set(pope["random"].column_names) == {
        "id", "question_id", "question", "answer", "image_source", "image", "category", "evidence",
    }  # fmt: skip
    gqa = datasets.load_from_disk(str(suite_dir["shapes_gqa"]))
    mme = datasets.load_from_disk(str(suite_dir["shapes_mme"]))
    assert list(gqa) == ["test"] and len(gqa["test"]) == data.SUITE_SIZES["gqa"]
    assert list(mme) == ["test"] and len(mme["test"]) == 2 * data.SUITE_SIZES["mme"]
    assert {"id", "imageId", "question", "answer", "image", "evidence"} <= set(gqa["test"].column_names)
    assert set(mme["test"].column_names) == {"question_id", "image", "question", "answer", "category", "evidence"}
    row = gqa["test"][0]
    assert row["image"].size == (336, 336) and all(isinstance(p, int) for p in row["evidence"])
    assert mme["test"].features["evidence"] == datasets.Sequence(datasets.Value("int32"))
    total = sum(len(pope[s]) for s in pope) + len(gqa["test"]) + len(mme["test"])
    assert total >= 300


def test_build_eval_data_caches(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "SUITE_SIZES", {"pope": 2, "gqa": 4, "mme": 4})
    calls = Counter()
    make_split = data.make_split

    def counting(family, *args):
        calls[family] += 1
        return make_split(family, *args)

    monkeypatch.setattr(data, "make_split", counting)
    paths = data.build_eval_data(tmp_path)
    assert calls == {"pope": 3, "gqa": 1, "mme": 1}
    stamp = paths["shapes_gqa"] / data.STAMP_FILE
    mtime = stamp.stat().st_mtime_ns
    data.build_eval_data(tmp_path)
    assert calls == {"pope": 3, "gqa": 1, "mme": 1} and stamp.stat().st_mtime_ns == mtime
    monkeypatch.setattr(data, "DATA_VERSION", data.DATA_VERSION + 1)  # a generator change rebuilds
    data.build_eval_data(tmp_path)
    assert calls == {"pope": 6, "gqa": 2, "mme": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes_gqa", "shapes_mme", "shapes_pope"]


def test_lmms_eval_finds_and_builds_the_tasks(suite_dir):
    from lmms_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    names = ["shapes_pope_random", "shapes_pope_popular", "shapes_pope_adversarial", "shapes_gqa", "shapes_mme"]
    assert set(names) <= set(manager.all_tasks)
    folder = {name: "shapes_pope" if name.startswith("shapes_pope") else name for name in names}
    # the runner's override: a config dict per task replaces dataset_path, the YAML stays as is
    tasks = manager.load_task_or_group([{"task": n, "dataset_path": str(suite_dir[folder[n]])} for n in names])
    assert set(tasks) == set(names)
    assert len(tasks["shapes_pope_adversarial"].test_docs()) == 2 * data.SUITE_SIZES["pope"]
    assert tasks["shapes_pope_popular"].test_docs()[0]["category"] == "popular"
    gqa = tasks["shapes_gqa"]
    doc = gqa.test_docs()[0]
    assert gqa.doc_to_text(doc) == data.prompt("gqa", doc["question"])
    assert gqa.config.generation_kwargs["max_new_tokens"] == 3
    assert set(tasks["shapes_mme"].aggregation()) == {"total", "existence", "count", "position", "color"}


# ---- training stream -------------------------------------------------------------------------
def test_training_seeds_are_disjoint_from_evaluation():
    assert min(data.EVAL_SEEDS.values()) >= data.EVAL_SEED_BASE
    assert len(set(data.EVAL_SEEDS.values())) == len(data.EVAL_SEEDS)
    with pytest.raises(ValueError):
        next(data.training_batches(data.EVAL_SEED_BASE))
    with pytest.raises(ValueError):
        next(data.training_batches(-1))

    def key(scene):
        return tuple(sorted((o.colour, o.shape, o.size, o.row, o.col) for o in scene.objects))

    eval_scenes = set()
    for family, seed in data.EVAL_SEEDS.items():
        for i in range(data.SUITE_SIZES[family]):
            eval_scenes.add(key(data.sample_scene(random.Random(f"{seed}:{i}"))))
    batches = data.training_batches(0)
    tasks = Counter()
    for _ in range(50):
        image, scene, items = next(batches)
        assert image.size == (336, 336) and key(scene) not in eval_scenes
        tasks.update(item.task.split("/")[0] for item in items)
        pope = [item for item in items if item.task.startswith("pope")]
        assert sum(item.answer == "yes" for item in pope) == sum(item.answer == "no" for item in pope)
    assert set(tasks) == {"pope", "gqa", "mme"}
