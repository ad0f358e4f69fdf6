"""MMBench, ScienceQA-IMG, TextVQA, VQAv2 and SEED-Bench tasks on fixture data: loading through
lmms-eval, LLaVA's prompts, and scores through the tasks' own hooks checked by hand."""

import math

import pytest
from task_score import score

from harness.fixtures import write_fixtures
from harness.tasks import load_tasks, task_manager

LETTER = "\nAnswer with the option's letter from the given choices directly."
SHORT = "\nAnswer the question using a single word or phrase."
NAMES = ["mmbench_en_dev", "mmbench_cn_dev", "scienceqa_img", "textvqa_val", "textvqa_val_no_ocr", "vqav2_val",
         "vqav2_testdev", "seedbench_img"]


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> dict:
    data = {name: str(path) for name, path in write_fixtures(tmp_path_factory.mktemp("fixtures")).items()}
    return load_tasks(NAMES, data, task_manager())


@pytest.mark.parametrize("name, n_docs, first_prompt", [
    ("mmbench_en_dev", 6, "What shape is shown?\nA. circle\nB. square\nC. triangle\nD. star" + LETTER),
    ("mmbench_cn_dev", 6, "图中是什么形状？\nA. 圆形\nB. 正方形\nC. 三角形\nD. 星形\n请直接回答选项字母。"),
    ("scienceqa_img", 3, "Which shape is in the picture?\nA. square\nB. circle" + LETTER),
    ("textvqa_val", 3, "what colour is the shape?\nReference OCR token: red, sale" + SHORT),
    ("textvqa_val_no_ocr", 3, "what colour is the shape?" + SHORT),
    ("vqav2_val", 3, "How many circles are there?" + SHORT),
    ("vqav2_testdev", 2, "How many circles are there?" + SHORT),
    ("seedbench_img", 3, "What is the main object?\nA. a circle\nB. a car\nC. a tree\nD. a dog" + LETTER),  # video row left out
])
def test_docs_prompts_images(tasks, name, n_docs, first_prompt):
    task = tasks[name]
    docs = task.test_docs()
    assert len(docs) == n_docs
    assert task.doc_to_text(docs[0]) == first_prompt
    (image,) = task.doc_to_visual(docs[0])
    assert image.mode == "RGB" and image.size == (336, 336)


def test_prompts_with_hint_and_without_ocr_tokens(tasks):
    assert tasks["mmbench_en_dev"].doc_to_text(tasks["mmbench_en_dev"].test_docs()[4]) == (
        "The picture shows one object.\nWhat colour is the object?\nA. blue\nB. green" + LETTER)
    assert tasks["scienceqa_img"].doc_to_text(tasks["scienceqa_img"].test_docs()[1]) == (
        "Context: Look at the picture.\nWhich colour is the object?\nA. red\nB. yellow\nC. blue" + LETTER)
    assert tasks["textvqa_val"].doc_to_text(tasks["textvqa_val"].test_docs()[1]) == "how many sides does it have?" + SHORT


def test_mmbench_circular(tasks):
    # question 0: rotations answer A, D, C, B; question 1: A, B. The last rotation of question 0 is missed.
    metrics = score(tasks["mmbench_en_dev"], ["A", "D", "C", "A", "blue", "B."])
    assert metrics == {"circular_accuracy": pytest.approx(50.0), "single_accuracy": pytest.approx(100.0)}


def test_mmbench_circular_counts_only_questions_whose_original_ran(tasks):
    # question 0's three rotated copies (right) without its original; question 1's original (right) and copy (wrong)
    task = tasks["mmbench_en_dev"]
    docs = task.test_docs()
    records = [task.process_results(docs[i], [r])["circular_accuracy"] for i, r in zip([1, 2, 3, 4, 5], "DCBAA")]
    assert task.aggregation()["circular_accuracy"](records) == 0.0  # question 0 counted too gave 50.0
    assert task.aggregation()["single_accuracy"](records) == 100.0


def test_scienceqa(tasks):
    # answers B, C, B; "C." fails LLaVA's parser
    assert score(tasks["scienceqa_img"], ["B", "C.", "The answer is B."]) == {"accuracy": pytest.approx(200 / 3)}
    # "B\ncircle" (no ". " after the letter) and "The answer is B" (nothing after the letter) fail too
    assert score(tasks["scienceqa_img"], ["B\ncircle", "C", "The answer is A"]) == {"accuracy": pytest.approx(100 / 3)}


def test_textvqa(tasks):
    # "Red." -> red (7 of 10 humans): 1; "four" -> 4 (8 of 10 after normalising): 1; "go": 0
    assert score(tasks["textvqa_val"], ["Red.", "four", "go"]) == {"vqa_accuracy": pytest.approx(200 / 3)}


