"""The leaderboard's paired bootstrap: known answers, an independent loop, stored score fields, CircularEval
units, vectorised over replicates."""

from __future__ import annotations

import numpy as np
import pytest

from harness import leaderboard as lb

BENCH = {b.name: b for b in lb.BENCHMARKS}


def scored(kind: str, correct: list[bool], **extra) -> dict:
    bench = lb.Column("x", ("t",), "m", kind)
    units = {}
    for i, ok in enumerate(correct):
        unit = {"correct": ok}
        if kind == "mme":
            unit.update(image=f"img{i // 2}", category=("existence", "color")[(i // 2) % 2])
        units[("t", i)] = unit
    return bench, units


@pytest.mark.parametrize("kind", ["accuracy", "mme"])
def test_bootstrap_known_answers(kind):
    boot = lb.PairedBootstrap(1000, seed=0)
    bench, right = scored(kind, [True] * 20)
    _, same = scored(kind, [True] * 20)
    assert boot.difference(bench, right, same) == (0.0, 0.0, 0.0)  # identical runs
    _, wrong = scored(kind, [False] * 20)
    expected = -100.0 if kind == "accuracy" else -400.0  # MME: two categories x (acc + acc+)
    diff, low, high = boot.difference(bench, wrong, right)
    assert diff == low == high == pytest.approx(expected)  # wrong wherever vanilla is right: one negative value


def test_bootstrap_matches_an_independent_loop():
    """Seeded resamples scored with the tasks' own aggregation functions, one resample at a time."""
    pope_utils, mme_utils = (lb.task_module(lb.task_yaml(task).parent / "utils.py") for task in ("pope_random", "mme"))
    rng = np.random.default_rng(1)
    B, seed = 200, 7
    answers = {"yes": "no", "no": "yes"}

    # POPE: two splits; method misses one sample (pairing keeps the common ones)
    records = {"m": {}, "v": {}}
    for split in ("pope_adversarial", "pope_random"):
        for doc_id in range(15):
            label = "yes" if doc_id % 2 else "no"
            for run, p_right in (("m", 0.6), ("v", 0.85)):
                pred = label if rng.random() < p_right else answers[label]
                records[run][(split, doc_id)] = {"task": split, "doc_id": doc_id, "target": label, "response": pred}
    del records["m"][("pope_random", 3)]
    # MME: 6 images in 2 categories, 2 questions each
    mme_meta = {i: {"question_id": f"{('existence', 'color')[i % 2]}/{i // 4}.jpg", "category": ("existence", "color")[i % 2]}
                for i in range(12)}
    mme_records = {run: {("mme", i): {"task": "mme", "doc_id": i, "target": ("Yes", "No")[i % 2],
                                     "response": ("Yes", "No")[(i + (rng.random() < p)) % 2]}
                         for i in range(12)} for run, p in (("m", 0.4), ("v", 0.1))}

    def lib_scores(bench, recs, meta=None):
        return {k: lb.score_sample(bench, r, (meta or {}).get(k[1])) for k, r in recs.items()}

    pope, mme = BENCH["POPE F1"], BENCH["MME P+C"]
    boot = lb.PairedBootstrap(B, seed)
    got_pope = boot.difference(pope, lib_scores(pope, records["m"]), lib_scores(pope, records["v"]))
    got_mme = boot.difference(mme, lib_scores(mme, mme_records["m"], mme_meta), lib_scores(mme, mme_records["v"], mme_meta))

    # independent: lmms-eval records from process_results, aggregated by the task's functions per resample
    def raw(recs, key, meta=None):
        r = recs[key]
        doc = {"answer": r["target"], "question_id": str(r["doc_id"]), **(meta or {})}
        process = pope_utils.pope_process_results if key[0] != "mme" else mme_utils.mme_process_results
        return process(doc, [r["response"]])

    keys = sorted(set(records["m"]) & set(records["v"]))
    splits = [[k for k in keys if k[0] == s] for s in ("pope_adversarial", "pope_random")]
    diffs = []
    for b, draws in enumerate(_per_replicate([len(s) for s in splits], B, seed)):
        f1 = {run: np.mean([pope_utils.pope_aggregate_f1([raw(records[run], split[i])["pope_f1"] for i in idx])
                            for split, idx in zip(splits, draws)]) for run in ("m", "v")}
        diffs.append(f1["m"] - f1["v"])
    expected = np.percentile(diffs, [2.5, 97.5])
    full = {run: np.mean([pope_utils.pope_aggregate_f1([raw(records[run], k)["pope_f1"] for k in split]) for split in splits])
            for run in ("m", "v")}
    assert got_pope[0] == pytest.approx(full["m"] - full["v"])
    assert got_pope[1:] == pytest.approx(tuple(expected))

    # MME strata: per category (sorted), units = images (sorted); a drawn image keeps both questions
    images = {c: sorted({m["question_id"] for m in mme_meta.values() if m["category"] == c}) for c in ("color", "existence")}
    strata = [images["color"], images["existence"]]
    diffs = []
    for draws in _per_replicate([len(s) for s in strata], B, seed):
        total = {}
        for run in ("m", "v"):
            resampled = []
            for stratum, idx in zip(strata, draws):
                for j, i in enumerate(idx):  # a drawn image twice counts as two images: relabel it
                    for doc_id, m in mme_meta.items():
                        if m["question_id"] == stratum[i]:
                            rec = dict(raw(mme_records[run], ("mme", doc_id), m)["mme_total"], image=f"{stratum[i]}#{j}")
                            resampled.append(rec)
            total[run] = mme_utils.mme_aggregate_total(resampled)
        diffs.append(total["m"] - total["v"])
    assert got_mme[1:] == pytest.approx(tuple(np.percentile(diffs, [2.5, 97.5])))


def test_stored_score_fields_are_read_not_rederived():
    gqa = BENCH["GQA"]
    record = {"task": "gqa", "doc_id": 0, "target": "red", "response": "The red."}
    assert lb.score_sample(gqa, record) == {"correct": False, "score": 0.0}  # re-scored: LLaVA's rule
    stored = {**record, "scores": {"pred": "the red", "score": 1.0}}
    assert lb.score_sample(gqa, stored) == {"correct": True, "score": 1.0}  # what the run wrote is what counts
    vqa = {**record, "task": "textvqa_val", "scores": {"pred": "red", "score": 2 / 3}}
    assert lb.score_sample(BENCH["TextVQA"], vqa) == {"correct": False, "score": pytest.approx(2 / 3)}


def test_circular_bootstrap_groups_rotations():
    bench = BENCH["MMB"]
    # 3 questions x 2 rotations; run a misses one rotation of question 1, run b gets everything right
    def units(wrong):
        return {("mmbench_en_dev", i): lb.score_unit(bench, {"score": float(i not in wrong), "group": i // 2})
                for i in range(6)}

    boot = lb.PairedBootstrap(500, seed=0)
    a, b = units({3}), units(set())
    strata = lb.layout(bench, a, set(a))
    assert [len(unit) for unit in strata[0].units] == [2, 2, 2]
    diff, low, high = boot.difference(bench, a, b)
    assert diff == pytest.approx(-100 / 3)  # circular: 2 of 3 questions vs 3 of 3
    assert -100.0 <= low <= diff <= high <= 0.0


def test_circular_bootstrap_leaves_out_rotations_without_their_original():
    bench = BENCH["MMB"]
    # question 0 (original + copy, right), question 1 (its copy only, wrong), question 2 (original only, wrong)
    fields = [(0, False, 1.0), (0, True, 1.0), (1, True, 0.0), (2, False, 0.0)]
    units = {("mmbench_en_dev", i): lb.score_unit(bench, {"score": score, "group": group, "copy": copy})
             for i, (group, copy, score) in enumerate(fields)}
    strata = lb.layout(bench, units, set(units))
    assert [len(unit) for unit in strata[0].units] == [2, 1]  # question 1 is not counted, as VLMEvalKit
    diff, _, _ = lb.PairedBootstrap(50, seed=0).difference(bench, units, units)
    point = lb.replicate_scores(bench, strata, units, 1, 0)[0]
    assert point == pytest.approx(50.0) and diff == 0.0


def _per_replicate(sizes, B, seed):
    """lb.resample_indices' draws, one replicate at a time."""
    for chunk in lb.resample_indices(sizes, B, seed):
        for row in range(chunk[0].shape[0]):
            yield [idx[row] for idx in chunk]


def test_bootstrap_1000_is_vectorised_over_replicates(monkeypatch):
    """1000 replicates of 5000 samples are scored a chunk of replicates at a time (a few numpy calls, not one per
    replicate), and give the per-replicate loop's interval."""
    from harness.leaderboard import bootstrap

    calls = []
    counts = bootstrap._counts

    def counting(idx, n):
        calls.append(idx.shape)
        return counts(idx, n)

    monkeypatch.setattr(bootstrap, "_counts", counting)
    bench, a = scored("accuracy", list(np.random.default_rng(0).random(5000) < 0.7))
    _, b = scored("accuracy", list(np.random.default_rng(1).random(5000) < 0.8))
    diff, low, high = lb.PairedBootstrap(1000, 0).difference(bench, a, b)
    rows = bootstrap.MAX_DRAWS_PER_CHUNK // 5000  # 400 replicates a chunk
    assert calls == [(rows, 5000), (rows, 5000), (1000 - 2 * rows, 5000)] * 2  # 3 chunks for each run
    assert low < diff < high < 0
    right_a, right_b = (np.array([run[("t", i)]["correct"] for i in range(5000)], dtype=float) for run in (a, b))
    loop = [100 * (right_a[idx].mean() - right_b[idx].mean()) for (idx,) in _per_replicate([5000], 1000, 0)]
    assert (low, high) == pytest.approx(tuple(np.percentile(loop, [2.5, 97.5])))
