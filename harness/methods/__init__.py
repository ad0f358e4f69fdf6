"""Pruning methods: one file each; `conf/method/<name>.yaml` is the registry (`_target_`)."""

from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate
from omegaconf import OmegaConf

METHOD_CONF = Path(__file__).parents[2] / "conf" / "method"


def method_names() -> list[str]:
    """Every method with a config in conf/method/."""
    return sorted(p.stem for p in METHOD_CONF.glob("*.yaml"))


def load_method(name: str, budget, **overrides):
    """Instantiate conf/method/<name>.yaml at a budget, as run.py does (`method.<key>=value` as overrides)."""
    cfg = OmegaConf.create({"budget": budget, "method": OmegaConf.load(METHOD_CONF / f"{name}.yaml")})
    for key, value in overrides.items():
        cfg.method[key] = value
    return instantiate(cfg.method)
