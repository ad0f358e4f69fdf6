"""The run dir: its name, its lock, what this process created in it, its identity.

    hydra.run.dir = runs/<model>/<tasks>/${run_name:...}    # fastv-64, vanilla, fastv-64-b8+seed=1

    with RunDir(run_dir) as rd:          # one process per run dir (a second one is refused, removing nothing)
        check_identity(cfg, run_dir)     # run.json: a resume must match every setting that changes an answer
        rd.record_config()               # .hydra/*.yaml and run.log, written only now, under the lock
        ...                              # a failure before the first sample removes exactly what this process created

Hydra writes nothing into the run dir (`hydra.output_subdir: null`, no log file): it only creates the dir.
`RunDirGuard` (a Hydra callback) notes whether the dir existed before the run, so that a run that fails
before doing any work removes the dir only when this run created it and it is empty again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from harness.secrets import scrub

LOCK_NAME = ".prunebench.lock"
NEW_SWEEP_ENV = "PRUNEBENCH_NEW_SWEEP_DIR"  # set for the jobs of a multirun whose sweep dir this run created
SWEPT_ENV = "PRUNEBENCH_SWEPT_KEYS"  # the options a multirun varies, for its jobs' run dir names
CONF = Path(__file__).parents[1] / "conf"

# Overrides already in the run dir's path, or that do not change an answer (not in run.json): not in its name.
_IN_PATH = {"method", "model", "tasks", "budget", "batch_size"}
_NOT_IDENTITY = {"limit", "warmup", "latency_samples", "time_scoring", "max_failed", "logger", "experiment",
                 "preset", "paths", "hydra"}
_MAX_TAG = 80


def batch_tag(batch_size) -> str:
    """The run dir suffix of a batch size: "" at 1 (the default dir), "-b8" at 8 (its own dir: its own identity)."""
    try:
        return "" if int(batch_size) == 1 else f"-b{int(batch_size)}"
    except (TypeError, ValueError):  # a bad value: check_config names it
        return f"-b{batch_size}"


def ignores_budget(target: str) -> bool:
    """Whether the method class at `target` declares `ignores_budget = True` (vanilla, blind: one run whatever
    the budget). Read from the class's source, not imported: a run dir's name is resolved in a launcher's
    job before `run.py` sets the job's threads, and importing a method would load torch first."""
    import ast
    import importlib.util

    module, _, name = str(target).rpartition(".")
    try:
        spec = importlib.util.find_spec(module)
        tree = ast.parse(Path(spec.origin).read_text())
    except Exception:  # noqa: BLE001 - a bad target is reported by the method check
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == name:
            for stmt in node.body:
                if (isinstance(stmt, ast.Assign) and any(getattr(t, "id", None) == "ignores_budget" for t in stmt.targets)
                        and isinstance(stmt.value, ast.Constant)):
                    return bool(stmt.value.value)
    return False


def run_name(target: str, method_name: str, budget, batch_size, overrides=(), mode=None) -> str:
    """The run dir's last component: everything that makes two runs of one model and suite differ.

    `<method>-<budget>` (`<method>` for a method that ignores the budget, unless a sweep varies the budget:
    then each job keeps its own, as the sweep's other jobs do), `-b<N>` at a batch size
    above 1, then `+key=value,...` for options not already in the path. A single run names each option
    given on the command line that changes an answer (seed, method options, generation settings, data
    locations...; not `limit`, so a rerun with a larger limit resumes). A job of a sweep names each option
    the sweep varies (the sweep dir already separates sweeps): its jobs never share a dir. An option at
    its default adds nothing.
    """
    swept = set(filter(None, os.environ.get(SWEPT_ENV, "").split(","))) if "MULTIRUN" in str(mode) else None
    fixed = ignores_budget(target) and "budget" not in (swept or ())  # a sweep over budgets keeps it: no collision
    name = str(method_name) if fixed else f"{method_name}-{budget}"
    name += batch_tag(batch_size)
    tag = option_tag([str(o) for o in overrides or ()], str(method_name), swept)
    return f"{name}+{tag}" if tag else name


def default_run_name(method_name: str, budget, batch_size=1) -> str:
    """The run dir name of a method at a budget with no other option given (a sweep's job varying only these)."""
    target = OmegaConf.load(CONF / "method" / f"{method_name}.yaml")["_target_"]
    return run_name(target, method_name, budget, batch_size)


