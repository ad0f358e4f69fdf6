"""Leaderboard comparisons on the same samples (a run with a limit beside a complete one), the choice among
equivalent runs, failed samples, and bad input (--out, damaged files, --help)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from harness import leaderboard as lb
from harness.scoring import gqa, mme, pope

# 8 docs per task. MME: 4 images x 2 questions (Yes, No), existence then color; POPE labels alternate.
MME_DOCS = [{"question_id": f"{cat}/{img}.png", "category": cat, "answer": answer}
            for cat in ("existence", "color") for img in "ab" for answer in ("Yes", "No")]
POPE_LABELS = ["yes", "no"] * 4
# Per method: GQA docs right, MME docs right, POPE predictions; prefill ms per doc (the same in every task).
# Whole runs, by hand: vanilla GQA 75.0, MME 125 + 200 = 325.0, POPE F1 2*3 / (2*3 + 1 + 1) = 75.0;
# fastv GQA 87.5, MME 125 + 50 = 175.0, POPE F1 2*2 / (2*2 + 1 + 2) = 57.1.
# On the first 2 docs of each task: vanilla 100.0, 200.0 (existence/a both right), 100.0; fastv 50.0, 50.0, 66.7;
# random (every answer right) 100.0, 200.0, 100.0.
SPECS = {
    "vanilla": {"gqa": {0, 1, 2, 3, 4, 5}, "mme": {0, 1, 2, 4, 5, 6, 7}, "pope": "yes no yes no yes no no yes",
                "prefill": lambda doc: 100.0 + 20 * doc},
    "fastv": {"gqa": {0, 2, 3, 4, 5, 6, 7}, "mme": {0, 2, 3, 4, 6}, "pope": "yes yes yes no no no no no",
              "prefill": lambda doc: 50.0},
    "random": {"gqa": set(range(8)), "mme": set(range(8)), "pope": "yes no yes no yes no yes no",
               "prefill": lambda doc: 50.0},
}
PAIRED_AVG = 100 * (50 / 100 + 50 / 200 + (200 / 3) / 100) / 3  # fastv / vanilla on the first 2 docs of each task


def write_run(run_dir: Path, method: str, limit: int | None = None, batch_size: int = 1, finished: str = "2026-12-01",
              failed: dict | None = None, samples: bool = True) -> None:
    """A run as the harness writes it: per-sample `scores` from harness.scoring, results.json from them.

    `failed`: {(task, doc_id): record fields} of samples that failed (their `error` set).
    """
    spec, n = SPECS[method], limit or 8
    records = []
    for doc in range(n):
        records.append({"task": "gqa", "doc_id": doc, "target": "red", "response": "red" if doc in spec["gqa"] else "blue"})
        right = MME_DOCS[doc]["answer"]
        records.append({"task": "mme", "doc_id": doc, "target": right, "question_id": MME_DOCS[doc]["question_id"],
                        "category": MME_DOCS[doc]["category"],
                        "response": right if doc in spec["mme"] else {"Yes": "No", "No": "Yes"}[right]})
        records.append({"task": "pope_random", "doc_id": doc, "target": POPE_LABELS[doc],
                        "response": spec["pope"].split()[doc].capitalize()})
    for r in records:
        doc = {"answer": r["target"], **(MME_DOCS[r["doc_id"]] if r["task"] == "mme" else {})}
        scorer = {"gqa": gqa, "mme": mme, "pope_random": pope}[r["task"]]
        r.update(error=None, warmup=False, prefill_ms=spec["prefill"](r["doc_id"]), scores=scorer.score(doc, r["response"]))
        r.update((failed or {}).get((r["task"], r["doc_id"]), {}))
    ok = [r for r in records if r["error"] is None]
    by_task = {t: [r for r in records if r["task"] == t] for t in ("gqa", "mme", "pope_random")}
    wrong = {"score": 0.0}  # a failed sample is a wrong answer
    metrics = {
        "gqa": {"exact_match": 100 * sum(r["scores"]["score"] if r["error"] is None else 0 for r in by_task["gqa"]) / n},
        "mme": {"mme_total": mme.totals([{**r["scores"], **(wrong if r["error"] else {})} for r in by_task["mme"]])["total"]},
        "pope_random": {"pope_f1": pope.metrics(
            [r["scores"]["pred"] if r["error"] is None else {"yes": "no", "no": "yes"}[r["target"]] for r in by_task["pope_random"]],
            [r["target"] for r in by_task["pope_random"]])["f1"]},
    }
    tasks = {t: {"metrics": metrics[t], "n": n, "n_failed": sum(r["error"] is not None for r in rs)} for t, rs in by_task.items()}
    mean = sum(r["prefill_ms"] for r in ok) / len(ok)
    results = {"schema": 1, "method": method, "budget": 64, "model": "m", "seed": 0, "limit": limit, "tasks": tasks,
               "tokens": {"avg_vision_tokens": 64.0}, "latency_ms": {"prefill": {"mean": mean}},
               "config": {"tasks": {"names": ["gqa", "mme", "pope_random"]}, "batch_size": batch_size},
               "finished_at": finished}
    run_dir.mkdir(parents=True)
    if samples:
        (run_dir / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run_dir / "results.json").write_text(json.dumps(results))


def table(root: Path, capsys, *args) -> tuple[dict[str, dict[str, str]], str, str]:
    """({method: {column: cell}}, stdout, stderr) of the Markdown table."""
    code = lb.main([str(root), "--bootstrap", "0", *map(str, args)])
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = [line.strip("|").split(" | ") for line in out.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0]]
    return {cells[0].strip(): dict(zip(header, (c.strip() for c in cells))) for cells in lines[2:]}, out, err


def _run(root: Path, capsys, *args) -> str:
    assert lb.main([str(root), "--bootstrap", "0", *args]) == 0
    return capsys.readouterr().out


def test_a_partial_reference_beside_a_complete_run_is_compared_on_the_shared_samples(tmp_path, capsys):
    write_run(tmp_path / "vanilla-l2", "vanilla", limit=2)
    write_run(tmp_path / "fastv", "fastv")
    rows, out, _ = table(tmp_path, capsys)
    assert rows["fastv"]["Avg"] == f"{PAIRED_AVG:.1f} (n=6)"  # 47.2, not 77.4 (own scores over different samples)
    assert rows["fastv"]["GQA"] == "87.5" and rows["fastv"]["MME P+C"] == "175.0" and rows["fastv"]["POPE F1"] == "57.1"
    assert rows["vanilla"]["GQA"] == "100.0 ‡" and rows["vanilla"]["MME P+C"] == "200.0 ‡"  # its own 2 samples, marked
    assert rows["fastv"]["Speedup"] == f"{110 / 50:.2f}× (n=6)" and rows["vanilla"]["n"] == "6 (limit 2)"
    assert "(n=N) after Δ, Avg or Speedup" in out and "‡ and (limit L): a partial run" in out

    rows, out, _ = table(tmp_path, capsys, "--bootstrap", "50")
    assert rows["fastv"]["GQA"].startswith("87.5 (−50.0 [") and rows["fastv"]["GQA"].endswith("; n=2)")
    assert rows["fastv"]["MME P+C"].startswith("175.0 (−150.0 [")  # 50 vs 200 on existence/a
    csv_rows = {r["method"]: r for r in csv.DictReader(io.StringIO(_run(tmp_path, capsys, "--format", "csv")))}
    assert float(csv_rows["fastv"]["avg"]) == pytest.approx(PAIRED_AVG, abs=1e-3)
    assert csv_rows["fastv"]["avg_paired_n"] == "6" and csv_rows["fastv"]["gqa_paired_n"] == "2"


def test_a_partial_run_beside_a_complete_reference(tmp_path, capsys):
    write_run(tmp_path / "vanilla", "vanilla")
    write_run(tmp_path / "fastv-l2", "fastv", limit=2)
    rows, _, _ = table(tmp_path, capsys)
    assert rows["fastv"]["Avg"] == f"{PAIRED_AVG:.1f} (n=6)"  # not 57.0 (vanilla's whole-run scores)
    assert rows["fastv"]["Speedup"] == "2.20× (n=6)"  # vanilla's prefill on the same docs (110 ms), not its mean (170)
    assert rows["fastv"]["GQA"] == "50.0 ‡" and rows["fastv"]["MME P+C"] == "50.0 ‡" and rows["vanilla"]["GQA"] == "75.0"


def test_a_two_sample_run_whose_mme_holds_one_category(tmp_path, capsys):
    write_run(tmp_path / "vanilla", "vanilla")
    write_run(tmp_path / "random-l2", "random", limit=2)
    rows, _, _ = table(tmp_path, capsys)
    assert rows["random"]["Avg"] == "100.0 (n=6)"  # vanilla is right on those 6 too; unpaired: 109.4
    assert rows["random"]["MME P+C"] == "200.0 ‡"  # existence only: 200 of 200


def test_complete_runs_compare_their_own_numbers(tmp_path, capsys):
    write_run(tmp_path / "vanilla", "vanilla")
    write_run(tmp_path / "fastv", "fastv")
    rows, out, _ = table(tmp_path, capsys)
    assert rows["fastv"]["Avg"] == f"{100 * (87.5 / 75 + 175 / 325 + (400 / 7) / 75) / 3:.1f}"  # no (n=...)
    assert rows["fastv"]["Speedup"] == f"{170 / 50:.2f}×" and "(n=N)" not in out and "‡" not in out


def test_without_samples_different_runs_are_not_compared(tmp_path, capsys):
    write_run(tmp_path / "vanilla", "vanilla", samples=False)
    write_run(tmp_path / "fastv-l2", "fastv", limit=2, samples=False)
    write_run(tmp_path / "random", "random", samples=False)
    rows, out, _ = table(tmp_path, capsys)
    assert rows["fastv"]["Avg"] == "—" and rows["fastv"]["Speedup"] == "—" and rows["fastv"]["GQA"] == "50.0 ‡"
    assert "Not compared with vanilla (—):" in out and "- fastv 64: Avg —: GQA has no per-sample scores" in out
    assert "(6 samples, limit=2 vs 24 samples)" in out or "(2 samples, limit=2 vs 8 samples)" in out
    # the same samples by results.json's counts (no limit, same n per task): compared
    assert rows["random"]["Avg"] == f"{100 * (100 / 75 + 400 / 325 + 100 / 75) / 3:.1f}"


def test_failed_samples_are_wrong_whatever_their_scores_say(tmp_path, capsys):
    write_run(tmp_path / "vanilla", "vanilla")
    failed = {("gqa", 0): {"error": "OSError: broken image", "target": None, "scores": None},   # failed before its doc opened
              ("mme", 0): {"error": "RuntimeError: x", "response": ""},                       # `scores` still says right
              ("pope_random", 0): {"error": "RuntimeError: x", "scores": None}}               # label yes: a false negative
    write_run(tmp_path / "random", "random", failed=failed)
    rows, _, _ = table(tmp_path, capsys)
    # GQA 7/8; MME existence acc 75 + acc+ 50, color 200; POPE TP 3, FN 1: F1 6/7
    expected = 100 * (87.5 / 75 + 325 / 325 + (600 / 7) / 75) / 3
    assert rows["random"]["Avg"] == f"{expected:.1f}" and rows["random"]["GQA"] == "87.5 †"
    assert rows["random"]["n"] == "24 (3 failed)"  # Avg has no (n=...): the failed samples are paired too
    assert rows["random"]["Speedup"] == f"{(170 * 8 - 100) / 7 / 50:.2f}× (n=21)"  # failed samples are not timed


def test_equivalent_runs_the_choice_is_stated_and_ignores_the_finish_time(tmp_path, capsys):
    write_run(tmp_path / "vanilla", "vanilla")
    write_run(tmp_path / "fastv-b8", "fastv", batch_size=8, finished="2026-12-03")
    write_run(tmp_path / "fastv", "fastv", finished="2026-12-02")
    write_run(tmp_path / "fastv-l4", "fastv", limit=4, finished="2026-12-04")
    path = tmp_path / "fastv-b8" / "results.json"
    results = json.loads(path.read_text())
    results["latency_ms"]["prefill"]["mean"] = 25.0
    path.write_text(json.dumps(results))
    rows, out, err = table(tmp_path, capsys, "--format", "markdown")
    assert f"{tmp_path / 'fastv'} (24 samples) over {tmp_path / 'fastv-b8'} (24 samples, batch 8), " in out
    assert "the row uses the one with most samples, then no limit, then fewest failed samples, then batch size 1" in out
    assert rows["fastv"]["Prefill ms"] == "50.0" and "3 runs of fastv at budget 64" in err
    for name in ("fastv-b8", "fastv-l4"):  # the others finishing later or earlier changes nothing
        path = tmp_path / name / "results.json"
        path.write_text(path.read_text().replace('"2026-12-0', '"2025-12-0'))
    assert table(tmp_path, capsys)[0]["fastv"]["Prefill ms"] == "50.0"

    write_run(tmp_path / "a-fastv", "fastv", finished="2026-11-01")  # an equal run: the first run dir in path order
    rows, out, _ = table(tmp_path, capsys)
    assert f"- fastv 64: {tmp_path / 'a-fastv'} (24 samples) over {tmp_path / 'fastv'} (24 samples)" in out


def test_out_naming_a_directory_is_one_error_line(tmp_path, capsys):
    write_run(tmp_path / "runs" / "vanilla", "vanilla")
    assert lb.main([str(tmp_path / "runs"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [(f"error: --out {tmp_path} is a directory (allowed: a file path, e.g. --out docs/table.md; "
                    "missing parent dirs are created)")]
    (tmp_path / "file").write_text("")
    assert lb.main([str(tmp_path / "runs"), "--out", str(tmp_path / "file" / "t.md")]) == 2
    assert "which is a file" in capsys.readouterr().err


def test_damaged_files_are_named_and_the_rest_is_shown(tmp_path, capsys):
    write_run(tmp_path / "vanilla", "vanilla")
    write_run(tmp_path / "fastv", "fastv")
    write_run(tmp_path / "random", "random")
    (tmp_path / "random" / "results.json").write_text('{"method": "random", "tas')  # truncated
    with (tmp_path / "fastv" / "samples.jsonl").open("ab") as f:
        f.write(b'{"no task": 1}\n\xff\xfe\n[1, 2]\n{"task": "gqa", "doc_')  # three bad lines, then a torn last one
    (tmp_path / "vanilla" / "run.json").write_text("{")  # not read by the leaderboard
    rows, _, err = table(tmp_path, capsys, "--bootstrap", "20")
    assert f"skipped {tmp_path / 'random' / 'results.json'}: damaged" in err and "random" not in rows
    assert f"{tmp_path / 'fastv' / 'samples.jsonl'}: 3 damaged line(s) skipped" in err
    assert rows["fastv"]["Avg"] == f"{100 * (87.5 / 75 + 175 / 325 + (400 / 7) / 75) / 3:.1f}"


def test_help_lists_only_the_leaderboard_options(capsys):
    with pytest.raises(SystemExit):
        lb.main(["--help"])
    text = capsys.readouterr().out
    assert "--plot PREFIX" in text and "--out" in text
    assert "preset" not in text and "experiment" not in text and "== Configuration groups ==" not in text


def test_a_partial_reference_without_samples_is_still_the_reference(tmp_path, capsys):
    write_run(tmp_path / "vanilla-l2", "vanilla", limit=2, samples=False)
    rows, _, _ = table(tmp_path, capsys)
    assert rows["vanilla"]["Avg"] == "100.0" and rows["vanilla"]["Speedup"] == "1.00×"
