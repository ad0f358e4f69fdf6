"""Everything a run checks before it loads any weight: one clear error naming the value and what is allowed.

`check_config` (top-level values, unknown options), `make_logger`, `check_method` (the method's options and
its budget against the model's layers and image tokens, read from the model's config alone); the tasks and
their data locations are checked by `harness.tasks` before the model loads. `explain` turns these errors
into the one line run.py prints (exit 2).
"""

from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from harness.budget import check_schedule
from harness.families import check_schedule_kind, stage_source
from harness.model import model_shape, read_config


def check_config(cfg: DictConfig) -> None:
    """Bad top-level values and unknown options: one clear error naming the value and what is allowed."""
    def is_int(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    max_failed = cfg.get("max_failed")
    checks = {
        "limit": (cfg.limit is None or (is_int(cfg.limit) and cfg.limit > 0), "a positive integer or null"),
        "seed": (is_int(cfg.seed) and cfg.seed >= 0, "a non-negative integer"),
        "warmup": (is_int(cfg.warmup) and cfg.warmup >= 0, "a non-negative integer"),
        "batch_size": (is_int(cfg.get("batch_size", 1)) and cfg.get("batch_size", 1) >= 1, "a positive integer"),
        "latency_samples": (is_int(cfg.get("latency_samples", 0)) and cfg.get("latency_samples", 0) >= 0,
                            "a non-negative integer"),
        "record_kept": (isinstance(cfg.record_kept, bool), "true or false"),
        "time_scoring": (isinstance(cfg.time_scoring, bool), "true or false"),
        "max_new_tokens": (cfg.max_new_tokens is None or (is_int(cfg.max_new_tokens) and cfg.max_new_tokens > 0),
                           "a positive integer or null"),
        "max_failed": (max_failed is None or (is_int(max_failed) and max_failed >= 0)
                       or (isinstance(max_failed, float) and 0 <= max_failed < 1),
                       "null, a count of samples (0, 1, ...) or a fraction of them (0.0 <= x < 1.0)"),
    }
    for key, (ok, allowed) in checks.items():
        if not ok:
            raise ValueError(f"{key}={cfg[key]!r} is not allowed (allowed: {allowed})")
    check_options("method", cfg.method)
    check_options("model.load", cfg.model.load)
    if OmegaConf.is_dict(cfg.tasks.data) and "_target_" in cfg.tasks.data:
        check_options("tasks.data", cfg.tasks.data, hint=(
            "this task suite generates its own data; data locations "
            "(tasks.data.gqa=<dir>, ...) are options of tasks=paper"))


def check_options(prefix: str, node: DictConfig, hint: str = "") -> None:
    """Raise a ValueError naming every key of `node` that its `_target_` does not take, and the ones it does."""
    import inspect

    from hydra.utils import get_object

    if not OmegaConf.is_dict(node) or node.get("_target_") is None:
        return
    target = get_object(node._target_)
    params = inspect.signature(target).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = [name for name, p in params.items() if name != "self" and p.kind is not inspect.Parameter.VAR_POSITIONAL]
    unknown = [key for key in node if not str(key).startswith("_") and key not in allowed]
    if unknown:
        raise ValueError(
            f"{', '.join(f'{prefix}.{key}' for key in unknown)}: no such option of {node._target_} "
            f"(allowed: {', '.join(allowed)})" + (f"; {hint}" if hint else "")
        )


def make_logger(cfg: DictConfig):
    """The logger of `cfg.logger` (None for logger=none); its options are checked here, before any work."""
    logger_cfg = cfg.get("logger")
    if logger_cfg is None or logger_cfg.get("_target_") is None:
        return None
    check_options("logger", logger_cfg)
    try:
        return instantiate(logger_cfg)
    except Exception as exc:  # noqa: BLE001 - Hydra wraps the logger's own ValueError
        cause = exc.__cause__ or exc
        raise ValueError(str(cause)) from cause



def check_method(cfg: DictConfig):
    """The method of `cfg`, built, with its schedule checked on the model's shape before any weight loads.

    The model's decoder layers and image tokens come from its config alone (`harness.model.read_config`:
    the committed config of a known hub id, a local directory, or the tiny model). A model whose config
    cannot be read that way is checked by the engine after the load, as before.

    Raises:
        ValueError: a bad option value or budget, naming it and what is allowed.
    """
    method = _instantiate(cfg.method)  # the model's `method_overrides` are already in cfg.method, as defaults
    source = stage_source(cfg.model, cfg.method_name)
    if source:
        method.stage_source = source  # recorded in results.json method_facts
    load = OmegaConf.to_container(cfg.model.load, resolve=True)
    target = load.pop("_target_", None)
    family = load.pop("family", "llava") if target == "harness.model.load_model" else "llava"
    check_schedule_kind(family, method)
    load.pop("processor_kwargs", None)
    pre_llm = getattr(method, "pre_llm", False)
    if family != "llava":  # image tokens vary per sample (the engine checks each one); the stage layers are checked now
        num_layers = model_depth(**load)
        if num_layers is not None:
            decision = method.schedule(num_layers, NOMINAL_IMAGE_TOKENS)
            check_schedule(decision.stages, decision.budget, num_layers, NOMINAL_IMAGE_TOKENS, method.name,
                           check_budget=False)
        return method
    llava_config = read_config(**load)
    if llava_config is None:
        return method
    num_layers, num_image_tokens = model_shape(llava_config)
    decision = method.schedule(num_layers, num_image_tokens)  # the same calls as the engine's, on the same method
    check_schedule(decision.stages, decision.budget, num_layers, num_image_tokens, method.name,
                   check_budget=not pre_llm and getattr(method, "schedule_kind", "matched") == "matched")
    return method


NOMINAL_IMAGE_TOKENS = 576  # budgets are fractions budget/576 on families whose image tokens vary


def model_depth(pretrained: str | None = None, config: str | None = None, num_layers: int = 32, **_) -> int | None:
    """Decoder layers of a model config read without weights ("tiny": `num_layers`; a local or committed
    directory, or a hub id with a committed config); None when it cannot be read offline (the load says why)."""
    from transformers import AutoConfig

    from harness.model import ASSETS, COMMITTED_CONFIGS

    if config == "tiny":
        return num_layers
    where = str(config if config is not None else pretrained)
    path = Path(where).expanduser()
    if not path.is_dir():
        path = ASSETS / COMMITTED_CONFIGS.get(where, where)
    if not (path / "config.json").is_file():
        return None
    return AutoConfig.from_pretrained(path).get_text_config().num_hidden_layers


def _instantiate(node: DictConfig, **overrides):
    """`instantiate(node, **overrides)`, with the constructor's own ValueError (a bad option value) raised as itself."""
    from hydra.errors import InstantiationException

    try:
        return instantiate(node, **overrides)
    except InstantiationException as exc:
        cause = exc
        while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, ValueError):
            raise cause from None
        raise


def explain(err: BaseException) -> str | None:
    """One line for an error the user can fix (bad input, an unusable path); None for a bug."""
    import errno

    from hydra.errors import InstantiationException

    while isinstance(err, InstantiationException) and err.__cause__ is not None:
        err = err.__cause__
    if isinstance(err, (ValueError, FileNotFoundError)):
        return str(err)
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                                                  errno.ENOTDIR):
        return (f"cannot write {err.filename or 'the run dir'}: {err.strerror}; free some space or choose a "
                "writable hydra.run.dir (samples already done are kept and a rerun resumes)")
    return None


