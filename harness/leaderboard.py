"""Leaderboard: every results.json below a runs dir -> one table per model + task suite (+ plots).

    python -m harness.leaderboard runs/multirun/paper_table-20261201-120000
    python -m harness.leaderboard runs/ --format latex --out docs/table.tex --plot docs/paper
    python -m harness.leaderboard runs/ --subset difficult --bootstrap 0

One row per (method, budget); vanilla first, then budget descending and method name, blind last.
Columns: each benchmark's headline score (with the paired bootstrap 95% CI of its difference to
vanilla), Avg (mean over the benchmarks present of score / vanilla score x 100), accuracy on the
"difficult" samples, the realized image tokens, prefill latency and speedup vs vanilla, and the
FLOPs reduction. A LLaVA-1.5-7B vanilla run is printed beside the published numbers (PUBLISHED),
with a warning for a gap over 1.5 points.

Per-sample scores are the score fields each sample got when it was evaluated (samples.jsonl
`scores`, from harness.scoring, the same functions behind the reported metrics), so a resampled
score is computed exactly like the reported one. Older samples without them are scored again by
their task's `process_results` (tasks/utils.py, tasks/shapes_utils.py, loaded by file path).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import json
import math
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
import yaml

from harness.results import load_records
from harness.scoring.mme import QUESTIONS_PER_IMAGE as MME_QUESTIONS_PER_IMAGE

TASKS_DIR = Path(__file__).resolve().parent.parent / "tasks"
REFERENCE = "vanilla"  # Avg, speedup and the CIs are relative to this method's run
BLIND = "blind"        # no image tokens: its own row at the end, outside the budgets
UNBUDGETED = (REFERENCE, BLIND)  # methods that ignore the budget (one row each)
DIFFICULT_REFERENCE = "pool"     # "difficult": vanilla right and this method (same budget) wrong
CI_LEVEL = 95.0
MAX_DRAWS_PER_CHUNK = 2_000_000  # bootstrap replicates are drawn in chunks of about this many indices


@dataclass(frozen=True)
class Benchmark:
    """A leaderboard column.

    Attributes:
        name: Column header.
        tasks: Its lmms-eval tasks; several are splits and the score is the mean of `metric` over
            those present (POPE: mean F1 of the three splits).
        metric: The headline metric in results.json `tasks.<task>.metrics`.
        kind: How a score is recomputed from the per-sample score fields: "accuracy" (mean of
            `score`, 0..1 per sample: exact match, VQA accuracy), "f1" (POPE F1, "yes" positive),
            "mme" (sum over categories of acc + acc+, acc+ per image) or "circular" (MMBench
            CircularEval: % of question groups with every rotation right).
    """

    name: str
    tasks: tuple[str, ...]
    metric: str
    kind: str


BENCHMARKS = (
    #          column              tasks (splits: mean over those present)                                 metric         kind
    Benchmark("GQA",              ("gqa",),                                                                "exact_match", "accuracy"),
    Benchmark("MME P+C",          ("mme",),                                                                "mme_total",   "mme"),
    Benchmark("POPE F1",          ("pope_adversarial", "pope_popular", "pope_random"),                     "pope_f1",     "f1"),
    Benchmark("MMB",              ("mmbench_en_dev",),                                                     "circular_accuracy", "circular"),
    Benchmark("MMB-CN",           ("mmbench_cn_dev",),                                                     "circular_accuracy", "circular"),
    Benchmark("SQA-IMG",          ("scienceqa_img",),                                                      "accuracy",    "accuracy"),
    Benchmark("TextVQA",          ("textvqa_val",),                                                        "vqa_accuracy", "accuracy"),
    Benchmark("TextVQA no OCR",   ("textvqa_val_no_ocr",),                                                 "vqa_accuracy", "accuracy"),
    Benchmark("VQAv2 val",        ("vqav2_val",),                                                          "vqa_accuracy", "accuracy"),
    Benchmark("SEED-IMG",         ("seedbench_img",),                                                      "seed_image",  "accuracy"),
    Benchmark("shapes GQA",       ("shapes_gqa",),                                                         "exact_match", "accuracy"),
    Benchmark("shapes MME",       ("shapes_mme",),                                                         "total",       "mme"),
    Benchmark("shapes POPE F1",   ("shapes_pope_random", "shapes_pope_popular", "shapes_pope_adversarial"), "f1",         "f1"),
)


@dataclass(frozen=True)
class Published:
    """A published vanilla LLaVA-1.5-7B score, compared with a run's own vanilla row.

    Attributes:
        bench: Leaderboard column it belongs to.
        task, metric: Where the run's number is in results.json.
        value: The published number.
        scale: Full scale of the metric (MME perception: 2000); differences are compared in points
            of 100 (1.5 points of MME P = 30).
        source: Where it is published.
    """

    bench: str
    task: str
    metric: str
    value: float
    source: str
    scale: float = 100.0


PUBLISHED_MODEL = "llava_1_5_7b"  # conf/model/llava_1_5_7b.yaml; only its vanilla row is compared
PUBLISHED_TOLERANCE = 1.5         # points (of 100); a larger gap is warned about
_ZOO = "LLaVA model zoo (haotian-liu/LLaVA docs/MODEL_ZOO.md, LLaVA-1.5 7B full_ft-1e)"
PUBLISHED = (
    Published("GQA", "gqa", "exact_match", 62.0, _ZOO),
    Published("MMB", "mmbench_en_dev", "circular_accuracy", 64.3, _ZOO),
    Published("MMB-CN", "mmbench_cn_dev", "circular_accuracy", 58.3, _ZOO),
    Published("MME P+C", "mme", "mme_perception", 1510.7, _ZOO + ", MME perception", scale=2000.0),
    Published("POPE F1", "pope", "pope_f1", 85.9, _ZOO),
    Published("SQA-IMG", "scienceqa_img", "accuracy", 66.8, _ZOO),
    Published("TextVQA", "textvqa_val", "vqa_accuracy", 58.2, _ZOO + ", with OCR tokens"),
    Published("VQAv2 val", "vqav2_val", "vqa_accuracy", 78.5, _ZOO + ", test-dev (server-scored; val here)"),
    Published("SEED-IMG", "seedbench_img", "seed_image", 66.1, "LLaVA-1.5 paper (Liu et al., CVPR 2024), SEED image"),
)


# ---------------------------------------------------------------- runs

@dataclass
class Run:
    """One run dir: its results.json and (lazily) its per-sample scores."""

    path: Path
    results: dict
    scored: dict = field(default_factory=dict)  # benchmark name -> {(task, doc_id): scored sample} | None
    _records: dict | None = None

    @property
    def method(self) -> str:
        return self.results["method"]

    @property
    def budget(self) -> int | None:
        return None if self.method in UNBUDGETED else self.results.get("budget")

    @property
    def suite(self) -> tuple[str, ...]:
        names = ((self.results.get("config") or {}).get("tasks") or {}).get("names")
        return tuple(names) if names else tuple(sorted(self.results.get("tasks", {})))

    def score(self, bench: Benchmark) -> float | None:
        """The headline score: mean of the metric over the benchmark's tasks present in this run."""
        values = [_number(self.results.get("tasks", {}).get(task, {}).get("metrics", {}).get(bench.metric))
                  for task in bench.tasks]
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else None

    def get(self, *keys):
        value = self.results
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return _number(value)

    def n_samples(self, tasks: tuple[str, ...] | None = None) -> tuple[int, int]:
        """(samples, failed samples) over the run's tasks (groups left out), or over `tasks`."""
        entries = self.results.get("tasks", {})
        names = [t for t in (tasks or entries) if t in entries and "subtasks" not in entries[t]]
        if tasks is None:  # results.json without group markers: a task whose name prefixes others is a group
            names = [t for t in names if not any(o.startswith(t + "_") for o in names)]
        return (sum(int(entries[t].get("n") or 0) for t in names), sum(int(entries[t].get("n_failed") or 0) for t in names))

    def samples(self) -> dict[tuple[str, int], dict]:
        """samples.jsonl as {(task, doc_id): record} (empty when the file is missing)."""
        if self._records is None:
            self._records = load_records(self.path / "samples.jsonl")[0]
        return self._records