def option_tag(overrides: list[str], method_name: str, swept: set[str] | None = None) -> str:
    """`key=value,...` of the overrides that go into the run dir's name (all answer-changing ones, or with
    `swept` only those), sorted; hashed when long."""
    defaults = _defaults(method_name)
    items = {}
    for text in overrides:
        key, _, value = text.partition("=")
        key = key.lstrip("+~")
        root = key.split(".")[0].split("/")[0]
        if key in _IN_PATH or root == "hydra" or key == "method.budget":
            continue
        if (root in _NOT_IDENTITY) if swept is None else (key not in swept):
            continue
        if key in defaults and _same(defaults[key], value):
            continue
        items[key] = value.replace("/", "_")
    tag = ",".join(f"{k}={v}" for k, v in sorted(items.items()))
    if len(tag) > _MAX_TAG:
        tag = f"{tag[:_MAX_TAG - 9]}~{hashlib.sha1(tag.encode()).hexdigest()[:8]}"
    return tag


def swept_keys(config) -> set[str]:
    """The options a multirun varies: its sweep overrides (`seed=0,1`) and its sweeper's params (experiments)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([str(o) for o in config.hydra.overrides.task])
    keys = {o.key_or_group.lstrip("+~") for o in parsed if o.is_sweep_override()}
    return keys | {str(k) for k in (OmegaConf.select(config, "hydra.sweeper.params") or {})}


def _defaults(method_name: str) -> dict:
    """The literal defaults of the top-level options and of the method's options (`method.<key>`)."""
    out = {}
    for prefix, path in (("", CONF / "config.yaml"), ("method.", CONF / "method" / f"{method_name}.yaml")):
        if path.is_file():
            node = OmegaConf.load(path)
            for key in node:
                if key != "defaults" and not OmegaConf.is_interpolation(node, key):
                    out[f"{prefix}{key}"] = OmegaConf.to_container(node, resolve=False)[key]
    return out


