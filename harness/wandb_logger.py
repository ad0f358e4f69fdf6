"""Weights & Biases logging of a finished run (conf/logger/wandb.yaml): one W&B run per harness run.

    python run.py method=fastv budget=64                  # logger=wandb is the default
    python run.py method=fastv budget=64 logger=none      # local files only

The runner calls `log_run(cfg, run_dir, results, records)` after results.json is written, so a
W&B failure (no network, bad key, a bug here) prints one warning line and never touches the local
results. Without WANDB_API_KEY (and no explicit `logger.mode`) the run is written offline under
`<run dir>/wandb/` and a line says how to upload it (`wandb sync <dir>`).

Time is bounded: the W&B calls run in a child process (`python -m harness.wandb_logger`) that is
killed after `logger.timeout_s`. An online init that fails or does not answer within
`logger.init_timeout_s` falls back to an offline run in the run dir, with the `wandb sync` line, so
an unreachable server costs a job at most about `init_timeout_s`, not half an hour.

What a W&B run holds: name `<method>-<budget>`, group = the sweep (the multirun sweep dir's name,
else the run dir's parent), config = the resolved Hydra config, summary = the flattened results.json
numbers (`tasks/<task>/<metric>`, `tasks/<task>/scorer`, `tokens/...`, `latency_ms/...`, `flops/...`, `memory/...`), a
table of per-sample records (with their score and parsed prediction), and results.json + samples.jsonl as an artifact. The API key is read
by wandb from the environment only; it is never put in the config, the summary or a print.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from harness.secrets import redact, scrub

SAMPLE_COLUMNS = ("task", "doc_id", "target", "response", "error", "prefill_ms", "n_new_tokens")
SCORE_COLUMNS = ("score", "pred")  # from each sample's score fields (samples.jsonl `scores`, harness.scoring)
NO_INIT_EXIT = 75  # the child's exit status when the online init did not answer in time
SUMMARY_SECTIONS = ("tasks", "tokens", "latency_ms", "flops", "memory", "evidence_recall")


def log_run(cfg: DictConfig, run_dir: str | Path, results: dict, records: list[dict], logger=None) -> None:
    """Log a finished run with the logger of `cfg.logger` (nothing when its `_target_` is null).

    Never raises: any failure is one warning line on stderr; results.json is already on disk.

    Args:
        logger: the instance (the runner builds it before the evaluation, checking its options);
            None: built here from `cfg.logger`.
    """
    logger_cfg = cfg.get("logger")
    if logger_cfg is None or logger_cfg.get("_target_") is None:
        return
    try:
        if logger is None:
            from hydra.utils import instantiate

            logger = instantiate(logger_cfg)
        logger.log(cfg, Path(run_dir), results, records)
    except Exception as exc:  # noqa: BLE001 - logging must never cost the local results
        cause = exc.__cause__ if type(exc).__name__ == "InstantiationException" and exc.__cause__ else exc
        message = " ".join(redact(str(cause)).split())  # one line
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
        init_timeout_s: an online init not done by then falls back to offline.
        timeout_s: the whole logging (init, summary, table, artifact, upload) is stopped after this.
    """

    def __init__(self, project: str = "prunebench", entity: str | None = None, mode: str | None = None,
                 group: str | None = None, tags: list[str] | None = None, log_samples: bool = True,
                 init_timeout_s: float = 30, timeout_s: float = 300):
        if mode not in (None, "online", "offline", "disabled"):
            raise ValueError(f"logger.mode={mode!r} is not allowed (allowed: online, offline, disabled, null)")
        for key, value in (("init_timeout_s", init_timeout_s), ("timeout_s", timeout_s)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"logger.{key}={value!r} is not allowed (allowed: a positive number of seconds)")
        self.project, self.entity, self.mode, self.group = project, entity, mode, group
        self.tags, self.log_samples = list(tags or []), log_samples
        self.init_timeout_s, self.timeout_s = float(init_timeout_s), float(timeout_s)

    def resolved_mode(self) -> str:
        if self.mode is not None:
            return self.mode
        if os.environ.get("WANDB_MODE"):
            return os.environ["WANDB_MODE"]
        return "online" if os.environ.get("WANDB_API_KEY") else "offline"

    def log(self, cfg: DictConfig, run_dir: Path, results: dict, records: list[dict]) -> None:
        """Log in a child process, killed after `timeout_s`; an online attempt that is killed is redone offline."""
        mode = self.resolved_mode()
        if mode == "disabled":
            return
        config = scrub(OmegaConf.to_container(cfg, resolve=True))
        group = self.group or sweep_name(run_dir)
        status = self._child(config, run_dir, mode, group)
        if status == "done" or mode == "offline":
            if status == "timeout":
                raise TimeoutError(f"wandb did not finish offline within {self.timeout_s:.0f} s (logger.timeout_s)")
            return
        if status == "timeout":
            print(f"warning: wandb did not finish online within {self.timeout_s:.0f} s (logger.timeout_s); "
                  "logging offline instead", file=sys.stderr)
        if self._child(config, run_dir, "offline", group) != "done":
            raise TimeoutError(f"wandb did not finish offline within {self.timeout_s:.0f} s (logger.timeout_s)")

    def _child(self, config: dict, run_dir: Path, mode: str, group: str) -> str:
        """Run `log_now` in `python -m harness.wandb_logger`, killed after `timeout_s`.

        Returns:
            "done", "timeout" (killed), or "no_init" (online init did not answer in `init_timeout_s`).
        """
        job = {"config": config, "run_dir": str(run_dir), "mode": mode, "group": group,
               "logger": {"project": self.project, "entity": self.entity, "tags": self.tags,
                          "log_samples": self.log_samples, "init_timeout_s": self.init_timeout_s}}
        proc = subprocess.Popen([sys.executable, "-m", "harness.wandb_logger"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=Path(__file__).resolve().parent.parent, start_new_session=True)
        try:
            out, err = proc.communicate(json.dumps(job, default=str), timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            out, err = "", ""
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # wandb's own service process goes with it
            except ProcessLookupError:
                pass
        if proc.poll() is None or proc.returncode == -signal.SIGKILL:
            proc.wait()
            return "timeout"
        sys.stdout.write(out)
        sys.stderr.write(err)
        if proc.returncode == NO_INIT_EXIT:
            return "no_init"
        if proc.returncode != 0:
            lines = [line for line in err.strip().splitlines() if line.strip()]
            raise RuntimeError(lines[-1] if lines else f"the wandb process exited with {proc.returncode}")
        return "done"


def log_now(config: dict, run_dir: Path, mode: str, group: str, project: str, entity: str | None, tags: list[str],
            log_samples: bool, init_timeout_s: float) -> None:
    """The W&B calls themselves (in the child process): init (online falls back to offline), summary,
    sample table, artifact, finish, and the `wandb sync` line for an offline run."""
    import wandb

    from harness.results import read_results, read_samples

    results, records = read_results(run_dir), read_samples(run_dir)
    name = f"{results['method']}-{results['budget']}"

    def init(mode: str):
        return wandb.init(
            project=project, entity=entity, mode=mode, dir=str(run_dir), name=name, group=group, tags=tags,
            job_type="eval", config=config,
            settings=wandb.Settings(console="off", silent=True, init_timeout=init_timeout_s),
        )

    if mode == "online":  # wandb's own init_timeout is not always kept: bound it here
        started: dict = {}

        def start() -> None:
            try:
                started["run"] = init("online")
            except BaseException as exc:  # noqa: BLE001 - reported below
                started["error"] = exc

        thread = threading.Thread(target=start, daemon=True)
        thread.start()
        thread.join(init_timeout_s)
        if thread.is_alive():
            print(f"warning: wandb online init did not answer within {init_timeout_s:.0f} s (logger.init_timeout_s); "
                  "logging offline instead", file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(NO_INIT_EXIT)  # the parent redoes it offline; a stuck thread cannot be stopped otherwise
        if "error" in started:
            exc = started["error"]
            message = " ".join(redact(str(exc)).split())[:300]
            print(f"warning: wandb online init failed ({type(exc).__name__}: {message}); logging offline instead",
                  file=sys.stderr)
            wandb.teardown()
            mode = "offline"
        else:
            run = started["run"]
    if mode != "online":
        run = init(mode)
    try:
        run.summary.update(scrub(summary(results)))
        if log_samples and records:
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


if __name__ == "__main__":  # the child process of WandbLogger.log: one job as JSON on stdin
    job = json.loads(sys.stdin.read())
    log_now(job["config"], Path(job["run_dir"]), job["mode"], job["group"], **job["logger"])