def test_vqav2(tasks):
    # "One" -> 1 (9 of 10 after normalising "one"): 1; "Blue.": 1; "no" (1 of 10): 9 subsets x 1/3 / 10 = 0.3
    assert score(tasks["vqav2_val"], ["One", "Blue.", "no"]) == {"vqa_accuracy": pytest.approx(100 * 2.3 / 3)}
    assert score(tasks["vqav2_testdev"], ["One", "two"]) == {"submitted": 2.0}


def test_vqav2_testdev_submission_lists_every_question(tmp_path):
    """LLaVA's convert_vqav2_for_submission.py: every question of the list, "" where there is no answer."""
    import json

    from harness.scoring.vqa import write_submission

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    samples = [{"task": "vqav2_testdev", "doc_id": 0, "response": "Two.", "error": None, "question_id": 11,
                "scores": {"pred": "2", "question_id": 11}},
               {"task": "vqav2_testdev", "doc_id": 1, "response": "", "error": "RuntimeError: out of memory",
                "question_id": 12},
               {"task": "vqav2_val", "doc_id": 0, "response": "x", "error": None, "scores": {"pred": "x", "question_id": 5}}]
    (run_dir / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    answers = json.loads(write_submission(run_dir, questions=[13, 11, 12]).read_text())
    assert answers == [{"question_id": 13, "answer": ""}, {"question_id": 11, "answer": "2"},
                       {"question_id": 12, "answer": ""}]
    (tmp_path / "questions.json").write_text(json.dumps({"questions": [{"question_id": 12}, {"question_id": 11}]}))
    answers = json.loads(write_submission(run_dir, questions=tmp_path / "questions.json").read_text())
    assert answers == [{"question_id": 12, "answer": ""}, {"question_id": 11, "answer": "2"}]
    with pytest.raises(ValueError, match="results.json is missing"):
        write_submission(run_dir)  # the split's questions come from the run's recorded data


def test_seedbench(tasks):
    # answers A, C, B (types: scene understanding, counting, counting); "C." is not the letter
    metrics = score(tasks["seedbench_img"], ["A", "C.", "B"])
    assert metrics["seed_image"] == pytest.approx(200 / 3)
    assert metrics["seed_scene_understanding"] == 100.0 and metrics["seed_instances_counting"] == 50.0
    assert math.isnan(metrics["seed_text_understanding"])


@pytest.mark.slow
def test_every_task_end_to_end_through_the_leaderboard(tmp_path):
    """run.py on the tiny random model over fixtures_all (limit 1), then the leaderboard on it."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parents[1]
    env = {**os.environ, "PRUNEBENCH_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "2", "HYDRA_FULL_ERROR": "0"}
    run_dir = tmp_path / "runs" / "fastv-64"
    proc = subprocess.run([sys.executable, "run.py", "model=tiny_random", "tasks=fixtures_all", "method=fastv", "budget=64",
                           "limit=1", "max_new_tokens=4", "logger=none", f"hydra.run.dir={run_dir}"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    expected = {"mmbench_en_dev": ("circular_accuracy", "vlmevalkit_e8e78f05_exact_matching"),
                "mmbench_cn_dev": ("circular_accuracy", "vlmevalkit_e8e78f05_exact_matching"),
                "scienceqa_img": ("accuracy", "llava_eval_science_qa_c121f04"),
                "textvqa_val": ("vqa_accuracy", "llava_m4c_textvqa"), "textvqa_val_no_ocr": ("vqa_accuracy", "llava_m4c_textvqa"),
                "vqav2_val": ("vqa_accuracy", "vqaEval_py_a013f00"), "vqav2_testdev": ("submitted", "llava_vqav2_submission"),
                "seedbench_img": ("seed_image", "llava_seed_exact")}
    for task, (metric, scorer) in expected.items():
        entry = results["tasks"][task]
        assert (entry["n"], entry["n_failed"], entry["scorer"]) == (1, 0, scorer), task
        assert metric in entry["metrics"], task
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert all(s["error"] is None and "pred" in s["scores"] for s in samples)

    from harness import leaderboard
    from harness.scoring.vqa import write_submission

    assert leaderboard.main([str(tmp_path / "runs"), "--bootstrap", "0", "--out", str(tmp_path / "table.md")]) == 0
    header = next(line for line in (tmp_path / "table.md").read_text().splitlines() if line.startswith("| Method"))
    for column in ("GQA", "MME P+C", "POPE F1", "MMB", "MMB-CN", "SQA-IMG", "TextVQA", "TextVQA no OCR", "VQAv2 val",
                   "SEED-IMG", "Avg"):
        assert f" {column} |" in header, column

    # the server's format, every question of the split: the one left out by limit=1 with ""
    first, second = json.loads(write_submission(run_dir).read_text())
    assert first["question_id"] == 262148007 and isinstance(first["answer"], str)
    assert second == {"question_id": 262149007, "answer": ""}
