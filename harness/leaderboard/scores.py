"""Per-sample scores: the score fields each sample stored, or (older samples) its task's own `process_results`;
a failed sample (its `error` set) is a wrong answer."""

from __future__ import annotations

import importlib.util
from functools import cache, lru_cache
from pathlib import Path

import yaml

from harness.benchmarks import benchmark_for
from harness.leaderboard.benchmarks import Column
from harness.leaderboard.runs import Notes, Run

TASKS_DIR = Path(__file__).resolve().parents[2] / "tasks"


class _TaskLoader(yaml.SafeLoader):
    """Reads lmms-eval task YAMLs; `!function utils.f` stays the string "utils.f"."""


_TaskLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def task_yaml(task: str, tasks_dir: Path = TASKS_DIR) -> Path:
    """tasks/<benchmark>/<task>.yaml, the folder named by the task's record (harness/benchmarks.py)."""
    bench = benchmark_for(task)
    if bench is None:
        raise ValueError(f"task {task!r} belongs to no benchmark of harness/benchmarks.py")
    return tasks_dir / bench.name / f"{task}.yaml"


@cache
def task_config(task: str, tasks_dir: Path = TASKS_DIR) -> dict:
    """tasks/<benchmark>/<task>.yaml with its `include:` (a file beside it) merged in."""
    path = task_yaml(task, tasks_dir)
    config = yaml.load(path.read_text(), Loader=_TaskLoader)
    if "include" in config:
        base = yaml.load((path.parent / config.pop("include")).read_text(), Loader=_TaskLoader)
        config = {**base, **config}
    return config


@cache
def task_module(path: Path):
    """A hook file (tasks/<benchmark>/utils.py) loaded by file path (as lmms-eval's `!function` does)."""
    spec = importlib.util.spec_from_file_location(f"prunebench_tasks_{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def task_function(task: str, key: str):
    """The function a task YAML names under `key`, e.g. ("pope_random", "process_results"), from the
    hook file beside the YAML."""
    module, function = task_config(task)[key].rsplit(".", 1)
    return getattr(task_module(task_yaml(task).parent / f"{module}.py"), function)


def score_unit(bench: Column, fields: dict) -> dict:
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
        out.update(group=fields["group"], copy=bool(fields.get("copy", False)))
    return out


DOC_FIELDS = {"accuracy": (), "f1": ("label_yes",), "mme": ("image", "category"), "circular": ("group",)}  # a unit's doc


def failed_unit(bench: Column, record: dict, meta: dict | None = None) -> dict:
    """A failed sample (`error` set) as a wrong answer (score 0), whatever its `scores` say: on POPE the
    prediction opposite to the label. The doc's fields it lacks (it failed before its doc opened) are
    filled by `fill_failed` from a run that has that doc."""
    fields = record.get("scores") if isinstance(record.get("scores"), dict) else {}
    unit = {"correct": False, "score": 0.0, "failed": True}
    if bench.kind == "f1":
        label = fields.get("label", record.get("target"))
        if label is not None:
            label_yes = str(label).lower().strip() == "yes"
            unit.update(label_yes=label_yes, pred_yes=not label_yes)
    elif bench.kind == "mme":
        image, category = fields.get("image", (meta or {}).get("question_id")), fields.get("category", (meta or {}).get("category"))
        if image is not None and category is not None:
            unit.update(image=str(image), category=category)
    elif bench.kind == "circular" and "group" in fields:
        unit.update(group=fields["group"], copy=bool(fields.get("copy", False)))
    return unit


def fill_failed(bench: Column, runs_scored: list[dict | None]) -> list[tuple[str, int]]:
    """Fill the doc fields (POPE label, MME image and category, MMBench group) that failed samples lack from
    any run that has the doc, in place; failed samples no run can place are left out.

    Returns:
        The keys left out.
    """
    needed = DOC_FIELDS[bench.kind]
    if not needed:
        return []
    known = {}
    for scored in filter(None, runs_scored):
        for key, unit in scored.items():
            if key not in known and all(f in unit for f in needed):
                known[key] = {f: unit[f] for f in needed}
    dropped = []
    for scored in filter(None, runs_scored):
        for key in [k for k, unit in scored.items() if not all(f in unit for f in needed)]:
            if key in known:
                scored[key].update(known[key])
                if bench.kind == "f1":
                    scored[key]["pred_yes"] = not scored[key]["label_yes"]
            else:
                del scored[key]
                dropped.append(key)
    return sorted(set(dropped))


def score_sample(bench: Column, record: dict, meta: dict | None = None) -> dict:
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


def scored_samples(run: Run, bench: Column, notes: Notes) -> dict[tuple[str, int], dict] | None:
    """{(task, doc_id): scored unit} of a run's samples in this benchmark (None when they cannot be scored)."""
    if bench.name in run.scored:
        return run.scored[bench.name]
    mine = {key: r for key, r in run.samples(notes).items()
            if r["task"] in bench.tasks and (r.get("target") is not None or r.get("error") is not None)}
    if not mine and run.score(bench) is not None:
        notes.add(f"{run.path}: no {bench.name} samples in samples.jsonl, so its CI and difficult-subset cells show — "
                  "(and it is paired with the reference only by results.json's sample counts)")
    scored, metas = {}, {}
    try:
        for (task, doc_id), record in sorted(mine.items()):
            if record.get("error") is not None:  # a wrong answer; its doc fields from the record, or `fill_failed`
                scored[(task, doc_id)] = failed_unit(bench, record, _record_meta(record))
                continue
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
