"""Our lmms-eval tasks (tasks/<benchmark>/*.yaml), with the dataset location chosen at run time.

    manager = task_manager()
    specs = task_specs(["gqa", "mme", "pope"], {"gqa": "/data/gqa", "pope": "lmms-lab/POPE"}, manager)
    simple_evaluate(model=lm, tasks=specs, task_manager=manager)    # or load_tasks(...) to inspect

A data location is a hub id (the YAML default is the official one) or a local directory saved with
`DatasetDict.save_to_disk` (see each YAML's header and harness/fixtures.py). A local directory must
hold the task's split with the columns its hooks read (COLUMNS, from the records of harness/benchmarks.py), else one error names what is missing,
before the model loads. lmms-eval 0.7.3 merges a task config dict `{"task": name, **overrides}` over
the registered YAML, so nothing is edited on disk.
"""

import shutil
import sys
from pathlib import Path

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lmms_eval.tasks import TaskManager, get_task_dict
from lmms_eval.utils import load_yaml_config
from omegaconf import DictConfig, OmegaConf

from harness.benchmarks import BENCHMARKS, longest_prefix
from harness.generated import read_marker

TASKS_DIR = Path(__file__).resolve().parent.parent / "tasks"


def data_locations(config, cache: str | Path | None = None) -> dict[str, str]:
    """`{task or prefix: location}` from a config's `tasks.data`: a mapping, or a `_target_` that
    materialises the data (e.g. the shapes suite) and returns one.

    Every local location is opened once here. A damaged dataset that the harness generated (a file
    truncated or deleted in the cache; its folder holds the marker of harness.generated) is removed and
    generated again; a damaged one the user gave is an error naming it.

    Raises:
        ValueError: the cache dir is not writable (naming it and `PRUNEBENCH_CACHE`), or a given
            dataset dir cannot be read.
    """
    generated = OmegaConf.is_dict(config) and "_target_" in config
    data = _materialise(config, cache)
    for key, location in data.items():
        if not Path(location).is_dir():
            continue
        problem = damage(location)
        if problem and generated and read_marker(location) is not None:  # never a folder the harness did not create
            print(f"warning: the generated dataset {location} is damaged ({problem}); generating it again",
                  file=sys.stderr)
            shutil.rmtree(location)
            data = _materialise(config, cache)
            problem = damage(data[key])
        if problem:
            raise ValueError(f"tasks.data.{key}={location!r} cannot be read as a saved dataset ({problem})")
    return data


def _materialise(config, cache) -> dict[str, str]:
    try:
        data = instantiate(config)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, OSError) and not isinstance(cause, FileNotFoundError):  # not writable, not a dir, full
            raise ValueError(
                f"cannot write the dataset cache {cause.filename or cache} ({cause.strerror}); set PRUNEBENCH_CACHE "
                f"(paths.cache, now {cache}) to a writable directory"
            ) from cause
        raise
    return {str(k): str(v) for k, v in (OmegaConf.to_container(data) if isinstance(data, DictConfig) else data).items()}


def damage(location: str | Path) -> str | None:
    """None if `location` opens with `datasets.load_from_disk` (every file present and readable), else why not."""
    import datasets

    try:
        loaded = datasets.load_from_disk(str(location))
        for split in loaded.values() if isinstance(loaded, datasets.DatasetDict) else [loaded]:
            split.data.validate()
    except Exception as exc:  # noqa: BLE001 - any failure to open means damaged
        return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
    return None


def task_manager(include_path: str | Path = TASKS_DIR) -> TaskManager:
    """A TaskManager that indexes only our YAMLs, tasks/<benchmark>/*.yaml (it walks the folder tree; the wheel's
    default index is unreliable offline)."""
    return TaskManager(include_path=str(include_path), include_defaults=False)


def _key_for(name: str, table) -> str | None:
    """`name` if it is a key of `table`, else the longest key that is a prefix of it ("pope" covers
    "pope_random"), else None."""
    return longest_prefix(name, table)


