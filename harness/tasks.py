"""Our lmms-eval tasks (tasks/*.yaml), with the dataset location chosen at run time.

    manager = task_manager()
    specs = task_specs(["gqa", "mme", "pope"], {"gqa": "/data/gqa", "pope": "lmms-lab/POPE"}, manager)
    simple_evaluate(model=lm, tasks=specs, task_manager=manager)    # or load_tasks(...) to inspect

A data location is a hub id (the YAML default is the official one) or a local directory saved with
`DatasetDict.save_to_disk` (see each YAML's header and harness/fixtures.py). lmms-eval 0.7.3 merges
a task config dict `{"task": name, **overrides}` over the registered YAML, so nothing is edited on disk.
"""

import shutil
import sys
from pathlib import Path

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lmms_eval.tasks import TaskManager, get_task_dict
from lmms_eval.utils import load_yaml_config
from omegaconf import DictConfig, OmegaConf

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
    """A TaskManager that indexes only our YAMLs (the wheel's default index is unreliable offline)."""
    return TaskManager(include_path=str(include_path), include_defaults=False)


def location_for(name: str, data: dict[str, str]) -> str | None:
    """The data location of task `name`: its own key in `data`, else the longest key that is a
    prefix of it ("pope" covers "pope_random"), else None (the YAML default)."""
    keys = [key for key in data if name == key or name.startswith(key + "_")]
    return data[max(keys, key=len)] if keys else None


def is_local(location: str) -> bool:
    """True for a local directory, False for a hub id; a missing path-like location is an error."""
    path = Path(location).expanduser()
    if path.is_dir():
        return True
    if location.startswith(("/", ".", "~")):
        raise FileNotFoundError(f"data location {location!r} is not a directory (give a local directory or a hub id)")
    return False


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
    location = location_for(name, data)
    return name if location is None else {"task": name, **data_overrides(config, location)}


def task_specs(
    names: list[str], data: dict[str, str] | None = None, manager: TaskManager | None = None
) -> list[str | dict]:
    """Specs for `simple_evaluate(tasks=...)` / `get_task_dict`.

    Args:
        names: Task or group names from tasks/.
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
