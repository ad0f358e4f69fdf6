"""harness.leaderboard on a hand-made runs folder with known numbers (the paired bootstrap against an
independent loop: tests/test_leaderboard_bootstrap.py), and (slow part, one subprocess) a two-job multirun
through the submitit local launcher."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import leaderboard as lb
from harness.scoring import scorer_for

ROOT = Path(__file__).parents[1]
BENCH = {b.name: b for b in lb.BENCHMARKS}
POPE_SPLITS = ("pope_adversarial", "pope_popular", "pope_random")
POPE_LABELS = ("yes", "yes", "no", "no")
# MME fixture: 4 images x 2 questions (Yes, No); doc_id = row
MME_IMAGES = [("existence", "existence/1.jpg"), ("existence", "existence/2.jpg"), ("color", "color/1.jpg"),
              ("commonsense_reasoning", "commonsense_reasoning/1.png")]
MME_ROWS = [(category, image, answer) for category, image in MME_IMAGES for answer in ("Yes", "No")]

# Per method: GQA correct docs (of 10), MME correct questions (of 8), POPE predictions (each split),
# the scores they give (worked out by hand), prefill ms, realized tokens, FLOPs reduction.
RUNS = {
    "vanilla": dict(gqa=range(0, 8), mme=[0, 1, 2, 4, 5, 6, 7], pope="yes yes no yes", scores=(80.0, 525.0, 80.0),
                    prefill=100.0, tokens=576.0, reduction=0.0),
    "fastv": dict(gqa=[0, 1, 2, 3, 4, 5, 8], mme=[0, 1, 2, 5, 6, 7], pope="yes no no no", scores=(70.0, 375.0, 200 / 3),
                  prefill=40.0, tokens=64.2, reduction=0.889),
    "adaptinfer": dict(gqa=range(0, 8), mme=[0, 1, 2, 4, 5, 6, 7], pope="yes yes no yes", scores=(80.0, 525.0, 80.0),
                       prefill=50.0, tokens=63.8, reduction=0.88, paper_tokens=52.0),
    "pool": dict(gqa=range(0, 4), mme=[2, 5, 6, 7], pope="no no no no", scores=(40.0, 275.0, 0.0),
                 prefill=25.0, tokens=64.0, reduction=0.9),
    "blind": dict(gqa=[0], mme=[], pope="yes yes yes yes", scores=(10.0, 0.0, 200 / 3),
                  prefill=20.0, tokens=0.0, reduction=0.95),
}
# Avg = mean(score / vanilla score) x 100 over GQA, MME, POPE
AVG = {"vanilla": 100.0, "adaptinfer": 100.0, "fastv": 100 * (70 / 80 + 375 / 525 + (200 / 3) / 80) / 3,
       "pool": 100 * (40 / 80 + 275 / 525 + 0) / 3, "blind": 100 * (10 / 80 + 0 + (200 / 3) / 80) / 3}
# difficult (vanilla right, pool@64 wrong): GQA docs 4-7, MME q0 q1 q4, POPE items 0 1 of each split = 13
DIFFICULT = {"vanilla": (100.0, 13), "adaptinfer": (100.0, 13), "fastv": (100 * 7 / 13, 13), "pool": (0.0, 13),
             "blind": (100 * 6 / 13, 13)}


def write_run(run_dir: Path, method: str, budget: int, spec: dict, data: dict, finished: str = "2026-11-25T10:00:00+00:00",
              scores: tuple | None = None, batch_size: int = 1) -> None:
    run_dir.mkdir(parents=True)
    records = []
    for doc_id in range(10):
        records.append({"task": "gqa", "doc_id": doc_id, "target": "red",
                        "response": "Red." if doc_id in spec["gqa"] else "blue"})
    for doc_id, (_, _, answer) in enumerate(MME_ROWS):
        wrong = {"Yes": "No", "No": "Yes"}[answer]
        records.append({"task": "mme", "doc_id": doc_id, "target": answer,
                        "response": answer if doc_id in spec["mme"] else wrong})
    for split in POPE_SPLITS:
        for doc_id, (pred, label) in enumerate(zip(spec["pope"].split(), POPE_LABELS)):
            records.append({"task": split, "doc_id": doc_id, "target": label, "response": pred.capitalize() + "."})
    for record in records:
        record.update(error=None, prefill_ms=spec["prefill"], decode_ms=1.0, n_new_tokens=2, vision_per_layer=[])
    (run_dir / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    gqa, mme, pope = scores or spec["scores"]
    tasks = {"gqa": {"metrics": {"exact_match": gqa}, "n": 10, "n_failed": 0},
             "mme": {"metrics": {"mme_total": mme, "mme_perception": float("nan")}, "n": 8, "n_failed": 0},
             "pope": {"metrics": {"pope_f1": pope}, "n": 12, "n_failed": 0},
             **{split: {"metrics": {"pope_f1": pope}, "n": 4, "n_failed": 0} for split in POPE_SPLITS}}
    tokens = {"vision_per_layer": [], "avg_vision_tokens": spec["tokens"]}
    if "paper_tokens" in spec:
        tokens["avg_vision_tokens_paper"] = spec["paper_tokens"]
    results = {
        "schema": 1, "method": method, "budget": budget, "model": "handmade_model", "seed": 0, "limit": None,
        "tasks": tasks, "tokens": tokens,
        "latency_ms": {"prefill": {"mean": spec["prefill"], "p50": spec["prefill"], "p90": spec["prefill"]}},
        "flops": {"prefill_tflops": 1.0, "vanilla_prefill_tflops": 1.0, "reduction": spec["reduction"]},
        "config": {"tasks": {"names": ["gqa", "mme", "pope"], "data": data}, "batch_size": batch_size},
        "started_at": finished, "finished_at": finished,
    }
    (run_dir / "results.json").write_text(json.dumps(results))


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    """vanilla, fastv/adaptinfer/pool at 64, blind, and a newer vanilla at batch 8 (must be ignored)."""
    from datasets import Dataset, DatasetDict

    root = tmp_path_factory.mktemp("handmade")
    meta = root / "mme_meta"  # MME's image and category per doc come from the dataset the run used
    DatasetDict({"test": Dataset.from_dict({"question_id": [r[1] for r in MME_ROWS],
                                            "category": [r[0] for r in MME_ROWS]})}).save_to_disk(meta)
    data = {"gqa": "lmms-lab/GQA", "mme": str(meta), "pope": "lmms-lab/POPE"}
    sweep = root / "sweep"
    for method, spec in RUNS.items():
        write_run(sweep / f"{method}-64", method, 64, spec, data)
    write_run(root / "b8" / "vanilla-128-b8", "vanilla", 128, RUNS["vanilla"], data,
              finished="2026-11-26T10:00:00+00:00", scores=(10.0, 10.0, 10.0), batch_size=8)
    return root


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = lb.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def markdown_rows(text: str) -> dict[str, list[str]]:
    rows = [line.strip("|").split(" | ") for line in text.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [c.strip() for c in cells] for cells in rows}


def test_markdown_columns_avg_speedup_difficult_and_ci(runs_dir, capsys):
    code, out, err = run_cli([runs_dir, "--bootstrap", "200"], capsys)
    assert code == 0, err
    assert "2 runs of vanilla" in err and "vanilla-128-b8 (30 samples, batch 8)" in err  # batch 1 wins, newer or not
    assert "then batch size 1 (latency is timed at batch 1)" in err and "then batch size 1" in out
    rows = markdown_rows(out)
    header = rows.pop("Method")
    assert header == ["Method", "Budget", "GQA", "MME P+C", "POPE F1", "Avg", "Difficult", "Tokens", "Tokens (paper)",
                      "Prefill ms", "Speedup", "FLOPs ↓", "n"]
    assert [r for r in rows if r != "---"] == ["vanilla", "adaptinfer", "fastv", "pool", "blind"]  # order
    col = {name: i for i, name in enumerate(header)}
    for method, spec in RUNS.items():
        cells = rows[method]
        for i, bench in enumerate(("GQA", "MME P+C", "POPE F1")):
            assert cells[col[bench]].startswith(f"{spec['scores'][i]:.1f}"), (method, bench, cells)
        assert cells[col["Avg"]] == f"{AVG[method]:.1f}"
        acc, n = DIFFICULT[method]
        assert cells[col["Difficult"]] == f"{acc:.1f} (n={n})"
        assert cells[col["Speedup"]] == f"{100.0 / spec['prefill']:.2f}×"
        assert cells[col["Prefill ms"]] == f"{spec['prefill']:.1f}"
        assert cells[col["FLOPs ↓"]] == f"{100 * spec['reduction']:.1f}%"
    assert rows["vanilla"][col["Budget"]] == "—" and rows["blind"][col["Budget"]] == "—"
    assert rows["fastv"][col["Budget"]] == "64"
    assert rows["blind"][col["Tokens"]] == "0.0" and rows["fastv"][col["Tokens"]] == "64.2"
    assert rows["adaptinfer"][col["Tokens (paper)"]] == "52.0" and rows["fastv"][col["Tokens (paper)"]] == "—"
    # adaptinfer answers exactly like vanilla: difference 0, CI [0, 0]; vanilla itself has no CI
    assert rows["adaptinfer"][col["GQA"]] == "80.0 (+0.0 [+0.0, +0.0])"
    assert rows["adaptinfer"][col["MME P+C"]] == "525.0 (+0.0 [+0.0, +0.0])"
    assert rows["vanilla"][col["GQA"]] == "80.0"
    assert "−10.0 [" in rows["fastv"][col["GQA"]]  # 70 - 80
    assert "Not significantly different" in out


def test_difficult_subset_table(runs_dir, capsys):
    code, out, err = run_cli([runs_dir, "--subset", "difficult"], capsys)
    assert code == 0, err
    rows = markdown_rows(out)
    header = rows.pop("Method")
    assert "Difficult" not in header and "difficult subset" in out
    col = {name: i for i, name in enumerate(header)}
    assert rows["fastv"][col["GQA"]] == "50.0 (n=4)"        # docs 4, 5 of 4-7
    assert rows["fastv"][col["MME P+C"]] == f"{200 / 3:.1f} (n=3)"
    assert rows["fastv"][col["POPE F1"]] == "50.0 (n=6)"
    assert rows["pool"][col["GQA"]] == "0.0 (n=4)" and rows["vanilla"][col["POPE F1"]] == "100.0 (n=6)"


def test_latex_and_csv(runs_dir, capsys, tmp_path):
    code, _, err = run_cli([runs_dir, "--format", "latex", "--bootstrap", "50", "--out", tmp_path / "t.tex"], capsys)
    assert code == 0, err
    tex = (tmp_path / "t.tex").read_text()
    for part in ("\\begin{tabular}", "\\toprule", "\\midrule", "\\bottomrule", "handmade\\_model", "\\end{table}"):
        assert part in tex, part
    body = tex.split("\\toprule")[1].split("\\bottomrule")[0]
    assert "_" not in body.replace("\\_", "")  # underscores escaped
    lines = [line for line in body.splitlines() if line.endswith("\\\\")]
    assert len({line.count(" & ") for line in lines}) == 1 and len(lines) == 6  # header + 5 rows, same width

    code, out, err = run_cli([runs_dir, "--format", "csv", "--bootstrap", "50"], capsys)
    assert code == 0, err
    rows = {r["method"]: r for r in csv.DictReader(io.StringIO(out))}
    assert list(rows) == ["vanilla", "adaptinfer", "fastv", "pool", "blind"]
    assert float(rows["fastv"]["gqa"]) == 70.0 and float(rows["fastv"]["gqa_diff"]) == pytest.approx(-10.0)
    assert float(rows["fastv"]["gqa_ci_low"]) <= -10.0 <= float(rows["fastv"]["gqa_ci_high"])
    assert float(rows["adaptinfer"]["mme_pc_ci_low"]) == 0.0 == float(rows["adaptinfer"]["mme_pc_ci_high"])
    assert float(rows["fastv"]["avg"]) == pytest.approx(AVG["fastv"], abs=1e-3)
    assert float(rows["pool"]["speedup"]) == 4.0 and float(rows["fastv"]["flops_reduction_pct"]) == pytest.approx(88.9)
    assert int(rows["fastv"]["difficult_n"]) == 13 and rows["vanilla"]["budget"] == "" and rows["blind"]["tokens"] == "0"
    assert rows["vanilla"]["gqa_diff"] == ""


def test_missing_vanilla_is_a_message_and_a_dash(runs_dir, capsys, tmp_path):
    code, out, err = run_cli([runs_dir / "sweep" / "fastv-64", "--bootstrap", "0", "--plot", tmp_path / "p"], capsys)
    assert code == 0
    assert "no vanilla run" in err
    rows = markdown_rows(out)
    header = rows.pop("Method")
    assert rows["fastv"][header.index("Avg")] == "—" and rows["fastv"][header.index("GQA")] == "70.0"
    assert (tmp_path / "p_budget.png").stat().st_size > 0 and (tmp_path / "p_latency.png").stat().st_size > 0


def test_empty_dir_is_an_error(tmp_path, capsys):
    code, _, err = run_cli([tmp_path], capsys)
    assert code == 2 and "no results.json" in err


def test_vanilla_beside_the_published_numbers(tmp_path, capsys):
    def write(method, gqa, textvqa, mme_p):
        run = tmp_path / method
        run.mkdir()
        tasks = {"gqa": {"metrics": {"exact_match": gqa}}, "textvqa_val": {"metrics": {"vqa_accuracy": textvqa}},
                 "mme": {"metrics": {"mme_total": mme_p + 300, "mme_perception": mme_p}}}
        (run / "results.json").write_text(json.dumps({
            "method": method, "budget": 64, "model": lb.PUBLISHED_MODEL, "tasks": tasks,
            "config": {"tasks": {"names": ["gqa", "mme", "textvqa_val"]}}}))

    write("vanilla", 61.0, 48.0, 1490.7)
    write("fastv", 50.0, 40.0, 1200.0)
    code, out, err = run_cli([tmp_path, "--bootstrap", "0"], capsys)
    assert code == 0
    assert "- GQA: 61.0 vs published 62.0 (-1.0 points;" in out
    assert "- TextVQA: 48.0 vs published 58.2 (-10.2 points;" in out
    assert "- MME P: 1490.7 vs published 1510.7 (-1.0 points;" in out  # 20 of 2000 = 1 point of 100
    assert "Avg: mean over the benchmarks present (GQA, MME P+C, TextVQA)" in out
    warnings = [line for line in err.splitlines() if "differs from the published" in line]
    assert len(warnings) == 1 and "vanilla TextVQA 48.0" in warnings[0]  # only the gap over 1.5 points


def test_every_benchmark_task_has_a_yaml_and_a_scorer():
    for bench in lb.BENCHMARKS:
        for task in bench.tasks:
            assert callable(lb.task_function(task, "process_results")), task
            assert scorer_for(task) is not None, task


# ---------------------------------------------------------------- sweep through the submitit local launcher

@pytest.mark.slow
def test_submitit_local_multirun_and_leaderboard(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    env = {**os.environ, "PRUNEBENCH_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run(
        [sys.executable, "run.py", "-m", "hydra/launcher=local", "method=vanilla,fastv", "budget=64", "model=tiny_random",
         "tasks=fixtures", "tasks.names=[gqa,pope_random]", "limit=2", "max_new_tokens=2", "logger=none",
         f"hydra.sweep.dir={sweep}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = sorted(p.parent.relative_to(sweep).as_posix() for p in sweep.rglob("results.json"))
    assert found == ["tiny_random/fixtures/fastv-64", "tiny_random/fixtures/vanilla"]
    code, out, err = run_cli([sweep, "--bootstrap", "100"], capsys)
    assert code == 0, err
    rows = markdown_rows(out)
    header = rows.pop("Method")
    assert header[2:4] == ["GQA", "POPE F1"]
    assert rows["vanilla"][header.index("Avg")] == "100.0" and "fastv" in rows


def test_a_newer_partial_run_never_shadows_a_complete_one_and_failures_are_flagged(runs_dir, tmp_path, capsys):
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(runs_dir, root)
    data = json.loads((root / "sweep" / "vanilla-64" / "results.json").read_text())["config"]["tasks"]["data"]
    smoke = root / "smoke" / "fastv-64"  # newer, limit=1, every score 100
    write_run(smoke, "fastv", 64, RUNS["fastv"], data, finished="2026-11-26T10:00:00+00:00", scores=(100.0, 100.0, 100.0))
    results = json.loads((smoke / "results.json").read_text())
    results["limit"] = 1
    for task in results["tasks"].values():
        task["n"] = 1
    (smoke / "results.json").write_text(json.dumps(results))
    failing = root / "sweep" / "adaptinfer-64" / "results.json"
    results = json.loads(failing.read_text())
    results["tasks"]["gqa"]["n_failed"] = 3
    failing.write_text(json.dumps(results))

    code, out, err = run_cli([root, "--bootstrap", "0"], capsys)
    assert code == 0, err
    rows = markdown_rows(out)
    header = rows.pop("Method")
    col = {name: i for i, name in enumerate(header)}
    expected = markdown_rows(run_cli([runs_dir, "--bootstrap", "0"], capsys)[1])
    assert rows["fastv"][col["GQA"]] == expected["fastv"][col["GQA"]] != "100.0"  # the complete run's score
    assert "rule: most samples, then no limit" in err and "limit=1" in err
    assert rows["fastv"][col["n"]] == "30" and rows["vanilla"][col["n"]] == "30"
    assert rows["adaptinfer"][col["GQA"]].endswith("†") and rows["adaptinfer"][col["n"]] == "30 (3 failed)"
    assert not rows["fastv"][col["GQA"]].endswith("†") and "†: some samples" in out

    (root / "sweep" / "fastv-64" / "results.json").unlink()  # only the smoke test left: shown, with its limit
    rows = markdown_rows(run_cli([root, "--bootstrap", "0"], capsys)[1])
    rows.pop("Method")
    assert rows["fastv"][col["GQA"]].startswith("100.0") and rows["fastv"][col["n"]] == "5 (limit 1)"


def test_roles_come_from_the_recorded_method_facts_not_the_names(runs_dir, tmp_path, capsys):
    """Renamed baselines that declare their roles give the same table as vanilla/blind/pool by name."""
    import shutil

    renamed = {"vanilla": "fullimage", "blind": "textonly", "pool": "pooling"}
    facts = {"fullimage": {"reference": True, "ignores_budget": True}, "textonly": {"ignores_budget": True},
             "pooling": {"difficult_reference": True}}
    copy = tmp_path / "renamed"
    shutil.copytree(runs_dir / "sweep", copy)
    for path in copy.rglob("results.json"):
        results = json.loads(path.read_text())
        results["method"] = renamed.get(results["method"], results["method"])
        results["method_facts"] = facts.get(results["method"], {"reference": False, "ignores_budget": False})
        path.write_text(json.dumps(results))
    code, by_name, err = run_cli([runs_dir / "sweep", "--bootstrap", "50"], capsys)
    assert code == 0, err
    code, by_facts, err = run_cli([copy, "--bootstrap", "50"], capsys)
    assert code == 0, err
    for old, new in renamed.items():
        by_name = by_name.replace(old, new)
    assert by_facts.replace(str(copy), "") == by_name.replace(str(runs_dir / "sweep"), "")
    rows = [line.split(" | ")[0].strip("| ") for line in by_facts.splitlines() if line.startswith("| ")][2:]
    assert rows == ["fullimage", "adaptinfer", "fastv", "pooling", "textonly"]


def test_budget_cell_carries_the_family_label(runs_dir, capsys, tmp_path):
    """On families whose image-token count varies, the Budget cell adds the field's label for the run."""
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(runs_dir / "sweep", root)
    path = root / "fastv-64" / "results.json"
    results = json.loads(path.read_text())
    results["tokens"]["budget_label"] = "320"
    path.write_text(json.dumps(results))
    code, out, err = run_cli([root, "--bootstrap", "0"], capsys)
    assert code == 0, err
    rows = markdown_rows(out)
    col = rows["Method"].index("Budget")
    assert rows["fastv"][col] == "64 (320)" and rows["pool"][col] == "64"


def test_tokens_cell_marks_a_run_that_kept_fewer_than_its_budget(runs_dir, capsys, tmp_path):
    """results.json `tokens.below_budget` (a pre-LLM method out of distinct tokens): the realized count, marked."""
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(runs_dir / "sweep", root)
    path = root / "pool-64" / "results.json"
    results = json.loads(path.read_text())
    results["tokens"].update(avg_vision_tokens=41.5, below_budget={"budget": 64, "samples": 3, "of": 4,
                                                                   "avg_kept_fewer": 22.5})
    path.write_text(json.dumps(results))
    code, out, err = run_cli([root, "--bootstrap", "0"], capsys)
    assert code == 0, err
    rows = markdown_rows(out)
    col = rows["Method"].index("Tokens")
    assert rows["pool"][col] == "41.5 (< 64)" and rows["fastv"][col] == "64.2"
    code, out, err = run_cli([root, "--bootstrap", "0", "--format", "latex"], capsys)
    assert code == 0 and "41.5 ($<$64)" in out, err
