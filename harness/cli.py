"""Command-line overrides checked before Hydra composes them: a typo is one `error:` line and exit 2.

    check_overrides(["method=fastvv"])   # -> "method=fastvv: no such method (allowed: adaptinfer, ...)"
    check_overrides(["budgt=64"])        # -> "budgt=64: no such option (allowed: batch_size, budget, ...)"

Checked: the choice of each config group of conf/ (method, model, tasks, logger, experiment, preset;
every value of a sweep), top-level option names, and `method.<option>` names against the chosen
method's file. Anything else (Hydra's own `hydra.*` keys, nested model/tasks keys) is left to Hydra.
"""

from __future__ import annotations

from pathlib import Path

CONF = Path(__file__).parents[1] / "conf"


def _options(path: Path) -> list[str]:
    from omegaconf import OmegaConf

    node = OmegaConf.load(path)
    return sorted(str(k) for k in node if k != "defaults" and not str(k).startswith("_"))


def _choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _values(override) -> list:
    """The value(s) of an override: each choice of a sweep (`a,b`, `choice(a,b)`), else the one value."""
    if override.is_sweep_override():
        try:
            return list(override.sweep_string_iterator())
        except Exception:  # noqa: BLE001 - a range or interval sweep: not a group choice
            return []
    value = override.value()
    return [value] if isinstance(value, str) else []


def check_overrides(args: list[str], config: str = "config") -> str | None:
    """The error line for the first misspelled group choice or option name in `args`, else None."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [a for a in args if "=" in a and not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # noqa: BLE001 - a syntax error: Hydra reports it with its own position marker
        return None
    groups = {p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra"}
    top = [k for k in _options(CONF / f"{config}.yaml") if k not in ("hydra", "method_name")]
    method = "adaptinfer"
    for override in parsed:
        if override.key_or_group == "method" and not override.is_sweep_override() and not override.is_delete():
            method = str(override.value())
    for override in parsed:
        key, text = override.key_or_group, override.input_line
        if key.startswith("hydra") or override.is_delete():
            continue
        if key in groups:
            allowed = _choices(key)
            bad = [v for v in _values(override) if v not in allowed]
            if bad:
                return f"{text}: no such {key} {bad[0]!r} (allowed: {', '.join(allowed)})"
        elif "." not in key and key not in top:
            return f"{text}: no such option (allowed: {', '.join(top)}; config groups: {', '.join(sorted(groups))})"
        elif key.startswith("method.") and not override.is_add() and (CONF / "method" / f"{method}.yaml").is_file():
            options = _options(CONF / "method" / f"{method}.yaml")
            if key.split(".")[1] not in options:
                return (f"{text}: {key.split('.')[1]!r} is not an option of method={method} "
                        f"(allowed: {', '.join(options)})")
    return None


BENCHMARK_ONLY = {"preset"}  # groups of the benchmark commands' configs (conf/bench.yaml), not of run.py


def config_groups() -> str:
    """`group: option, ...` for each config group of run.py (`python run.py --help`), the launchers included."""
    groups = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in BENCHMARK_ONLY | {"hydra"})
    lines = [f"{group}: {', '.join(_choices(group))}" for group in groups]
    return "\n".join([*lines, f"hydra/launcher: {', '.join(_choices('hydra/launcher'))} (with -m)"])


def _register() -> None:
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("config_groups", config_groups, replace=True)


_register()
