"""results.json and samples.jsonl (the contracts in docs/architecture.md, "Contracts"): atomic writes and resume.

samples.jsonl gets one line per finished sample, flushed and fsync'ed at once, so a crash loses at
most the sample in flight; a rerun in the same run dir reads it and skips what is done.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from harness.secrets import scrub

SCHEMA = 1


def versions() -> dict:
    """Versions of Python, torch, transformers, lmms-eval (None when it is not installed) and the harness.

    Reads lmms-eval's version from the installed metadata, so a benchmark that does not need lmms-eval
    runs (and reports) without it.
    """
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch
    import transformers

    import harness

    try:
        lmms_eval = version("lmms_eval")
    except PackageNotFoundError:
        lmms_eval = None
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "lmms_eval": lmms_eval, "harness": harness.__version__}


def _finite(value):
    """NaN / inf (e.g. a metric over zero samples) become null: results.json stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_report(out: str | Path, stem: str, report: dict, markdown: str) -> None:
    """`<out>/<stem>.json` (atomic) + `<out>/<stem>.md`, and the Markdown on stdout."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / f"{stem}.json", report)
    (out / f"{stem}.md").write_text(markdown)
    print(markdown)
    print(f"written: {out / f'{stem}.json'}, {out / f'{stem}.md'}")


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` to a temp file in the same directory, fsync, then rename over `path`: a kill at any moment
    leaves the old file or the new one, never a truncated one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, data: dict) -> None:
    """Strict JSON (secrets redacted: `harness.secrets`), written atomically (`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(_finite(scrub(data)), indent=2, default=str, allow_nan=False) + "\n")


def write_lines_atomic(path: Path, lines: list[str]) -> None:
    """JSON lines written atomically (`write_text_atomic`): samples.jsonl is never truncated in place."""
    write_text_atomic(path, "".join(line + "\n" for line in lines))


def load_records(path: str | Path) -> tuple[dict[tuple[str, int], dict], list[str]]:
    """Complete records of a samples.jsonl keyed by (task, doc_id), and the good lines in order.

    A line that is not a complete record (torn by a crash, or not a JSON object with `task` and
    `doc_id`) is skipped: that sample runs again.
    """
    records, good = {}, []
    path = Path(path)
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
                key = (record["task"], record["doc_id"])
            except (json.JSONDecodeError, TypeError, KeyError):
                continue
            records[key] = record
            good.append(line)
    return records, good


class SampleLog:
    """Append-only per-sample records keyed by (task, doc_id).

    Args:
        path: the samples.jsonl file; existing complete lines are loaded. When some lines are not
            complete records (a torn last line), the file is rewritten with the good lines only, aside
            and renamed over it, so a kill at any moment leaves either the old file or the new one.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.records, good = load_records(self.path)
        if self.path.exists() and len(good) != len(self.path.read_text(errors="replace").splitlines()):
            write_lines_atomic(self.path, good)  # appends stay valid JSON lines
        self._file = None

    def get(self, task: str, doc_id: int) -> dict | None:
        return self.records.get((task, doc_id))

    def done(self, task: str, doc_id: int) -> bool:
        """True when the sample has a record without an error; a failed sample runs again on a rerun."""
        record = self.records.get((task, doc_id))
        return record is not None and record.get("error") is None

    def append(self, record: dict) -> None:
        if self._file is None:
            self._file = self.path.open("a")
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.records[(record["task"], record["doc_id"])] = record

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __len__(self) -> int:
        return len(self.records)

    def compact(self) -> None:
        """One line per (task, doc_id): when a retried sample left its earlier record in the file (the later
        line supersedes it for every reader), rewrite the file with the latest records (aside, then renamed in)."""
        self.close()
        if not self.path.exists() or len(self.path.read_text().splitlines()) == len(self.records):
            return
        write_lines_atomic(self.path, [json.dumps(record) for record in self.records.values()])


def read_results(run_dir: str | Path) -> dict:
    """Load a run's results.json."""
    return json.loads((Path(run_dir) / "results.json").read_text())


def read_samples(run_dir: str | Path) -> list[dict]:
    """Load a run's samples.jsonl (complete lines only)."""
    return list(load_records(Path(run_dir) / "samples.jsonl")[0].values())