def find_runs(root: Path, notes: Notes) -> list[Run]:
    """Every run below `root` with a readable results.json (newest `finished_at` per method/budget/model/suite)."""
    newest: dict[tuple, list[Run]] = defaultdict(list)
    for path in sorted(root.rglob("results.json")):
        if any(part.startswith(".") for part in path.relative_to(root).parts[:-1]):
            continue  # .submitit, hidden temp dirs
        try:
            results = json.loads(path.read_text())
            run = Run(path.parent, results)
            key = (run.results["model"], run.suite, run.method, run.budget)
        except (OSError, ValueError, KeyError, TypeError) as err:
            notes.add(f"skipped {path}: not a readable results.json ({type(err).__name__}: {err})")
            continue
        newest[key].append(run)
    runs = []
    for (model, _, method, budget), group in newest.items():
        group.sort(key=completeness)  # a run with a limit or fewer samples never shadows a complete one
        chosen, newest_run = group[-1], max(group, key=lambda r: str(r.results.get("finished_at") or ""))
        if len(group) > 1:
            why = f" ({method} ignores the budget)" if method in UNBUDGETED else ""
            where = "budget " + str(budget) if budget is not None else "any budget"
            rule = "the newest" if chosen is newest_run else "the most complete (no limit, most samples), not the newest"
            notes.add(f"{len(group)} runs of {method} at {where} for {model}{why}; using {rule}, "
                      f"{chosen.path} ({_extent(chosen)}, finished {chosen.results.get('finished_at')}); ignoring "
                      + ", ".join(f"{r.path} ({_extent(r)})" for r in group[:-1]))
        runs.append(chosen)
    return runs


def completeness(run: Run) -> tuple:
    """Sort key: runs without a limit, then more samples, then newer."""
    return (run.results.get("limit") is None, run.n_samples()[0], str(run.results.get("finished_at") or ""))


def _extent(run: Run) -> str:
    n, failed = run.n_samples()
    limit = run.results.get("limit")
    return f"{n} samples" + (f", limit={limit}" if limit is not None else "") + (f", {failed} failed" if failed else "")


def sort_key(run: Run) -> tuple:
    """vanilla first, then budget descending, then method name; blind last."""
    if run.method == REFERENCE:
        return (0, 0, run.method)
    if run.method == BLIND:
        return (2, 0, run.method)
    return (1, -(run.budget or 0), run.method)


# ---------------------------------------------------------------- per-sample scoring (the tasks' own functions)

class _TaskLoader(yaml.SafeLoader):
    """Reads lmms-eval task YAMLs; `!function utils.f` stays the string "utils.f"."""


_TaskLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


@cache
def task_config(task: str, tasks_dir: Path = TASKS_DIR) -> dict:
    """tasks/<task>.yaml with its `include:` merged in."""
    config = yaml.load((tasks_dir / f"{task}.yaml").read_text(), Loader=_TaskLoader)
    if "include" in config:
        base = yaml.load((tasks_dir / config.pop("include")).read_text(), Loader=_TaskLoader)
        config = {**base, **config}
    return config


