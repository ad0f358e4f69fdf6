"""A failed sample scores 0 on every benchmark, whatever its parser would make of the empty response, and a
rerun after the data is fixed retries it, its new record replacing the old one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from datasets import DatasetDict
from helpers import run_cli
from task_score import score

from harness import fixtures
from harness.results import SampleLog
from harness.scoring import FAILED_RESPONSE, gqa, mme, pope, scorer_for
from harness.tasks import load_tasks, task_manager

BAD_IMAGE = {"bytes": b"definitely not a PNG", "path": None}


@pytest.fixture(scope="module")
def every_task(tmp_path_factory) -> dict:
    """Every task of tasks/ (groups aside) loaded on its fixture, shapes tasks on a small generated suite."""
    from harness.shapes import data as shapes

    data = {name: str(path) for name, path in fixtures.write_fixtures(tmp_path_factory.mktemp("fixtures")).items()}
    sizes = shapes.SUITE_SIZES
    shapes.SUITE_SIZES = {"pope": 2, "gqa": 4, "mme": 4}
    try:
        data.update({name: str(path) for name, path in shapes.build_eval_data(tmp_path_factory.mktemp("shapes")).items()})
    finally:
        shapes.SUITE_SIZES = sizes
    manager = task_manager()
    names = [n for n in manager.all_tasks if manager.task_index[n]["type"] == "task"]
    return load_tasks(names, data, manager)


def test_a_failed_response_scores_zero_with_a_failed_flag_under_every_metric_of_every_task(every_task):
    assert len(every_task) >= 17
    for name, task in every_task.items():
        for doc in task.test_docs():
            results = task.process_results(doc, [FAILED_RESPONSE])
            assert results, name
            for metric, fields in results.items():
                assert fields["score"] == 0.0 and fields["failed"] is True, (name, metric, fields)
            scorer = scorer_for(name)
            assert scorer is not None and all(f == scorer.score_failed(doc) for f in results.values()), name


def test_a_failed_pope_sample_is_wrong_in_accuracy_f1_precision_and_recall(every_task):
    """pope_random's labels: yes, yes, yes, no, no, no. Every answer right but the failed one."""
    task = every_task["pope_random"]
    right = ["Yes", "Yes", "Yes", "No", "No", "No"]
    assert score(task, right)["pope_accuracy"] == 100.0
    failed_yes = score(task, [right[0], FAILED_RESPONSE, *right[2:]])  # "" would parse as "yes": right by LLaVA's rule
    assert failed_yes == {"pope_accuracy": pytest.approx(500 / 6), "pope_precision": 100.0,
                          "pope_recall": pytest.approx(200 / 3), "pope_f1": pytest.approx(80.0),
                          "pope_yes_ratio": pytest.approx(200 / 6)}
    failed_no = score(task, [*right[:3], FAILED_RESPONSE, *right[4:]])  # counted as a false "yes"
    assert failed_no == {"pope_accuracy": pytest.approx(500 / 6), "pope_precision": 75.0, "pope_recall": 100.0,
                         "pope_f1": pytest.approx(600 / 7), "pope_yes_ratio": pytest.approx(400 / 6)}
    assert pope.SCORER.score_failed({"answer": "yes"}) == {"pred": "no", "label": "yes", "score": 0.0, "failed": True}


def test_failed_samples_are_wrong_on_mme_gqa_mmbench_and_seedbench(every_task):
    mme_task = every_task["mme"]
    answers = [doc["answer"] for doc in mme_task.test_docs()]
    assert score(mme_task, answers)["mme_total"] == 600.0  # three categories, every answer right
    one_failed = score(mme_task, [FAILED_RESPONSE, *answers[1:]])  # existence: acc 3/4, acc+ 1/2
    assert one_failed["mme_existence"] == pytest.approx(125.0) and one_failed["mme_total"] == pytest.approx(525.0)
    gqa_task = every_task["gqa"]
    answers = [doc["answer"] for doc in gqa_task.test_docs()]
    assert score(gqa_task, [*answers[:5], FAILED_RESPONSE])["exact_match"] == pytest.approx(500 / 6)
    mmbench = every_task["mmbench_en_dev"]  # question 0 (4 rotations) right; question 1's original failed
    assert score(mmbench, ["A", "D", "C", "B", FAILED_RESPONSE, "B"]) == {
        "circular_accuracy": pytest.approx(50.0), "single_accuracy": pytest.approx(50.0)}
    seed = every_task["seedbench_img"]
    assert score(seed, [FAILED_RESPONSE, "C", "B"])["seed_image"] == pytest.approx(200 / 3)


