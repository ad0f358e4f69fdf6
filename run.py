"""Evaluate one pruning method at one budget: python run.py method=fastv budget=64 (see conf/config.yaml).

Exit status: 0 done; 2 bad input or a run dir that cannot be used (one `error:` line, nothing left
behind that the run created); 3 more failed samples than `max_failed` (results.json is written).
"""

import os
import sys
from pathlib import Path

import harness.rundir  # noqa: F401  (registers the `batch_tag` resolver of the run dirs)
import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


def set_threads() -> None:
    """OpenMP settings, before torch is imported: threads sleep at barriers instead of spinning
    (a spinning thread starves a parallel job on the same cores), and a job of a parallel launcher
    uses the `cpus_per_task` it was given. A value already in the environment wins."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        cpus = HydraConfig.get().launcher.get("cpus_per_task")
    except (ValueError, AttributeError):  # not under Hydra, or a launcher without that key
        cpus = None
    if cpus:
        os.environ.setdefault("OMP_NUM_THREADS", str(cpus))


set_threads()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    set_threads()  # again inside the job: a launcher's job process does not run this module's top level
    from harness.checks import explain
    from harness.rundir import remove_created, restore_hydra_config
    from harness.runner import FailedSamples, check_failed, print_summary, run

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        results = run(cfg, run_dir)
    except Exception as err:  # known causes become one line; anything else keeps its traceback
        message = explain(err)
        if message is None:
            raise
        if (run_dir / "samples.jsonl").exists():  # work done: keep it for a resume
            restore_hydra_config(run_dir)
        else:
            remove_created(run_dir)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    print_summary(results, run_dir)
    try:
        check_failed(cfg, results)
    except FailedSamples as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":
    main()