@cache
def task_module(name: str, tasks_dir: Path = TASKS_DIR):
    """tasks/<name>.py loaded by file path (as lmms-eval's `!function` does)."""
    spec = importlib.util.spec_from_file_location(f"prunebench_tasks_{name}", tasks_dir / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def task_function(task: str, key: str):
    """The function a task YAML names under `key`, e.g. ("pope_random", "process_results")."""
    module, function = task_config(task)[key].rsplit(".", 1)
    return getattr(task_module(module), function)


def score_unit(bench: Benchmark, fields: dict) -> dict:
    """A sample's score fields (samples.jsonl `scores`) as the bootstrap's unit.

    Returns:
        {"correct": bool, "score": 0..1} and, by kind, "pred_yes"/"label_yes" (f1),
        "image"/"category" (mme) or "group" (circular).
    """
    value = float(fields["score"])
    out = {"correct": value == 1.0, "score": value}
    if bench.kind == "f1":
        out.update(pred_yes=fields["pred"] == "yes", label_yes=fields["label"] == "yes")
    elif bench.kind == "mme":
        out.update(image=str(fields["image"]), category=fields["category"])
    elif bench.kind == "circular":
        out.update(group=fields["group"])
    return out


def score_sample(bench: Benchmark, record: dict, meta: dict | None = None) -> dict:
    """One sample: its stored score fields, or (older samples.jsonl without them) scored again by
    its task's `process_results` from the target and response (GQA, MME, POPE only).

    Returns:
        `score_unit(bench, fields)`.
    """
    if record.get("scores"):
        return score_unit(bench, record["scores"])
    doc = {"answer": record["target"], "id": str(record["doc_id"]), "question_id": str(record["doc_id"]), **(meta or {})}
    value = task_function(record["task"], "process_results")(doc, [record.get("response") or ""])[bench.metric]
    if isinstance(value, dict) and "score" in value and ("pred" in value or "image" in value):
        return score_unit(bench, value)
    if bench.kind == "f1":
        pred, label = value.get("pred", value.get("prediction")), value.get("label", value.get("target"))
        return {"correct": pred == label, "pred_yes": pred == "yes", "label_yes": label == "yes"}
    if bench.kind == "mme":
        return {"correct": bool(value.get("correct", value.get("score"))), "image": value["question_id"],
                "category": value["category"]}
    return {"correct": bool(value.get("score", value.get("correct")) if isinstance(value, dict) else value)}


def scored_samples(run: Run, bench: Benchmark, notes: Notes) -> dict[tuple[str, int], dict] | None:
    """{(task, doc_id): scored unit} of a run's samples in this benchmark (None when they cannot be scored)."""
    if bench.name in run.scored:
        return run.scored[bench.name]
    mine = {key: r for key, r in run.samples().items() if r["task"] in bench.tasks and r.get("target") is not None}
    if not mine and run.score(bench) is not None:
        notes.add(f"{run.path}: no {bench.name} samples in samples.jsonl, so its CI and difficult-subset cells show —")
    scored, metas = {}, {}
    try:
        for (task, doc_id), record in sorted(mine.items()):
            meta = None
            if bench.kind == "mme" and not record.get("scores"):
                meta = _record_meta(record)
                if meta is None:
                    if task not in metas:
                        metas[task] = doc_meta(run, task)
                    meta = metas[task][doc_id]
            scored[(task, doc_id)] = score_sample(bench, record, meta)
    except Exception as err:  # noqa: BLE001 - a column shows "—" with the reason, the table still prints
        notes.add(f"{bench.name}: cannot score the samples of {run.path} per sample ({type(err).__name__}: {err}); "
                  "its CI and difficult-subset cells show —")
        scored = None
    run.scored[bench.name] = scored or None
    return run.scored[bench.name]


def _record_meta(record: dict) -> dict | None:
    """MME needs the image (question_id) and category of a sample: from the record when it has them."""
    meta = record.get("doc_meta") or record
    if "question_id" in meta and "category" in meta:
        return {"question_id": meta["question_id"], "category": meta["category"]}
    return None


def doc_meta(run: Run, task: str) -> list[dict]:
    """question_id and category of every doc of `task`, read from the dataset the run used."""
    config = task_config(task)
    data = ((run.results.get("config") or {}).get("tasks") or {}).get("data") or {}
    if isinstance(data, dict) and data.get("_target_"):
        from hydra.utils import instantiate

        data = instantiate(data)  # fixtures / shapes: returns the (already materialised) directories
    data = {str(k): str(v) for k, v in dict(data).items()}
    keys = [key for key in data if task == key or task.startswith(key + "_")]
    location = data[max(keys, key=len)] if keys else config["dataset_path"]
    return _dataset_columns(location, config.get("dataset_name"), config["test_split"], ("question_id", "category"))


@lru_cache(maxsize=8)
def _dataset_columns(location: str, name: str | None, split: str, columns: tuple[str, ...]) -> list[dict]:
    import datasets

    if Path(location).is_dir():
        dataset = datasets.load_from_disk(location)
        dataset = dataset[split] if isinstance(dataset, datasets.DatasetDict) else dataset
    else:
        dataset = datasets.load_dataset(location, name, split=split)
    return dataset.select_columns(list(columns)).to_list()


# ---------------------------------------------------------------- paired bootstrap

def resample_indices(sizes: list[int], replicates: int, seed: int):
    """Bootstrap draws, chunk by chunk: yields one [rows, n] index array per stratum of size n.

    The same (sizes, replicates, seed) always give the same draws, so two runs scored on the same
    samples share their resamples (that is what makes the bootstrap paired).
    """
    rng = np.random.default_rng(seed)
    chunk = max(1, MAX_DRAWS_PER_CHUNK // max(1, sum(sizes)))
    for start in range(0, replicates, chunk):
        rows = min(chunk, replicates - start)
        yield [rng.integers(0, n, size=(rows, n)) for n in sizes]


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    """[rows, n] draws -> [rows, n] how often each unit was drawn."""
    rows = idx.shape[0]
    flat = (idx + n * np.arange(rows)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(np.float64)


@dataclass
class Stratum:
    """Units resampled together: samples of a task, or (MME) the images of one category of a task."""

    task: str
    units: list[list[tuple[str, int]]]  # each unit = the sample keys it holds (one, or an image's questions)


def layout(bench: Benchmark, scored: dict, keys: set) -> list[Stratum]:
    """Strata and units over the paired sample keys (deterministic order)."""
    strata = []
    for task in bench.tasks:
        mine = sorted(k for k in keys if k[0] == task)
        if not mine:
            continue
        if bench.kind == "circular":  # a unit = every rotation of one question
            groups: dict = defaultdict(list)
            for key in mine:
                groups[scored[key]["group"]].append(key)
            strata.append(Stratum(task, [groups[g] for g in sorted(groups)]))
            continue
        if bench.kind != "mme":
            strata.append(Stratum(task, [[k] for k in mine]))
            continue
        images: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
        for key in mine:
            images[scored[key]["category"]][scored[key]["image"]].append(key)
        for category in sorted(images):
            strata.append(Stratum(task, [images[category][image] for image in sorted(images[category])]))
    return strata


def replicate_scores(bench: Benchmark, strata: list[Stratum], scored: dict, replicates: int, seed: int) -> tuple[float, np.ndarray]:
    """The benchmark score of one run on the paired samples, and on each of `replicates` resamples.

    Vectorised: each stratum's resamples are counts [B, n] of its units; a score is a linear
    function of the counts per stratum (sums of correct / TP / FP / FN / all-correct images).
    """
    arrays = []
    for stratum in strata:
        units = [[scored[k] for k in unit] for unit in stratum.units]
        arrays.append({
            "correct": np.array([sum(s.get("score", s["correct"]) for s in unit) for unit in units], dtype=np.float64),
            "questions": np.array([len(unit) for unit in units], dtype=np.float64),
            "all_correct": np.array([all(s["correct"] for s in unit) for unit in units], dtype=np.float64),
            "whole": np.array([len(unit) == MME_QUESTIONS_PER_IMAGE for unit in units], dtype=np.float64),
            "tp": np.array([sum(s.get("pred_yes", False) and s.get("label_yes", False) for s in u) for u in units], dtype=np.float64),
            "fp": np.array([sum(s.get("pred_yes", False) and not s.get("label_yes", False) for s in u) for u in units], dtype=np.float64),
            "fn": np.array([sum(not s.get("pred_yes", False) and s.get("label_yes", False) for s in u) for u in units], dtype=np.float64),
        })

    def score(counts: list[np.ndarray]) -> np.ndarray:  # counts: per stratum [B, n] -> [B]
        per_task: dict[str, list[np.ndarray]] = defaultdict(list)
        for stratum, c, a in zip(strata, counts, arrays):
            if bench.kind == "accuracy":
                value = 100.0 * (c @ a["correct"]) / c.sum(1)
            elif bench.kind == "f1":
                tp, fp, fn = c @ a["tp"], c @ a["fp"], c @ a["fn"]
                denominator = 2 * tp + fp + fn
                value = np.where(denominator > 0, 200.0 * tp / np.maximum(denominator, 1e-300), 0.0)
            elif bench.kind == "circular":  # % of questions with every rotation right
                value = 100.0 * (c @ a["all_correct"]) / c.sum(1)
            elif bench.kind == "mme":  # category score = acc (questions) + acc+ (images all correct)
                whole = c @ a["whole"]  # acc+ over images with both questions evaluated, as harness.scoring.mme
                acc_plus = np.where(whole > 0, 100.0 * (c @ (a["all_correct"] * a["whole"])) / np.maximum(whole, 1), 0.0)
                value = 100.0 * (c @ a["correct"]) / (c @ a["questions"]) + acc_plus
            else:
                raise ValueError(f"benchmark kind {bench.kind!r} is unknown (allowed: accuracy, f1, mme, circular)")
            per_task[stratum.task].append(value)
        totals = [np.sum(values, axis=0) if bench.kind == "mme" else values[0] for values in per_task.values()]
        return np.mean(totals, axis=0)  # splits: mean over the tasks present

    point = float(score([np.ones((1, len(s.units))) for s in strata])[0])
    sizes = [len(s.units) for s in strata]
    draws = [score([_counts(idx, n) for idx, n in zip(chunk, sizes)]) for chunk in resample_indices(sizes, replicates, seed)]
    return point, np.concatenate(draws) if draws else np.zeros(0)


class PairedBootstrap:
    """Paired bootstrap of score differences between runs scored on the same samples.

    Args:
        replicates: number of resamples B (0: off).
        seed: seed of the resamples (shared by every comparison: common random numbers).
    """

    def __init__(self, replicates: int, seed: int):
        self.replicates, self.seed = replicates, seed
        self._cache: dict[tuple, tuple[float, np.ndarray]] = {}

    def difference(self, bench: Benchmark, scored_a: dict, scored_b: dict) -> tuple[float, float, float] | None:
        """(a − b on the paired samples, CI low, CI high), pairing samples by (task, doc_id)."""
        keys = set(scored_a) & set(scored_b)
        if not keys or self.replicates <= 0:
            return None
        strata = layout(bench, scored_a, keys)
        signature = (bench.name, tuple(tuple(map(tuple, s.units)) for s in strata))
        point_a, draws_a = self._scores(bench, strata, scored_a, signature)
        point_b, draws_b = self._scores(bench, strata, scored_b, signature)
        low, high = np.percentile(draws_a - draws_b, [(100 - CI_LEVEL) / 2, 100 - (100 - CI_LEVEL) / 2])
        return point_a - point_b, float(low), float(high)

    def _scores(self, bench, strata, scored, signature):
        key = (id(scored), signature)
        if key not in self._cache:
            self._cache[key] = replicate_scores(bench, strata, scored, self.replicates, self.seed)
        return self._cache[key]


# ---------------------------------------------------------------- the table

@dataclass
class Row:
    run: Run
    scores: dict[str, float | None]                                  # benchmark -> score
    ci: dict[str, tuple[float, float, float] | None]                  # benchmark -> (diff, low, high) vs vanilla
    difficult: dict[str, tuple[float, int] | None]                   # benchmark or "all" -> (accuracy, n)
    avg: float | None = None
    speedup: float | None = None


@dataclass
class Table:
    model: str
    suite: tuple[str, ...]
    benchmarks: list[Benchmark]
    rows: list[Row]
    subset: str | None
    not_significant: list[str] = field(default_factory=list)  # "budget 64, GQA: fastv ~ random"
    published: list[str] = field(default_factory=list)        # vanilla vs the published LLaVA-1.5-7B numbers

    @property
    def title(self) -> str:
        return f"{self.model} — {', '.join(self.suite)}" + (" — difficult subset" if self.subset else "")

    @property
    def has_paper_tokens(self) -> bool:
        return any(r.run.get("tokens", "avg_vision_tokens_paper") is not None for r in self.rows)


def build_tables(runs: list[Run], subset: str | None, replicates: int, seed: int, notes: Notes) -> list[Table]:
    """One table per (model, task suite), rows sorted; `subset="difficult"` scores only the difficult samples."""
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        groups[(run.results["model"], run.suite)].append(run)
    bootstrap = PairedBootstrap(replicates if not subset else 0, seed)
    if subset and replicates:
        notes.add("--subset difficult: scores are accuracies on the subset; no bootstrap CIs")
    return [build_table(model, suite, sorted(group, key=sort_key), subset, bootstrap, notes)
            for (model, suite), group in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1]))]


