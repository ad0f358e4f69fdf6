"""GQA / MME / POPE tasks on fixture data: loading through lmms-eval, prompts, and metrics checked by hand."""

import importlib.util
from pathlib import Path

import pytest
from PIL import Image
from task_score import score

from harness.fixtures import COLORS, write_fixtures
from harness.tasks import (
    TASKS_DIR,
    is_local,
    load_tasks,
    location_for,
    task_manager,
    task_specs,
)

# tasks/mme/utils.py is not a package; load it by path, as lmms-eval does.
_spec = importlib.util.spec_from_file_location("task_utils", TASKS_DIR / "mme" / "utils.py")
utils = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(utils)

POST = "\nAnswer the question using a single word or phrase."
POPE_SPLITS = ["pope_adversarial", "pope_popular", "pope_random"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    return {name: str(path) for name, path in write_fixtures(tmp_path_factory.mktemp("fixtures")).items()}


@pytest.fixture(scope="module")
def manager():
    return task_manager()


@pytest.fixture(scope="module")
def tasks(data, manager) -> dict:
    """Every task by name; POPE is loaded as the `pope` group."""
    loaded = load_tasks(["gqa", "mme", "pope"], data, manager)
    (group,) = [key for key in loaded if not isinstance(key, str)]
    assert group.group_name == "pope"
    return {"gqa": loaded["gqa"], "mme": loaded["mme"], **loaded[group]}


def centre(image: Image.Image) -> tuple[int, int, int]:
    return image.getpixel((168, 168))


# ---------------------------------------------------------------- loading and prompts

@pytest.mark.parametrize("name, n_docs, prompt, colour", [
    ("gqa", 6, "What color is the square?" + POST, "red"),
    ("mme", 8, "Is there a circle in this image?" + POST, "red"),
    *[(name, 6, "Is there a circle in the image?" + POST, "red") for name in POPE_SPLITS],
])
def test_docs_prompt_and_image(tasks, data, name, n_docs, prompt, colour):
    task = tasks[name]
    assert task.config.dataset_path == data[name.split("_")[0]]
    assert task.config.dataset_kwargs == {"load_from_disk": True}
    docs = task.test_docs()
    assert len(docs) == n_docs
    assert task.doc_to_text(docs[0]) == prompt
    (image,) = task.doc_to_visual(docs[0])
    assert isinstance(image, Image.Image) and image.size == (336, 336) and image.mode == "RGB"
    assert centre(image) == COLORS[colour]


def test_gqa_images_joined_on_image_id(tasks):
    task = tasks["gqa"]
    for doc, colour in zip(task.test_docs(), ["red", "red", "blue", "blue", "green", "green"]):
        assert centre(task.doc_to_visual(doc)[0]) == COLORS[colour]


def test_generation_kwargs(tasks):
    assert tasks["gqa"].config.generation_kwargs["max_new_tokens"] == 16
    assert tasks["mme"].config.generation_kwargs["max_new_tokens"] == 16
    assert tasks["pope_random"].config.generation_kwargs["max_new_tokens"] == 128
    assert tasks["gqa"].config.generation_kwargs["do_sample"] is False


def test_specs_and_locations(data, manager):
    assert location_for("pope_random", {"pope": "a/b"}) == "a/b"
    assert location_for("pope_random", {"pope": "a/b", "pope_random": "c/d"}) == "c/d"
    assert location_for("mme", {"pope": "a/b"}) is None
    assert not is_local("lmms-lab/POPE")
    with pytest.raises(FileNotFoundError):
        is_local("/no/such/dir")
    # no data: plain names (YAML defaults); a hub id: no load_from_disk
    assert task_specs(["gqa", "pope"], {}, manager) == ["gqa", "pope"]
    (mme,) = task_specs(["mme"], {"mme": "someone/MME"}, manager)
    assert mme == {"task": "mme", "dataset_path": "someone/MME", "dataset_kwargs": {}}
    (gqa,) = task_specs(["gqa"], data, manager)
    assert gqa["lmms_eval_specific_kwargs"]["default"]["data"] == data["gqa"]


# ---------------------------------------------------------------- metrics through lmms-eval, checked by hand

def test_gqa_exact_match(tasks):
    # answers: red, yes, blue, yes, green, yes. LLaVA's rule: .rstrip('.').lower(), then string equality
    # (articles and other punctuation stay: 2 of 6 here, where stripping them would give 5 of 6)
    responses = ["The Red.", "Yes", "blue.", "No.", "a green", "yes!"]
    correct = [False, True, True, False, False, False]
    assert score(tasks["gqa"], responses) == {"exact_match": pytest.approx(100 * sum(correct) / 6)}


def test_mme_scores(tasks):
    # docs: existence img101 (Yes, No), existence img102 (Yes, No), color (Yes, No), commonsense (Yes, No)
    responses = ["Yes", "No",                 # img101: both right
                 "Yes, there is.", "Yes",     # img102: first right, second wrong
                 "no", "No.",                 # color: first wrong, second right
                 "y", "I think not"]          # commonsense: "y" and "i th" are "other" (wrong) for calculation.py
    existence = 100 * 3 / 4 + 100 * 1 / 2     # acc 75 + acc+ 50
    color = 100 * 1 / 2 + 0                   # one image, half right
    commonsense = 0.0
    metrics = score(tasks["mme"], responses)
    assert metrics == pytest.approx({
        "mme_perception": existence + color, "mme_cognition": commonsense, "mme_total": existence + color + commonsense,
        "mme_existence": existence, "mme_color": color, "mme_commonsense_reasoning": commonsense,
    })


@pytest.mark.parametrize("name", POPE_SPLITS)
def test_pope_llava_rule(tasks, name):
    # labels: yes, yes, yes, no, no, no
    responses = ["Yes, there is.", "No.", "Yes", "There is not a dog.", "Yes, there is a dog in the image.", "Yes."]
    tp, fn, tn, fp = 2, 1, 1, 2
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    assert score(tasks[name], responses) == pytest.approx({
        "pope_accuracy": 100 * (tp + tn) / 6,
        "pope_precision": 100 * precision,
        "pope_recall": 100 * recall,
        "pope_f1": 100 * 2 * precision * recall / (precision + recall),
        "pope_yes_ratio": 100 * (tp + fp) / 6,
    })


# ---------------------------------------------------------------- prompts (the scoring rules: tests/test_scoring.py)

def test_mme_prompt_replaces_hub_suffix():
    doc = {"question": "Is there a dog in this image? Please answer yes or no."}
    assert utils.mme_doc_to_text(doc, {"pre_prompt": "", "post_prompt": POST}) == "Is there a dog in this image?" + POST
    assert utils.mme_doc_to_text(doc, {"pre_prompt": "", "post_prompt": ""}) == doc["question"]


# ---------------------------------------------------------------- end to end through simple_evaluate

def test_simple_evaluate_with_scripted_model(data, manager):
    """A model that answers from a script: checks the request args and the POPE group means."""
    from lmms_eval.api.model import lmms
    from lmms_eval.evaluator import simple_evaluate

    script = {name: ["Yes, there is.", "No.", "Yes", "There is not a dog.", "Yes, there is a dog in the image.", "Yes."]
              for name in POPE_SPLITS}
    script["pope_random"] = ["Yes", "Yes", "Yes", "No", "No", "No"]  # all right

    class Scripted(lmms):
        def __init__(self):
            super().__init__()
            self.seen = []

        def generate_until(self, requests):
            answers = []
            for request in requests:
                context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
                (image,) = doc_to_visual(self.task_dict[task][split][doc_id])
                self.seen.append((context, gen_kwargs, task, split, image.size))
                answers.append(script[task][doc_id])
            return answers

        def loglikelihood(self, requests):
            raise NotImplementedError

        def generate_until_multi_round(self, requests):
            raise NotImplementedError

    model = Scripted()
    out = simple_evaluate(model=model, tasks=task_specs(["pope"], data, manager), task_manager=manager,
                          bootstrap_iters=0, log_samples=False)
    context, gen_kwargs, task, split, size = model.seen[0]
    assert context.endswith(POST) and split == task.removeprefix("pope_") and size == (336, 336)
    assert gen_kwargs["max_new_tokens"] == 128 and gen_kwargs["until"] == ["\n\n"]
    results = out["results"]
    f1_wrong = 100 * 2 * 0.5 * (2 / 3) / (0.5 + 2 / 3)
    assert results["pope_adversarial"]["pope_f1,none"] == pytest.approx(f1_wrong)
    assert results["pope_random"]["pope_f1,none"] == pytest.approx(100.0)
    assert results["pope"]["pope_f1,none"] == pytest.approx((2 * f1_wrong + 100) / 3)
    assert results["pope"]["pope_yes_ratio,none"] == pytest.approx((2 * 400 / 6 + 50) / 3)


@pytest.mark.slow
def test_fixtures_are_written_aside_and_renamed_in_once_for_parallel_jobs(tmp_path, monkeypatch):
    """Parallel jobs share the cache: a dataset is never written where another process may have it mapped."""
    import subprocess
    import sys

    from datasets import DatasetDict

    import harness.fixtures as fixtures

    targets = []
    save = DatasetDict.save_to_disk
    monkeypatch.setattr(DatasetDict, "save_to_disk", lambda self, path, **kw: (targets.append(Path(path)), save(self, path, **kw)))
    out = tmp_path / "fixtures"
    data = fixtures.write_fixtures(out)
    assert targets and all(t.parent.name.startswith(".fixtures-") or t.parent.parent.name.startswith(".fixtures-")
                           for t in targets), targets
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".fixtures-")) == []  # the temporary dir is gone
    before = {p: p.stat().st_ino for p in (data["mme"] / "test").glob("*.arrow")}
    targets.clear()
    assert fixtures.write_fixtures(out) == data and targets == []  # complete: nothing written again
    assert {p: p.stat().st_ino for p in (data["mme"] / "test").glob("*.arrow")} == before

    fresh = tmp_path / "parallel"  # two processes at once on a fresh dir: both finish, one set of datasets
    procs = [subprocess.Popen([sys.executable, "-m", "harness.fixtures", str(fresh)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0], [p.stderr.read()[-2000:] for p in procs]
    from datasets import load_from_disk

    assert len(load_from_disk(str(fresh / "mme"))["test"]) == len(load_from_disk(str(data["mme"]))["test"])
