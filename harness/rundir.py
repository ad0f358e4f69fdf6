"""The run dir: what existed before a run (so a failed run removes only what it created), its lock, its identity.

    conf/config.yaml registers `RunDirGuard` as a Hydra callback: before Hydra creates the run dir it
    notes which entries the dir already had (none: the dir did not exist). When a run fails on bad
    input before any sample is done, `remove_created(run_dir)` removes exactly the entries this run
    added, and the dir itself only when this run created it: a folder the user named with
    `hydra.run.dir` (even `.`) keeps every file it had.

    with RunLock(run_dir):   # one process per run dir; the OS drops the lock when the process dies
        check_identity(cfg, run_dir)   # run.json: a resume must match every setting that changes an answer
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

LOCK_NAME = ".prunebench.lock"
NEW_SWEEP_ENV = "PRUNEBENCH_NEW_SWEEP_DIR"  # set for the jobs of a multirun whose sweep dir this run created



def batch_tag(batch_size) -> str:
    """The run dir suffix of a batch size: "" at 1 (the default dir), "-b8" at 8 (its own dir: its own identity)."""
    return "" if int(batch_size) == 1 else f"-b{int(batch_size)}"


# Used by conf/config.yaml's run dirs; registered at import (run.py, and a launcher's job through RunDirGuard).
OmegaConf.register_new_resolver("batch_tag", batch_tag, replace=True)

_before: dict[str, set[str] | None] = {}  # resolved run dir -> its entries before the run (None: it did not exist)
_hydra_files: dict[str, dict[Path, bytes]] = {}  # resolved run dir -> the .hydra/*.yaml it had (Hydra rewrites them)


def _key(path: str | Path) -> str:
    return str(Path(path).expanduser().resolve())


def _entries(path: Path) -> set[str] | None:
    return set(os.listdir(path)) if path.is_dir() else None


class RunDirGuard(Callback):
    """Hydra callback: note the run dir's (or sweep dir's) contents before Hydra creates it."""

    def on_run_start(self, config, **kwargs) -> None:
        run_dir = Path(str(config.hydra.run.dir))
        _before[_key(run_dir)] = _entries(run_dir)
        subdir = config.hydra.output_subdir
        if subdir is not None and (run_dir / subdir).is_dir():
            _hydra_files[_key(run_dir)] = {p: p.read_bytes() for p in (run_dir / subdir).iterdir() if p.is_file()}

    def on_multirun_start(self, config, **kwargs) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if sweep_dir.exists():
            os.environ.pop(NEW_SWEEP_ENV, None)
        else:  # every job dir inside is this sweep's own (the env reaches local and SLURM jobs)
            os.environ[NEW_SWEEP_ENV] = _key(sweep_dir)


def entries_before(run_dir: str | Path) -> set[str] | None | bool:
    """The entries `run_dir` had before this run; None if this run created it; False if unknown."""
    key = _key(run_dir)
    if key in _before:
        return _before[key]
    sweep = os.environ.get(NEW_SWEEP_ENV)
    if sweep and (key == sweep or key.startswith(sweep + os.sep)):
        return None
    return False


def remove_created(run_dir: str | Path, created: list[Path] = ()) -> None:
    """Remove what this run added to `run_dir`, never anything that was there before, and put back the
    `.hydra/*.yaml` files that Hydra rewrote for this run.

    Args:
        run_dir: the run dir.
        created: files the harness itself created in this process (removed when nothing else is known).
    """
    run_dir = Path(run_dir)
    restore_hydra_config(run_dir)
    before = entries_before(run_dir)
    if before is None:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    if before is False:  # unknown history (no callback ran): only the harness's own new files go
        for path in created:
            Path(path).unlink(missing_ok=True)
        return
    for name in sorted((_entries(run_dir) or set()) - before):
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def restore_hydra_config(run_dir: str | Path) -> None:
    """Put back the `.hydra/*.yaml` of the run that was in `run_dir`: a refused run must not describe itself there."""
    for path, content in _hydra_files.get(_key(run_dir), {}).items():
        path.write_bytes(content)


IDENTITY_FILE = "run.json"


def run_identity(cfg: DictConfig) -> dict:
    """Everything that can change a sample's answer or record, flattened to `dotted.key: value`.

    The method and all its options, the budget, the seed, the generation settings, the model config
    (checkpoint, dtype, device, prompt) and a fingerprint of the checkpoint's files, the tasks and
    their data locations, and the versions of the harness, transformers and torch. Not in it: `limit`
    (a resume may extend a run), `warmup`, `latency_samples`, `time_scoring` and the logger.
    """
    import harness
    import torch
    import transformers

    node = OmegaConf.to_container(cfg, resolve=True)
    identity = {
        "method": cfg.method_name, "budget": cfg.budget, "seed": cfg.seed,
        "max_new_tokens": cfg.max_new_tokens, "record_kept": cfg.record_kept,
        "model.checkpoint": checkpoint_fingerprint(cfg.model.load),
        "versions.harness": harness.__version__, "versions.transformers": transformers.__version__,
        "versions.torch": torch.__version__,
    }
    if cfg.get("batch_size", 1) != 1:  # batches pad and reorder float sums: a resume keeps the batch size
        identity["batch_size"] = cfg.batch_size
    for section in ("method", "model", "tasks"):
        identity.update(_flatten(section, node.get(section)))
    return identity


def _flatten(prefix: str, value) -> dict:
    if isinstance(value, dict):
        out = {}
        for key, inner in value.items():
            out.update(_flatten(f"{prefix}.{key}", inner))
        return out
    return {prefix: value}


def checkpoint_fingerprint(load: DictConfig) -> str | None:
    """A short hash of a local checkpoint: names and sizes of its files, the full content of files
    under 64 MB (configs, tokenizer, small weights); the hub revision for a hub id."""
    import hashlib

    from harness.model import ASSETS

    where = load.get("pretrained") or load.get("config")
    if where is None or where == "tiny":
        return where
    path = Path(str(where)).expanduser()
    if not path.is_dir() and (ASSETS / str(where)).is_dir():
        path = ASSETS / str(where)
    if not path.is_dir():
        return f"{where}@{load.get('revision') or 'main'}"  # a hub id
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        size = file.stat().st_size
        digest.update(f"{file.relative_to(path)}:{size}\n".encode())
        if size < 64 * 2**20:
            digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()[:16]


def check_identity(cfg: DictConfig, run_dir: Path) -> dict:
    """Record what this run dir holds (run.json); refuse to resume a run dir made with other settings.

    Raises:
        ValueError: naming every setting that differs, and how to start fresh; also when this run's
            `limit` would replace the results of a larger run in the same dir.
    """
    from harness.results import write_json_atomic

    identity = run_identity(cfg)
    path = run_dir / IDENTITY_FILE
    if path.exists():
        recorded = json.loads(path.read_text())
        if "identity" not in recorded:
            raise ValueError(f"run dir {run_dir} was made by an earlier harness version that recorded only "
                             f"{sorted(recorded)}; start fresh with hydra.run.dir=<new dir> (or delete {run_dir})")
        before = recorded["identity"]
        changed = [key for key in sorted(set(before) | set(identity)) if before.get(key, "<unset>") != identity.get(key, "<unset>")]
        if changed:
            diffs = "; ".join(f"{key}: {before.get(key, '<unset>')!r} -> {identity.get(key, '<unset>')!r}" for key in changed)
            raise ValueError(
                f"run dir {run_dir} holds a run with other settings ({diffs}); resuming would mix them. "
                f"Rerun with the earlier settings to resume it, or start fresh with hydra.run.dir=<new dir> "
                f"(or delete {run_dir})"
            )
        _check_limit(cfg, run_dir)
    else:
        write_json_atomic(path, {"identity": identity})
    return identity


def _check_limit(cfg: DictConfig, run_dir: Path) -> None:
    """A smaller `limit` must not overwrite the results.json of a run over more samples."""
    results = run_dir / "results.json"
    if not results.exists() or cfg.limit is None:
        return
    before = json.loads(results.read_text()).get("limit")
    if before is None or before > cfg.limit:
        raise ValueError(
            f"limit={cfg.limit} would replace the results of this run dir's run with limit={before} ({run_dir}); "
            f"give the smaller run its own hydra.run.dir=<new dir>"
        )


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

    def __enter__(self) -> RunLock:
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