def build_table(model: str, suite: tuple[str, ...], runs: list[Run], subset: str | None, bootstrap: PairedBootstrap,
                notes: Notes) -> Table:
    where = f"{model} / {', '.join(suite)}"
    present = {task for run in runs for task in run.results.get("tasks", {})}
    benchmarks = [b for b in BENCHMARKS if present.intersection(b.tasks)]
    if not benchmarks:
        notes.add(f"{where}: no known benchmark among tasks {sorted(present)} (add a line to BENCHMARKS in harness/leaderboard.py)")
    vanilla = next((r for r in runs if r.method == REFERENCE), None)
    if vanilla is None:
        notes.add(f"{where}: no {REFERENCE} run, so Avg, speedup, the CIs and the difficult subset are shown as —")

    def scored(run: Run, bench: Benchmark):
        return scored_samples(run, bench, notes)

    difficult_sets = difficult_subsets(runs, vanilla, benchmarks, scored, notes, where)
    if len(difficult_sets) > 1 and any(r.budget is None for r in runs):
        notes.add(f"{where}: {DIFFICULT_REFERENCE} ran at several budgets, so the difficult cells of "
                  f"{' and '.join(UNBUDGETED)} (no budget of their own) are —")
    rows = []
    for run in runs:
        ci, difficult = {}, {}
        for bench in benchmarks:
            ci[bench.name] = None
            if vanilla is not None and run is not vanilla and bootstrap.replicates > 0:
                a, b = scored(run, bench), scored(vanilla, bench)
                if a is not None and b is not None:
                    ci[bench.name] = bootstrap.difference(bench, a, b)
        budget = run.budget if run.budget is not None else _single_budget(difficult_sets)
        keys = difficult_sets.get(budget)
        if keys is not None:
            correct = {}
            for bench in benchmarks:
                mine = scored(run, bench) or {}
                bench_keys = [k for k in keys if k[0] in bench.tasks and k in mine]
                difficult[bench.name] = _accuracy([mine[k]["correct"] for k in bench_keys])
                correct.update({k: mine[k]["correct"] for k in bench_keys})
            difficult["all"] = _accuracy(list(correct.values()))
        if subset:
            scores = {b.name: (difficult.get(b.name) or (None, 0))[0] for b in benchmarks}
        else:
            scores = {b.name: run.score(b) for b in benchmarks}
        rows.append(Row(run, scores, ci, difficult))

    if vanilla is not None:
        reference = next(r for r in rows if r.run is vanilla)
        zero = [b.name for b in benchmarks if reference.scores[b.name] == 0]
        if zero:
            notes.add(f"{where}: Avg leaves out {', '.join(zero)} ({REFERENCE} scores 0 there)")
        prefill = vanilla.get("latency_ms", "prefill", "mean")
        for row in rows:
            ratios = [100.0 * row.scores[b.name] / reference.scores[b.name] for b in benchmarks
                      if row.scores[b.name] is not None and reference.scores[b.name]]
            row.avg = float(np.mean(ratios)) if ratios else None
            mine = row.run.get("latency_ms", "prefill", "mean")
            row.speedup = prefill / mine if prefill and mine else None

    table = Table(model, suite, benchmarks, rows, subset)
    table.published = published_comparison(model, vanilla, notes, where)
    if bootstrap.replicates > 0:
        table.not_significant = not_significant_pairs(runs, benchmarks, scored, bootstrap)
    return table


