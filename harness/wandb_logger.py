"""Weights & Biases logging of a finished run (conf/logger/wandb.yaml): one W&B run per harness run.

    python run.py method=fastv budget=64                  # logger=wandb is the default
    python run.py method=fastv budget=64 logger=none      # local files only

The runner calls `log_run(cfg, run_dir, results, records)` after results.json is written, so a
W&B failure (no network, bad key, a bug here) prints one warning line and never touches the local
results. Without WANDB_API_KEY (and no explicit `logger.mode`) the run is written offline under
`<run dir>/wandb/` and a line says how to upload it (`wandb sync <dir>`).

What a W&B run holds: name `<method>-<budget>`, group = the sweep (the multirun sweep dir's name,
else the run dir's parent), config = the resolved Hydra config, summary = the flattened results.json
numbers (`tasks/<task>/<metric>`, `tasks/<task>/scorer`, `tokens/...`, `latency_ms/...`, `flops/...`, `memory/...`), a
table of per-sample records (with their score and parsed prediction), and results.json + samples.jsonl as an artifact. The API key is read
by wandb from the environment only; it is never put in the config, the summary or a print.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

SAMPLE_COLUMNS = ("task", "doc_id", "target", "response", "error", "prefill_ms", "n_new_tokens")
SCORE_COLUMNS = ("score", "pred")  # from each sample's score fields (samples.jsonl `scores`, harness.scoring)
SUMMARY_SECTIONS = ("tasks", "tokens", "latency_ms", "flops", "memory", "evidence_recall")
INIT_TIMEOUT_S = 60  # an unreachable server must not hold a finished run for long


def log_run(cfg: DictConfig, run_dir: str | Path, results: dict, records: list[dict]) -> None:
    """Log a finished run with the logger of `cfg.logger` (nothing when its `_target_` is null).

    Never raises: any failure is one warning line on stderr; results.json is already on disk.
    """
    logger_cfg = cfg.get("logger")
    if logger_cfg is None or logger_cfg.get("_target_") is None:
        return
    try:
        from hydra.utils import instantiate

        instantiate(logger_cfg).log(cfg, Path(run_dir), results, records)
    except Exception as exc:  # noqa: BLE001 - logging must never cost the local results
        cause = exc.__cause__ if type(exc).__name__ == "InstantiationException" and exc.__cause__ else exc
        message = " ".join(_redact(str(cause)).split())  # one line
        print(f"warning: logging to {logger_cfg.get('_target_')} failed ({type(cause).__name__}: {message}); "
              f"local results are in {run_dir}", file=sys.stderr)


class WandbLogger:
    """One W&B run per harness run.

    Args:
        project: W&B project.
        entity: W&B entity (team or user); None: the key's default entity.
        mode: "online", "offline" or "disabled"; None: WANDB_MODE if set, else online when
            WANDB_API_KEY is set and offline otherwise.
        group: W&B group; None: the sweep (multirun sweep dir name, else the run dir's parent).
        tags: W&B tags.
        log_samples: log the per-sample table.
    """

    def __init__(self, project: str = "prunebench", entity: str | None = None, mode: str | None = None,
                 group: str | None = None, tags: list[str] | None = None, log_samples: bool = True):
        if mode not in (None, "online", "offline", "disabled"):
            raise ValueError(f"logger.mode={mode!r} is not allowed (allowed: online, offline, disabled, null)")
        self.project, self.entity, self.mode, self.group = project, entity, mode, group
        self.tags, self.log_samples = list(tags or []), log_samples

    def resolved_mode(self) -> str:
        if self.mode is not None:
            return self.mode
        if os.environ.get("WANDB_MODE"):
            return os.environ["WANDB_MODE"]
        return "online" if os.environ.get("WANDB_API_KEY") else "offline"

    def log(self, cfg: DictConfig, run_dir: Path, results: dict, records: list[dict]) -> None:
        import wandb

        mode = self.resolved_mode()
        name = f"{results['method']}-{results['budget']}"
        run = wandb.init(
            project=self.project, entity=self.entity, mode=mode, dir=str(run_dir), name=name,
            group=self.group or sweep_name(run_dir), tags=self.tags, job_type="eval",
            config=_scrub(OmegaConf.to_container(cfg, resolve=True)),
            settings=wandb.Settings(console="off", silent=True, init_timeout=INIT_TIMEOUT_S),
        )
        try:
            run.summary.update(_scrub(summary(results)))
            if self.log_samples and records:
                rows = [[_cell(r.get(c)) for c in SAMPLE_COLUMNS] + [_cell((r.get("scores") or {}).get(c)) for c in SCORE_COLUMNS]
                        for r in records if r is not None]
                run.log({"samples": wandb.Table(columns=list(SAMPLE_COLUMNS + SCORE_COLUMNS), data=rows)})
            artifact = wandb.Artifact(_artifact_name(f"results-{name}"), type="results",
                                      metadata={"run_dir": str(run_dir)})
            for file in ("results.json", "samples.jsonl"):
                if (run_dir / file).exists():
                    artifact.add_file(str(run_dir / file))
            run.log_artifact(artifact)
        except BaseException:
            run.finish(exit_code=1)
            raise
        sync_dir = Path(run.settings.sync_dir)
        run.finish()
        if mode == "offline":
            print(f"wandb: offline run saved; upload it with: wandb sync {sync_dir}")


def sweep_name(run_dir: Path) -> str:
    """The Hydra multirun sweep dir's name when running in a sweep, else the run dir's parent's name."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode == RunMode.MULTIRUN:
            return Path(hydra_cfg.sweep.dir).name
    except (ImportError, ValueError):  # ValueError: HydraConfig not set (run() called directly)
        pass
    return Path(run_dir).resolve().parent.name


def summary(results: dict) -> dict:
    """results.json flattened to `section/.../key` values: `tasks/<task>/<metric>` (and `/n`, `/n_failed`),
    `tokens/avg_vision_tokens`, `latency_ms/prefill/mean`, `flops/reduction`, `memory/peak_bytes`, ..."""
    flat = {"method": results.get("method"), "budget": results.get("budget"), "model": results.get("model")}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}/{key}", inner)
        elif isinstance(value, bool) or value is None:
            return
        elif isinstance(value, (int, float, str)):
            flat[prefix] = value

    for task, res in (results.get("tasks") or {}).items():  # tasks/<task>/<metric>, tasks/<task>/n, .../n_failed
        walk(f"tasks/{task}", {**res.get("metrics", {}), **{k: v for k, v in res.items() if k != "metrics"}})
    for section in SUMMARY_SECTIONS:
        if section in results and section != "tasks":
            walk(section, results[section])
    return flat


def _cell(value):
    return value if value is None or isinstance(value, (str, int, float)) else str(value)


def _artifact_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _redact(text: str) -> str:
    key = os.environ.get("WANDB_API_KEY")
    return text.replace(key, "***") if key else text


def _scrub(value):
    """A copy with the API key (should it appear anywhere, e.g. via an env interpolation) replaced by ***."""
    key = os.environ.get("WANDB_API_KEY")
    if not key:
        return value
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value.replace(key, "***") if isinstance(value, str) else value
