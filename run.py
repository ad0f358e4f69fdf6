"""Evaluate one pruning method at one budget: python run.py method=fastv budget=64 (see conf/config.yaml)."""

import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from harness.runner import run

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        results = run(cfg, run_dir)
    except (ValueError, FileNotFoundError) as err:  # bad input: one clear line, no junk run dir, non-zero exit
        if not (run_dir / "samples.jsonl").exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"results: {run_dir / 'results.json'}")
    for task, res in results["tasks"].items():
        print(f"  {task}: " + ", ".join(f"{k}={v:.2f}" for k, v in res["metrics"].items()))


if __name__ == "__main__":
    main()