def published_comparison(model: str, vanilla: Run | None, notes: Notes, where: str) -> list[str]:
    """Lines "GQA: 61.2 vs published 62.0 (−0.8 points; source)" for a LLaVA-1.5-7B vanilla run; a gap
    over PUBLISHED_TOLERANCE points (of 100) also goes to the notes as a warning."""
    if model != PUBLISHED_MODEL or vanilla is None:
        return []
    lines = []
    for ref in PUBLISHED:
        measured = vanilla.get("tasks", ref.task, "metrics", ref.metric)
        if measured is None:
            continue
        gap = (measured - ref.value) * 100.0 / ref.scale
        label = ref.bench if ref.metric != "mme_perception" else "MME P"
        lines.append(f"{label}: {measured:.1f} vs published {ref.value:.1f} ({gap:+.1f} points; {ref.source})")
        if abs(gap) > PUBLISHED_TOLERANCE:
            notes.add(f"warning: {where}: vanilla {label} {measured:.1f} differs from the published {ref.value:.1f} by "
                      f"{gap:+.1f} points (more than {PUBLISHED_TOLERANCE}); check the prompt, split, OCR tokens and scorer")
    return lines


def difficult_subsets(runs, vanilla, benchmarks, scored, notes, where, reference=DIFFICULT_REFERENCE) -> dict[int, set]:
    """budget -> the sample keys vanilla answers correctly and `reference` at that budget answers wrongly."""
    pools = {r.budget: r for r in runs if r.method == reference}
    if vanilla is None:
        return {}
    if not pools:
        notes.add(f"{where}: no {reference} run, so the difficult subset (vanilla right, {reference} wrong) is —")
        return {}
    subsets = {}
    for budget, pool in pools.items():
        keys = set()
        for bench in benchmarks:
            v, p = scored(vanilla, bench), scored(pool, bench)
            if v is None or p is None:
                continue
            keys |= {k for k in v.keys() & p.keys() if v[k]["correct"] and not p[k]["correct"]}
        subsets[budget] = keys
    missing = sorted({r.budget for r in runs if r.budget is not None} - set(subsets))
    if missing:
        notes.add(f"{where}: no {reference} run at budget {', '.join(map(str, missing))}, so the difficult subset there is —")
    return subsets