def location_for(name: str, data: dict[str, str]) -> str | None:
    """The data location of task `name`: its own key in `data`, else the longest key that is a
    prefix of it ("pope" covers "pope_random"), else None (the YAML default)."""
    key = _key_for(name, data)
    return data[key] if key is not None else None


def is_local(location: str) -> bool:
    """True for a local directory, False for a hub id; a missing path-like location is an error."""
    path = Path(location).expanduser()
    if path.is_dir():
        return True
    if location.startswith(("/", ".", "~")):
        raise FileNotFoundError(f"data location {location!r} is not a directory (give a local directory or a hub id)")
    return False


# The columns each task reads from a doc (its hooks in tasks/<benchmark>/utils.py, harness.scoring, its YAML's
# doc_to_target, the `image` column `lazy_images` re-types), by task name or prefix, from each benchmark's record.
# A local dataset lacking one is refused when it is located, before the model loads (`check_columns`).
COLUMNS: dict[str, tuple[str, ...]] = {key: columns for bench in BENCHMARKS for key, columns in bench.data_columns.items()}
GQA_IMAGE_COLUMNS = ("id", "image")  # <GQA dir>/testdev_balanced_images, split testdev (tasks/gqa/utils.py)


def schema(name: str) -> list[str] | None:
    """The columns of the schema task `name` expects: the hub dataset's, as harness/fixtures.py writes it
    (the embedded suite's for shapes tasks); None for a task without one."""
    from harness import fixtures

    if name.startswith("shapes_"):
        from harness.shapes.data import _features

        return list(_features(name.split("_")[1]))
    features = fixtures.features(name)
    return list(features) if features is not None else None


def how_to_save(yaml_path: str | Path) -> str:
    """What the header of a task YAML (or of the YAML it includes) says about saving a local copy."""
    path = Path(yaml_path)
    while True:
        text = path.read_text().splitlines()
        header = [line.lstrip("#").strip() for line in text if line.startswith("#")]
        lines = [line.split("Local copy:", 1)[-1].strip() for line in header if "save_to_disk" in line]
        if lines:
            return "; ".join(lines)
        include = next((line.split(":", 1)[1].strip() for line in text if line.startswith("include:")), None)
        if include is None:
            return ""
        path = path.parent / include


def check_columns(name: str, config: dict, location: str, key: str, yaml_path: str | Path) -> None:
    """Refuse a local dataset without the split or a column that task `name` reads: one error naming the
    dataset dir, the split, the missing columns and the expected schema (harness/fixtures.py, the YAML header).

    Args:
        name: the task. config: its YAML config. location: its local data directory.
        key: the `tasks.data` key that gave `location`. yaml_path: the task's YAML (for its header).

    Raises:
        ValueError: the saved data is not a DatasetDict, lacks the task's split, or lacks columns of COLUMNS.
    """
    import datasets

    columns_key = _key_for(name, COLUMNS)
    if columns_key is None:
        return
    split = config.get("test_split")
    wanted = [(Path(location), COLUMNS[columns_key], schema(name))]
    if name == "gqa":  # its images are a second dataset inside the GQA dir (tasks/gqa/utils.py gqa_images)
        from harness.fixtures import GQA_IMAGE_FEATURES, GQA_IMAGES_DIR

        wanted.append((Path(location) / GQA_IMAGES_DIR, GQA_IMAGE_COLUMNS, list(GQA_IMAGE_FEATURES)))
    for path, needed, expected in wanted:
        problem = None
        try:
            saved = datasets.load_from_disk(str(path))
        except FileNotFoundError:
            problem = f"{path} is missing"
        except Exception as exc:  # noqa: BLE001 - unreadable: named with its cause
            cause = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
            problem = f"{path} cannot be read as a saved dataset ({cause})"
        else:
            if not isinstance(saved, datasets.DatasetDict):
                problem = f"{path} holds a Dataset saved alone, not a DatasetDict with split {split!r}"
            elif split not in saved:
                problem = f"{path} has no split {split!r} (its splits: {', '.join(saved)})"
            else:
                missing = [c for c in needed if c not in saved[split].column_names]
                if missing:
                    problem = f"split {split!r} of {path} lacks the column(s) {', '.join(missing)} that {name} reads"
        if problem:
            save = how_to_save(yaml_path)
            raise ValueError(f"tasks.data.{key}={location!r}: {problem} (expected schema: columns "
                             f"{', '.join(expected or needed)}; see the header of {_shown(yaml_path)}"
                             f"{': ' + save if save else ''})")