def test_a_sample_log_counts_only_samples_without_an_error_as_done_and_compacts_a_retry(tmp_path):
    path = tmp_path / "samples.jsonl"
    log = SampleLog(path)
    log.append({"task": "pope_random", "doc_id": 0, "response": "Yes", "error": None})
    log.append({"task": "pope_random", "doc_id": 1, "response": "", "error": "UnidentifiedImageError: x"})
    log.close()
    log = SampleLog(path)
    assert log.done("pope_random", 0) and not log.done("pope_random", 1) and not log.done("pope_random", 2)
    log.append({"task": "pope_random", "doc_id": 1, "response": "No", "error": None})  # the retry
    assert log.get("pope_random", 1)["response"] == "No" and len(path.read_text().splitlines()) == 3
    log.compact()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["doc_id"], r["response"]) for r in lines] == [(0, "Yes"), (1, "No")]
    assert SampleLog(path).done("pope_random", 1)


def write_data(root: Path, broken: bool) -> dict[str, Path]:
    """POPE, MME and GQA in the hub schemas under `root`; with `broken`, one undecodable image in each
    (POPE doc 1, MME doc 0, GQA's second image: docs 2 and 3)."""
    for name in ("pope", "mme", "gqa"):
        shutil.rmtree(root / name, ignore_errors=True)
    splits = {}
    for split in fixtures.POPE_SPLITS:
        rows = fixtures.pope_rows(split)
        if broken:
            rows[1]["image"] = BAD_IMAGE
        splits[split] = fixtures.to_dataset(rows, fixtures.POPE_FEATURES)
    DatasetDict(splits).save_to_disk(root / "pope")
    rows = fixtures.mme_rows()
    if broken:
        rows[0]["image"] = BAD_IMAGE
    DatasetDict({"test": fixtures.to_dataset(rows, fixtures.MME_FEATURES)}).save_to_disk(root / "mme")
    questions, images = fixtures.gqa_rows()
    if broken:
        images[1]["image"] = BAD_IMAGE
    DatasetDict({"testdev": fixtures.to_dataset(questions, fixtures.GQA_INSTRUCTION_FEATURES)}).save_to_disk(root / "gqa")
    DatasetDict({"testdev": fixtures.to_dataset(images, fixtures.GQA_IMAGE_FEATURES)}).save_to_disk(
        root / "gqa" / fixtures.GQA_IMAGES_DIR)
    return {name: root / name for name in ("pope", "mme", "gqa")}


def check_run(run_dir: Path, n_failed: dict[str, int]) -> dict[tuple[str, int], dict]:
    """results.json's failed counts, and its metrics equal to the stored per-sample scores' (failed: score 0)."""
    results = json.loads((run_dir / "results.json").read_text())["tasks"]
    lines = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    records = {(r["task"], r["doc_id"]): r for r in lines}
    assert len(lines) == len(records) == 12  # one line per sample
    for task, n in n_failed.items():
        assert (results[task]["n"], results[task]["n_failed"]) == (4, n), task
        mine = [r for (t, _), r in sorted(records.items()) if t == task]
        assert sum(r["error"] is not None for r in mine) == n
        for r in mine:
            assert (r["scores"].get("failed") is True) == (r["error"] is not None), r
            if r["error"] is not None:
                assert r["scores"]["score"] == 0.0 and r["response"] == ""
        scores = [r["scores"] for r in mine]
        metrics = results[task]["metrics"]
        if task == "pope_random":
            assert metrics == pytest.approx({f"pope_{k}": v for k, v in pope.records_metrics(scores).items()})
        elif task == "mme":
            assert metrics["mme_total"] == pytest.approx(mme.totals(scores)["total"])
        else:
            assert metrics["exact_match"] == pytest.approx(gqa.accuracy(scores))
    return records


@pytest.mark.slow
def test_failed_samples_count_wrong_in_a_run_and_a_rerun_after_the_fix_retries_them(tmp_path):
    data = write_data(tmp_path / "data", broken=True)
    run_dir = tmp_path / "run"
    command = ["model=tiny_random", "tasks=paper", "tasks.names=[pope_random,mme,gqa]", "method=fastv", "budget=64",
               "limit=4", "max_new_tokens=2", "logger=none", f"hydra.run.dir={run_dir}",
               *(f"tasks.data.{name}={path}" for name, path in data.items())]
    first = run_cli(command, tmp_path / "cache")
    assert first.returncode == 0, first.stderr[-3000:]
    before = check_run(run_dir, {"pope_random": 1, "mme": 1, "gqa": 2})
    failed = {key for key, r in before.items() if r["error"] is not None}
    assert failed == {("pope_random", 1), ("mme", 0), ("gqa", 2), ("gqa", 3)}
    assert before[("pope_random", 1)]["scores"] == {"pred": "no", "label": "yes", "score": 0.0, "failed": True}
    assert "failed samples: 4 of 12" in first.stdout

    write_data(tmp_path / "data", broken=False)  # the user fixes the data; the same command again
    second = run_cli(command, tmp_path / "cache")
    assert second.returncode == 0, second.stderr[-3000:]
    after = check_run(run_dir, {"pope_random": 0, "mme": 0, "gqa": 0})
    assert "failed samples: 0 of 12" in second.stdout
    for key, record in after.items():
        if key in failed:
            assert record["error"] is None and "failed" not in record["scores"] and record.get("prefill_ms") is not None
        else:
            assert record == before[key]  # answered from samples.jsonl, not run again