def _single_budget(subsets: dict) -> int | None:
    """vanilla and blind have no budget: their difficult cell uses the one difficult set, if there is one."""
    return next(iter(subsets)) if len(subsets) == 1 else None


def not_significant_pairs(runs, benchmarks, scored, bootstrap) -> list[str]:
    """Pairs of methods at the same budget whose paired difference's CI contains 0, per benchmark."""
    by_budget = defaultdict(list)
    for run in runs:
        if run.budget is not None:
            by_budget[run.budget].append(run)
    pairs = []
    for budget in sorted(by_budget, reverse=True):
        group = sorted(by_budget[budget], key=lambda r: r.method)
        for bench in benchmarks:
            same = []
            for i, a in enumerate(group):
                for b in group[i + 1:]:
                    sa, sb = scored(a, bench), scored(b, bench)
                    result = bootstrap.difference(bench, sa, sb) if sa and sb else None
                    if result is not None and result[1] <= 0 <= result[2]:
                        same.append(f"{a.method} ~ {b.method}")
            if same:
                pairs.append(f"budget {budget}, {bench.name}: {'; '.join(same)}")
    return pairs


def _accuracy(correct: list[bool]) -> tuple[float | None, int]:
    """(% correct, n); an empty subset is (None, 0)."""
    return (100.0 * sum(correct) / len(correct) if correct else None, len(correct))


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


# ---------------------------------------------------------------- formats

MISSING = {"markdown": "—", "latex": "--", "csv": ""}
FAILED_MARK = {"markdown": " †", "latex": "$^\\dagger$", "csv": ""}  # a benchmark cell with failed samples


def _signed(x: float, fmt: str) -> str:
    text = f"{x:+.1f}" if fmt == "markdown" else f"{x:.1f}"
    return text.replace("-", "−") if fmt == "markdown" else f"${text}$"


def _cells(table: Table, row: Row, fmt: str) -> list[str]:
    missing = MISSING[fmt]

    def num(value, spec=".1f", suffix=""):
        return missing if value is None else f"{value:{spec}}{suffix}"

    run = row.run
    cells = [run.method, missing if run.budget is None else str(run.budget)]
    for bench in table.benchmarks:
        score, ci = row.scores[bench.name], row.ci.get(bench.name)
        text = num(score)
        if table.subset and row.difficult.get(bench.name):
            text += f" (n={row.difficult[bench.name][1]})"
        if ci is not None and score is not None:
            diff, low, high = ci
            inner = f"{_signed(diff, fmt)} [{_signed(low, fmt)}, {_signed(high, fmt)}]"
            text += f" ({inner})" if fmt == "markdown" else f" {{\\scriptsize ({inner})}}"
        failed = run.n_samples(bench.tasks)[1]
        cells.append(text + (FAILED_MARK[fmt] if failed else ""))
    cells.append(num(row.avg))
    if not table.subset:
        hard = row.difficult.get("all")
        cells.append(missing if hard is None else f"{num(hard[0])} (n={hard[1]})")
    cells.append(num(run.get("tokens", "avg_vision_tokens") if run.method != BLIND else 0.0))
    if table.has_paper_tokens:
        cells.append(num(run.get("tokens", "avg_vision_tokens_paper")))
    cells.append(num(run.get("latency_ms", "prefill", "mean")))
    cells.append(num(row.speedup, ".2f", "×" if fmt == "markdown" else "$\\times$"))
    reduction = run.get("flops", "reduction")
    cells.append(num(None if reduction is None else 100 * reduction, ".1f", "%" if fmt == "markdown" else "\\%"))
    n, failed = run.n_samples()
    limit = run.results.get("limit")
    cells.append(f"{n}" + (f" (limit {limit})" if limit is not None else "") + (f" ({failed} failed)" if failed else ""))
    return cells


