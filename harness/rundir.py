"""The run dir: what existed before a run (so a failed run removes only what it created) and its lock.

    conf/config.yaml registers `RunDirGuard` as a Hydra callback: before Hydra creates the run dir it
    notes which entries the dir already had (none: the dir did not exist). When a run fails on bad
    input before any sample is done, `remove_created(run_dir)` removes exactly the entries this run
    added, and the dir itself only when this run created it: a folder the user named with
    `hydra.run.dir` (even `.`) keeps every file it had.

    with RunLock(run_dir):   # one process per run dir; the OS drops the lock when the process dies
        ...
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

from hydra.experimental.callback import Callback

LOCK_NAME = ".prunebench.lock"
NEW_SWEEP_ENV = "PRUNEBENCH_NEW_SWEEP_DIR"  # set for the jobs of a multirun whose sweep dir this run created

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