def _shown(path: str | Path) -> str:
    """`path` relative to the repository (tasks/pope/pope_random.yaml) when it is inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(TASKS_DIR.parent)) if path.is_relative_to(TASKS_DIR.parent) else str(path)


def data_overrides(config: dict, location: str) -> dict:
    """Config keys that point a task at `location`.

    Args:
        config: The task's YAML config.
        location: Hub id or local directory.

    Returns:
        dataset_path, dataset_kwargs (`load_from_disk: true` for a directory), and
        lmms_eval_specific_kwargs with `default.data = location` when the task reads a second
        dataset from there (GQA's images).
    """
    kwargs = {k: v for k, v in (config.get("dataset_kwargs") or {}).items() if k != "load_from_disk"}
    dataset_kwargs = {"load_from_disk": True} if is_local(location) else kwargs
    overrides = {"dataset_path": str(location), "dataset_kwargs": dataset_kwargs}
    specific = config.get("lmms_eval_specific_kwargs") or {}
    if "data" in specific.get("default", {}):
        overrides["lmms_eval_specific_kwargs"] = {**specific, "default": {**specific["default"], "data": str(location)}}
    return overrides


def task_spec(name: str, data: dict[str, str], manager: TaskManager) -> str | dict:
    """`name` if it keeps its YAML's data, else a config dict lmms-eval merges over the YAML.

    A group becomes its group config with each subtask replaced by its own spec, so the group's
    aggregate metrics survive.
    """
    if name not in manager.task_index:
        raise ValueError(f"task {name!r} is not in {manager.include_path} (known: {manager.all_tasks})")
    config = load_yaml_config(manager.task_index[name]["yaml_path"], mode="simple")
    if isinstance(config.get("task"), list):  # a group
        subtasks = [task_spec(sub, data, manager) if isinstance(sub, str) else sub for sub in config["task"]]
        return name if subtasks == config["task"] else {**config, "task": subtasks}
    key = _key_for(name, data)
    if key is None:
        return name
    location = data[key]
    if is_local(location):
        check_columns(name, config, location, key, manager.task_index[name]["yaml_path"])
    return {"task": name, **data_overrides(config, location)}


def task_specs(
    names: list[str], data: dict[str, str] | None = None, manager: TaskManager | None = None
) -> list[str | dict]:
    """Specs for `simple_evaluate(tasks=...)` / `get_task_dict`.

    Args:
        names: Task or group names from tasks/<benchmark>/.
        data: {task name or prefix: hub id or local directory}; missing tasks use their YAML default.
        manager: From `task_manager()`; pass the same one to `simple_evaluate`.
    """
    manager = manager or task_manager()
    return [task_spec(name, data or {}, manager) for name in names]


def load_tasks(names: list[str], data: dict[str, str] | None = None, manager: TaskManager | None = None) -> dict:
    """Build the tasks (datasets loaded) as lmms-eval does.

    Args:
        names: Task or group names from tasks/.
        data: {task name or prefix: hub id or local directory}.
        manager: A TaskManager over tasks/ (default: `task_manager()`).

    Returns:
        lmms-eval's task dict: {task name: Task} and {ConfigurableGroup: {task name: Task}} for groups.
    """
    manager = manager or task_manager()
    return get_task_dict(task_specs(names, data, manager), manager)