def _header(table: Table, fmt: str) -> list[str]:
    head = ["Method", "Budget", *[b.name for b in table.benchmarks], "Avg"]
    if not table.subset:
        head.append("Difficult")
    head.append("Tokens")
    if table.has_paper_tokens:
        head.append("Tokens (paper)")
    head += ["Prefill ms", "Speedup", "FLOPs ↓" if fmt == "markdown" else "FLOPs $\\downarrow$", "n"]
    return head


def _legend(table: Table, replicates: int) -> list[str]:
    lines = []
    if table.subset:
        lines.append(f"Accuracy (%) on the difficult samples ({REFERENCE} right, {DIFFICULT_REFERENCE} at the same budget "
                     "wrong); n = their number.")
    else:
        if replicates > 0 and any(ci for row in table.rows for ci in row.ci.values()):
            lines.append(f"Score (paired difference to {REFERENCE} [{CI_LEVEL:.0f}% CI], paired bootstrap over samples, "
                         f"B={replicates}).")
        lines.append(f"Avg: mean over the benchmarks present ({', '.join(b.name for b in table.benchmarks)}) of score / "
                     f"{REFERENCE} score × 100. Difficult: accuracy on the samples "
                     f"{REFERENCE} answers correctly and {DIFFICULT_REFERENCE} at the same budget does not (n = their "
                     "number). Tokens: realized mean image tokens per layer.")
    if table.published:
        lines.append(f"{REFERENCE} vs the published LLaVA-1.5-7B numbers (a gap over {PUBLISHED_TOLERANCE} points is warned about):")
        lines += [f"- {line}" for line in table.published]
    if any(row.run.n_samples()[1] for row in table.rows):
        lines.append("†: some samples of this benchmark failed (n counts them; their `error` is in "
                     "samples.jsonl) and the score treats them as wrong answers.")
    if any(row.run.results.get("limit") is not None for row in table.rows):
        lines.append("n: samples of the run; (limit L): only the first L samples of each task ran, not the whole benchmark.")
    if table.not_significant:
        lines.append("Not significantly different (the CI of the paired difference contains 0):")
        lines += [f"- {pair}" for pair in table.not_significant]
    return lines


def to_markdown(tables: list[Table], replicates: int) -> str:
    out = []
    for table in tables:
        head = _header(table, "markdown")
        out += [f"### {table.title}", "", "| " + " | ".join(head) + " |",
                "| " + " | ".join(["---", "---"] + ["---:"] * (len(head) - 2)) + " |"]
        out += ["| " + " | ".join(_cells(table, row, "markdown")) + " |" for row in table.rows]
        out += [""] + [f"{line}" for line in _legend(table, replicates)] + [""]
    return "\n".join(out)


def _latex_escape(text: str) -> str:
    for char in "&%_#$":
        text = text.replace(char, "\\" + char)
    return text.replace("—", "---")


def to_latex(tables: list[Table], replicates: int) -> str:
    out = []
    for table in tables:
        head = _header(table, "latex")
        out += ["\\begin{table}[t]", "\\centering", "\\small",
                f"\\caption{{{_latex_escape(table.title)}}}",
                "\\begin{tabular}{ll" + "r" * (len(head) - 2) + "}", "\\toprule",
                " & ".join(_latex_escape(h) if "$" not in h else h for h in head) + " \\\\", "\\midrule"]
        previous = None
        for row in table.rows:
            group = (sort_key(row.run)[0], row.run.budget)
            if previous is not None and group != previous:
                out.append("\\midrule")
            previous = group
            cells = _cells(table, row, "latex")
            out.append(" & ".join([_latex_escape(cells[0])] + cells[1:]) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}"]
        out += [f"% {_latex_escape(line)}" for line in _legend(table, replicates)]
        out += ["\\end{table}", ""]
    return "\n".join(out)


def _slug(name: str) -> str:
    return name.lower().replace("+", "").replace(" ", "_").replace("__", "_")