def _same(default, given: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        value = OverridesParser.create().parse_override(f"x={given}").value()
    except Exception:  # noqa: BLE001
        return False
    return value == default or (isinstance(value, list) and list(value) == default)


# Used by conf/config.yaml's run dirs; registered at import (run.py, and a launcher's job through RunDirGuard).
OmegaConf.register_new_resolver("batch_tag", batch_tag, replace=True)
OmegaConf.register_new_resolver("run_name", run_name, replace=True)

_existing_ancestor: dict[str, str] = {}  # resolved run dir -> its deepest ancestor (or itself) that existed before the run


def _key(path: str | Path) -> str:
    return str(Path(path).expanduser().resolve())


def _deepest_existing(path: Path) -> Path:
    path = Path(_key(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


class RunDirGuard(Callback):
    """Hydra callback: note which part of the run dir's path (or whether the sweep dir) existed before Hydra
    creates it."""

    def on_run_start(self, config, **kwargs) -> None:
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().set_config(config)  # the run dir interpolates ${hydra:...}
        run_dir = str(config.hydra.run.dir)
        _refuse_a_file(Path(run_dir), "hydra.run.dir")
        _existing_ancestor[_key(run_dir)] = str(_deepest_existing(Path(run_dir)))

    def on_multirun_start(self, config, **kwargs) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        _refuse_a_file(sweep_dir, "hydra.sweep.dir")
        os.environ[SWEPT_ENV] = ",".join(sorted(swept_keys(config)))  # reaches local and SLURM jobs
        if sweep_dir.exists():
            os.environ.pop(NEW_SWEEP_ENV, None)
        else:  # every job dir inside is this sweep's own (the env reaches local and SLURM jobs)
            os.environ[NEW_SWEEP_ENV] = _key(sweep_dir)


def _refuse_a_file(path: Path, option: str) -> None:
    """A run dir that is (or lies under) a file: one `error:` line and exit 2 before Hydra tries to create it
    (an exception here would only be a warning: Hydra's callbacks let SystemExit through)."""
    existing = _deepest_existing(path)
    if not existing.is_dir():
        print(f"error: {option}={path}: {existing} is a file, not a directory; choose another {option}",
              file=sys.stderr)
        sys.exit(2)


def _created_from(run_dir: str | Path) -> Path | None:
    """The top folder this run created on the way to `run_dir` (None: `run_dir` existed before, or unknown)."""
    key = Path(_key(run_dir))
    if str(key) in _existing_ancestor:
        existing = Path(_existing_ancestor[str(key)])
        if existing == key:
            return None
        top = key
        while top.parent != existing:
            top = top.parent
        return top
    sweep = os.environ.get(NEW_SWEEP_ENV)
    if sweep and str(key).startswith(sweep + os.sep):
        return Path(sweep)
    return None


def remove_if_new_and_empty(run_dir: str | Path) -> None:
    """Remove the run dir Hydra made for a run refused before it began, and the parents Hydra made for it,
    as far as this run created them and they are empty (`rmdir` refuses a dir another process has since
    written into)."""
    top = _created_from(run_dir)
    if top is None:
        return
    path = Path(_key(run_dir))
    while True:
        try:
            os.rmdir(path)
        except OSError:
            return
        if path == top:
            return
        path = path.parent


class RunDirBusy(ValueError):
    """Another process holds the run dir's lock."""


class RunLock:
    """An exclusive `fcntl.flock` on `<run dir>/.prunebench.lock`, held for the whole run.

    The OS releases it when the process ends in any way (kill -9, node reboot, SLURM requeue), so a
    restarted run is never refused by a stale lock; a second live process on the same dir is.
    """

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None
        self.created = False

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            self.created = True
        except FileExistsError:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunDirBusy(
                f"run dir {self.path.parent} is in use by a running process (pid {holder}); "
                "wait for it to finish, or give this run another hydra.run.dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None


class RunDir:
    """One process's hold on a run dir: the lock, and every file this process created in it.

    A run that fails before its first sample is recorded removes exactly those files (and the dir, when
    this run created it and nothing else is in it); once a sample is in samples.jsonl everything stays,
    for a resume. A process refused by the lock touches nothing.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.lock = RunLock(self.path)
        self.created: list[Path] = []
        self._log_handler: logging.Handler | None = None

    def __enter__(self) -> RunDir:
        self.lock.__enter__()
        if self.lock.created:
            self.created.append(self.lock.path)
        return self

    def create(self, path: Path) -> Path:
        """Note that this process is about to create `path` (if it does not exist yet)."""
        if not path.exists():
            self.created.append(path)
        return path

    def record_config(self, cfg: DictConfig) -> None:
        """`.hydra/{config,hydra,overrides}.yaml` (secrets redacted) and `run.log`: written under the lock,
        after the identity check, so a refused run never rewrites another run's description."""
        from hydra.core.hydra_config import HydraConfig

        from harness.results import write_text_atomic

        try:
            hydra_cfg = HydraConfig.get()
        except ValueError:  # run() called without Hydra: nothing to record
            hydra_cfg = None
        if hydra_cfg is not None:
            folder = self.path / ".hydra"
            if not folder.exists():
                folder.mkdir()
                self.created.append(folder)
            for name, node in (("config.yaml", cfg), ("hydra.yaml", OmegaConf.create({"hydra": hydra_cfg})),
                               ("overrides.yaml", hydra_cfg.overrides.task)):
                text = OmegaConf.to_yaml(OmegaConf.create(scrub(OmegaConf.to_container(node, resolve=False))))
                write_text_atomic(self.create(folder / name), text)
        self._attach_log(self.create(self.path / "run.log"))

    def _attach_log(self, path: Path) -> None:
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        for name in ("prunebench", None):
            logging.getLogger(name).addHandler(handler)
        self._log_handler = handler

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._log_handler is not None:
            for name in ("prunebench", None):
                logging.getLogger(name).removeHandler(self._log_handler)
            self._log_handler.close()
        try:
            if exc_type is not None and not has_samples(self.path):
                self.discard()
        finally:
            self.lock.__exit__()

    def discard(self) -> None:
        """Remove what this process created, newest first; then the dir if this run created it and it is empty."""
        for path in reversed(self.created):
            try:
                path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
            except OSError:
                pass
        self.created.clear()
        remove_if_new_and_empty(self.path)


def has_samples(run_dir: str | Path) -> bool:
    """Whether samples.jsonl holds at least one complete record (work a resume must keep)."""
    path = Path(run_dir) / "samples.jsonl"
    try:
        with path.open("rb") as f:
            return b"\n" in f.read(1 << 20)
    except OSError:
        return False
