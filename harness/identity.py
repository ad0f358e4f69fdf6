"""A run's identity (run.json): everything that can change an answer; a resume must match it exactly.

    identity = check_identity(cfg, run_dir)   # records run.json, or refuses a resume with other settings
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from harness.secrets import scrub

IDENTITY_FILE = "run.json"
UNSET = object()


def run_identity(cfg: DictConfig) -> dict:
    """Everything that can change a sample's answer or record, flattened to `dotted.key: value`.

    The method and all its options, the budget (None for a method that ignores it: vanilla and blind are
    one run whatever `budget=` says), the seed, the generation settings, the model config (checkpoint,
    dtype, device, prompt) and a fingerprint of the checkpoint's files, the tasks and their data
    locations, and the versions of the harness, transformers and torch. Not in it: `limit` (a resume may
    extend a run), `warmup`, `latency_samples`, `time_scoring` and the logger. Secrets are redacted.
    """
    import harness
    import torch
    import transformers

    from harness.rundir import ignores_budget

    node = OmegaConf.to_container(cfg, resolve=True)
    fixed = ignores_budget(cfg.method.get("_target_", ""))
    identity = {
        "method": cfg.method_name, "budget": None if fixed else cfg.budget, "seed": cfg.seed,
        "max_new_tokens": cfg.max_new_tokens, "record_kept": cfg.record_kept,
        "model.checkpoint": checkpoint_fingerprint(cfg.model.load),
        "versions.harness": harness.__version__, "versions.transformers": transformers.__version__,
        "versions.torch": torch.__version__,
    }
    if cfg.get("batch_size", 1) != 1:  # batches pad and reorder float sums: a resume keeps the batch size
        identity["batch_size"] = cfg.batch_size
    for section in ("method", "model", "tasks"):
        identity.update(_flatten(section, node.get(section)))
    if fixed:
        identity.pop("method.budget", None)
    return scrub(identity)


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


def read_json(path: Path) -> dict:
    """A JSON file of a run dir; a damaged one is a ValueError naming the file and what to do."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is damaged ({err.__class__.__name__}: {err}); move it away (or delete it) "
                         f"and rerun, or give this run another hydra.run.dir") from None


def describe(key: str, before, now) -> str:
    """One changed setting: `max_new_tokens: 2 -> 1`, `batch_size 4 (now 1, the default)`."""
    if now is UNSET:
        return f"{key} {before!r} (now not set)"
    if before is UNSET:
        return f"{key} not set (now {now!r})"
    if key == "batch_size" and now == 1:  # recorded only above 1
        return f"batch_size {before!r} (now 1, the default)"
    return f"{key}: {before!r} -> {now!r}"


def check_identity(cfg: DictConfig, run_dir: Path) -> dict:
    """Record what this run dir holds (run.json); refuse to resume a run dir made with other settings.

    A run.json whose run did no work (no samples.jsonl record, no results.json: a run killed before its
    first sample) is replaced: there is nothing to mix.

    Raises:
        ValueError: naming every setting that differs, and how to start fresh; also when this run's
            `limit` would replace the results of a larger run in the same dir, or run.json is damaged.
    """
    from harness.results import write_json_atomic
    from harness.rundir import has_samples

    identity = run_identity(cfg)
    if cfg.get("batch_size", 1) == 1:
        identity_now = {**identity, "batch_size": 1}
    else:
        identity_now = identity
    path = run_dir / IDENTITY_FILE
    worked = has_samples(run_dir) or (run_dir / "results.json").exists()
    if path.exists() and worked:
        recorded = read_json(path)
        if "identity" not in recorded:
            raise ValueError(f"run dir {run_dir} was made by an earlier harness version that recorded only "
                             f"{sorted(recorded)}; start fresh with hydra.run.dir=<new dir> (or delete {run_dir})")
        before = recorded["identity"]
        keys = sorted(set(before) | set(identity))
        changed = [k for k in keys if before.get(k, UNSET) != identity.get(k, UNSET)]
        if changed:
            diffs = "; ".join(describe(k, before.get(k, UNSET), identity_now.get(k, UNSET)) for k in changed)
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
    before = read_json(results).get("limit")
    if before is None or before > cfg.limit:
        raise ValueError(
            f"limit={cfg.limit} would replace the results of this run dir's run with limit={before} ({run_dir}); "
            f"give the smaller run its own hydra.run.dir=<new dir>"
        )