def to_csv(tables: list[Table], replicates: int) -> str:
    benchmarks = [b for b in BENCHMARKS if any(b in t.benchmarks for t in tables)]
    head = ["model", "tasks", "method", "budget"]
    for bench in benchmarks:
        slug = _slug(bench.name)
        head += [slug, f"{slug}_diff", f"{slug}_ci_low", f"{slug}_ci_high", f"{slug}_difficult_acc", f"{slug}_difficult_n"]
    head += ["avg", "difficult_acc", "difficult_n", "tokens", "tokens_paper", "prefill_ms", "speedup",
             "flops_reduction_pct", "n", "n_failed", "limit", "run_dir"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(head)
    for table in tables:
        for row in table.rows:
            run = row.run
            values = [table.model, " ".join(table.suite), run.method, run.budget]
            for bench in benchmarks:
                ci = row.ci.get(bench.name) or (None, None, None)
                hard = row.difficult.get(bench.name) or (None, None)
                values += [row.scores.get(bench.name), *ci, *hard]
            hard = row.difficult.get("all") or (None, None)
            reduction = run.get("flops", "reduction")
            values += [row.avg, *hard, 0.0 if run.method == BLIND else run.get("tokens", "avg_vision_tokens"),
                       run.get("tokens", "avg_vision_tokens_paper"), run.get("latency_ms", "prefill", "mean"),
                       row.speedup, None if reduction is None else 100 * reduction, *run.n_samples(),
                       run.results.get("limit"), str(run.path)]
            writer.writerow(["" if v is None else (f"{v:.6g}" if isinstance(v, float) else v) for v in values])
    return buffer.getvalue()


# ---------------------------------------------------------------- plots

def plot(tables: list[Table], prefix: str) -> list[Path]:
    """PREFIX_budget.png (accuracy vs budget per method) and PREFIX_latency.png (accuracy vs prefill latency)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = [Path(f"{prefix}_budget.png"), Path(f"{prefix}_latency.png")]
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    for path, kind in zip(paths, ("budget", "latency")):
        fig, axes = plt.subplots(1, len(tables), figsize=(6.4 * len(tables), 4.6), squeeze=False)
        for ax, table in zip(axes[0], tables):
            _plot_table(ax, table, kind)
        fig.tight_layout()
        fig.savefig(path, dpi=150, bbox_inches="tight")
        plt.close(fig)
    return paths


def _plot_table(ax, table: Table, kind: str) -> None:
    use_avg = any(r.avg is not None for r in table.rows)
    label = f"Avg (% of {REFERENCE})" if use_avg else (table.benchmarks[0].name if table.benchmarks else "score")
    if table.subset and not use_avg:
        label += " (difficult subset)"

    def value(row: Row):
        if use_avg:
            return row.avg
        return row.scores.get(table.benchmarks[0].name) if table.benchmarks else None

    palette = matplotlib_colors()
    methods = sorted({r.run.method for r in table.rows if r.run.method not in UNBUDGETED})
    color = {method: next(palette) for method in methods} | {REFERENCE: "black", BLIND: "dimgray"}
    if kind == "budget":
        by_method = defaultdict(list)
        for row in table.rows:
            if row.run.budget is not None and value(row) is not None:
                by_method[row.run.method].append((row.run.budget, value(row)))
        for method in methods:
            points = sorted(by_method[method])
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method, color=color[method])
        for row in table.rows:
            if row.run.budget is None and value(row) is not None:
                method = row.run.method
                ax.axhline(value(row), linestyle="--" if method == REFERENCE else ":", color=color[method],
                           label=f"{method} ({'all 576' if method == REFERENCE else '0'} image tokens)")
        budgets = sorted({r.run.budget for r in table.rows if r.run.budget is not None})
        if budgets:
            ax.set_xticks(budgets)
        ax.set_xlabel("budget (average image tokens per layer)")
        ax.set_title(f"{label} vs budget\n{table.title}", fontsize=10)
    else:
        seen = set()
        for row in table.rows:
            x, y = row.run.get("latency_ms", "prefill", "mean"), value(row)
            if x is None or y is None:
                continue
            method = row.run.method
            marker = {REFERENCE: "*", BLIND: "X"}.get(method, "o")
            ax.scatter([x], [y], marker=marker, s=140 if marker == "*" else 50, zorder=3, color=color[method],
                       label=None if method in seen else method)
            seen.add(method)
            name = method if row.run.budget is None else f"{method}@{row.run.budget}"
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set_xlabel("prefill latency, mean (ms)")
        ax.set_title(f"{label} vs prefill latency\n{table.title}", fontsize=10)
    ax.set_ylabel(label)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)


def matplotlib_colors():
    import matplotlib.pyplot as plt

    while True:
        yield from plt.rcParams["axes.prop_cycle"].by_key()["color"]


# ---------------------------------------------------------------- CLI

class Notes:
    """Messages for stderr, each printed once."""

    def __init__(self):
        self.lines: list[str] = []

    def add(self, line: str) -> None:
        if line not in self.lines:
            self.lines.append(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.leaderboard", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, help="a runs dir; every results.json below it is read (multirun dirs too)")
    parser.add_argument("--format", choices=("markdown", "latex", "csv"), default="markdown")
    parser.add_argument("--out", type=Path, help="write the table here instead of stdout")
    parser.add_argument("--plot", metavar="PREFIX", help="also write PREFIX_budget.png and PREFIX_latency.png")
    parser.add_argument("--subset", choices=("difficult",),
                        help=f"score only the samples {REFERENCE} answers correctly and {DIFFICULT_REFERENCE} "
                             "(same budget) does not")
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="B",
                        help="paired bootstrap resamples for the CIs (0: no CIs)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples")
    args = parser.parse_args(argv)
    if args.bootstrap < 0:
        parser.error(f"--bootstrap={args.bootstrap} is not allowed (allowed: 0 or a positive number of resamples)")
    if not args.runs.is_dir():
        print(f"error: runs dir {args.runs} is not a directory", file=sys.stderr)
        return 2

    notes = Notes()
    runs = find_runs(args.runs, notes)
    if not runs:
        for line in notes.lines:
            print(f"note: {line}", file=sys.stderr)
        print(f"error: no results.json below {args.runs}", file=sys.stderr)
        return 2
    tables = build_tables(runs, args.subset, args.bootstrap, args.seed, notes)
    render = {"markdown": to_markdown, "latex": to_latex, "csv": to_csv}[args.format]
    text = render(tables, 0 if args.subset else args.bootstrap)
    for line in notes.lines:
        print(f"note: {line}", file=sys.stderr)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    if args.plot:
        for table in tables:
            if not any(r.avg is not None for r in table.rows) and table.benchmarks:
                print(f"note: {table.title}: no Avg (run method=vanilla first), so the plots show "
                      f"{table.benchmarks[0].name} instead", file=sys.stderr)
        for path in plot(tables, args.plot):
            print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
