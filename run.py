"""Evaluate one pruning method at one budget: python run.py method=fastv budget=64 (see conf/config.yaml).

Exit status: 0 done (or already complete: nothing is redone); 2 bad input or a run dir that cannot be used
(one `error:` line, nothing left behind that the run created); 3 more failed samples than `max_failed`
(results.json is written).
"""

import os
import sys
from pathlib import Path

import harness.cli  # noqa: F401  (registers the `config_groups` resolver of `python run.py --help`)
import harness.rundir  # noqa: F401  (registers the `run_name` resolver of the run dirs)
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
    from harness.rundir import remove_if_new_and_empty
    from harness.runner import FailedSamples, check_failed, run

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        results = run(cfg, run_dir)  # under the run dir's lock; removes what it created if it fails before any sample
    except Exception as err:  # known causes become one line; anything else keeps its traceback
        remove_if_new_and_empty(run_dir)  # the empty dir Hydra made for a run refused before it began
        message = explain(err)
        if message is None:
            raise
        print(f"\nerror: {message}", file=sys.stderr)  # on a line of its own, after any progress bar
        sys.exit(2)
    try:
        check_failed(cfg, results)
    except FailedSamples as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(3)


def check_args() -> None:
    """A misspelled config group choice or option name: one `error:` line, exit 2, before Hydra composes."""
    from harness.cli import check_overrides

    message = check_overrides(sys.argv[1:])
    if message is not None:
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    check_args()
    main()
