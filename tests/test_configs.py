"""Every file of every conf/ group composes, and instantiates or validates as far as possible without weights.

Parametrized over the files on disk: a new YAML joins automatically, and a new group must be added to
GROUPS (the test over the group folders fails until it is).
"""

from __future__ import annotations

import inspect
import itertools
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import get_class, get_method, instantiate
from omegaconf import DictConfig, OmegaConf

from harness.methods import method_names

CONF = Path(__file__).parents[1] / "conf"
V, L = 576, 32
# group folder -> (primary config it is used with, the override that selects a file)
GROUPS = {
    "model": ("config", "model={}"),
    "method": ("config", "method={}"),
    "tasks": ("config", "tasks={}"),
    "logger": ("config", "logger={}"),
    "experiment": ("config", "+experiment={}"),
    "hydra/launcher": ("config", "hydra/launcher={}"),
    "hydra/job_logging": ("config", "hydra/job_logging={}"),
    "preset": ("bench", "+preset={}"),
}
PRIMARY = sorted(p.stem for p in CONF.glob("*.yaml"))  # config, bench, analyze, overhead
FILES = [(group, p.stem) for group in GROUPS for p in sorted((CONF / group).glob("*.yaml"))]
OFFLINE_MODEL = "tiny_random"  # methods are built against it (its CLIP text tower is random: `text_encoder: tiny`)


def compose_resolved(config_name: str, overrides: list[str] = ()) -> DictConfig:
    """Compose as run.py does (Hydra's own keys included) and resolve every interpolation."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # `${hydra:...}` interpolations read it
    job_keys = [key for key in cfg if key != "hydra"]
    resolved = OmegaConf.create(OmegaConf.to_container(OmegaConf.masked_copy(cfg, job_keys), resolve=True))
    resolved.hydra = OmegaConf.to_container(cfg.hydra)  # Hydra's own keys stay as written (some are set at run time)
    assert "???" not in str(resolved.hydra.run.dir) and str(resolved.hydra.sweep.dir)  # the run dirs resolve
    return resolved


def header_command(path: Path) -> str:
    """The command a config file opens with (after a `# @package` line)."""
    lines = [line for line in path.read_text().splitlines() if not line.startswith("# @package")]
    return lines[0]


@pytest.fixture(scope="module")
def manager():
    from harness.tasks import task_manager

    return task_manager()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """Materialised data (shapes suite, fixtures) goes under tmp_path."""
    monkeypatch.setenv("PRUNEBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_every_group_folder_is_covered():
    folders = {str(p.parent.relative_to(CONF)) for p in CONF.rglob("*.yaml") if p.parent != CONF}
    assert folders == set(GROUPS), f"conf/ groups without a compose test: {sorted(folders - set(GROUPS))}"
    assert {"config", "bench", "analyze", "overhead"} <= set(PRIMARY)


@pytest.mark.parametrize("name", PRIMARY)
def test_primary_config_composes(name):
    cfg = compose_resolved(name)
    assert header_command(CONF / f"{name}.yaml").startswith("# python ")
    if name == "bench":
        assert set(cfg.methods) <= set(method_names()), cfg.methods
        assert all(isinstance(b, int) and 1 <= b <= V for b in cfg.budgets)


@pytest.mark.parametrize(("group", "name"), FILES, ids=[f"{g}/{n}" for g, n in FILES])
def test_file_composes_and_opens_with_its_command(group, name):
    primary, override = GROUPS[group]
    cfg = compose_resolved(primary, [override.format(name)])
    command = header_command(CONF / group / f"{name}.yaml")
    assert command.startswith("# python "), f"{group}/{name}.yaml must open with the command that uses it"
    if group in ("model", "method", "tasks", "experiment", "hydra/launcher"):
        assert override.format(name) in command, f"{group}/{name}.yaml's command must name it: {command}"
    if group in ("experiment", "preset"):
        assert (CONF / group / f"{name}.yaml").read_text().startswith("# @package _global_")
    if group == "hydra/launcher":
        get_class(cfg.hydra.launcher._target_)  # the launcher plugin imports


# ---------------------------------------------------------------- method/

@pytest.mark.parametrize("name", method_names())
@pytest.mark.parametrize("budget", [192, 64])
def test_method_instantiates_and_schedules(name, budget):
    cfg = compose_resolved("config", [f"method={name}", f"budget={budget}", f"model={OFFLINE_MODEL}"])
    assert cfg.method._target_.startswith(f"harness.methods.{name}."), cfg.method._target_
    method = instantiate(cfg.method)
    assert method.name == name == cfg.method_name
    stages = method.schedule(L, V).stages  # validates the budget and every option against the 7B layout
    assert all(0 <= s.layer < L for s in stages)


def test_cdpruner_without_a_text_encoder_is_a_clear_error():
    """A model without a CLIP text tower: the error names the key before any sample runs."""
    cfg = compose_resolved("config", ["method=cdpruner", "budget=64", "model.text_encoder=null"])
    method = instantiate(cfg.method)
    with pytest.raises(ValueError, match=r"method\.text_encoder=None"):
        method.schedule(L, V)


def test_cdpruner_on_the_default_model_reads_the_shipped_text_tower():
    """The embedded model's config names its CLIP text tower under harness/assets, loaded offline by schedule()."""
    cfg = compose_resolved("config", ["method=cdpruner", "budget=64"])
    assert cfg.model.name == "tiny_llava_shapes" and cfg.method.text_encoder == "tiny-clip-shapes"
    method = instantiate(cfg.method)
    method.schedule(L, V)
    assert method.tower is not None and method.tower.vision_width == 128


def test_every_method_config_instantiates():
    from harness.methods import METHOD_CONF, load_method

    assert {"vanilla", "fastv", "random", "adaptinfer"} <= set(method_names())
    for name in method_names():
        method = load_method(name, 192)
        assert method.name == name
        assert OmegaConf.load(METHOD_CONF / f"{name}.yaml")._target_.startswith("harness.methods.")
        first_line = (METHOD_CONF / f"{name}.yaml").read_text().splitlines()[0]
        assert first_line.startswith("# python run.py method="), f"{name}.yaml must open with its command"


# ---------------------------------------------------------------- model/

@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "model").glob("*.yaml")))
def test_model_config_validates(name):
    from harness.model import ASSETS

    cfg = compose_resolved("config", [f"model={name}"])
    model_cfg = cfg.model
    assert model_cfg.name == name
    placeholder = model_cfg.get("image_placeholder", "<image>")  # Qwen2.5-VL: <|vision_start|><|image_pad|><|vision_end|>
    assert placeholder in model_cfg.prompt and model_cfg.prompt.format(question="Q?").count("Q?") == 1
    assert "text_encoder" in model_cfg
    load = OmegaConf.to_container(model_cfg.load)
    loader = get_method(load.pop("_target_"))
    inspect.signature(loader).bind(**load)  # every key is an argument of the loader
    pretrained = load.get("pretrained")
    offline = load.get("config") is not None or (pretrained is not None and (ASSETS / pretrained).is_dir())
    if not offline:
        return  # hub weights: the arguments are checked above, the weights are not loaded here
    from harness.families import family_of

    model, processor = instantiate(model_cfg.load, device="cpu")
    assert family_of(model).name == model_cfg.get("family", "llava")
    assert family_of(model).image_tokens(model) in (V, None)  # None: the count varies per image (budget = share of 576)
    assert processor is not None


# ---------------------------------------------------------------- tasks/

@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "tasks").glob("*.yaml")))
def test_task_suite_names_known_tasks_and_locates_their_data(name, manager, cache):
    from harness.tasks import data_locations, location_for, task_specs

    cfg = compose_resolved("config", [f"tasks={name}"])
    names = list(cfg.tasks.names)
    unknown = [task for task in names if task not in manager.task_index]
    assert not unknown, f"tasks={name} names tasks not in tasks/: {unknown}"
    data = data_locations(cfg.tasks.data)  # a `_target_` materialises its data under the tmp cache
    unlocated = [task for task in names if location_for(task, data) is None]
    assert not unlocated, f"tasks={name}: no data location for {unlocated} (keys: {sorted(data)})"
    if "_target_" not in cfg.tasks.data:  # a written mapping: each key is a data location some task reads
        unused = [key for key in data if not any(location_for(task, {key: "x"}) for task in names)]
        assert not unused, f"tasks={name}: data keys {unused} match no task of the suite"
    assert len(task_specs(names, data, manager)) == len(names)  # local directories exist, hub ids are ids


# ---------------------------------------------------------------- logger/

@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "logger").glob("*.yaml")))
def test_logger_instantiates_without_network(name):
    cfg = compose_resolved("config", [f"logger={name}"])
    if cfg.logger._target_ is None:  # logger=none: the runner logs nothing
        return
    logger = instantiate(cfg.logger)
    assert logger.resolved_mode() in ("online", "offline", "disabled")


def test_logger_default_is_wandb():
    assert compose_resolved("config").logger._target_ == "harness.wandb_logger.WandbLogger"
    assert compose_resolved("config", ["logger=none"]).logger._target_ is None


# ---------------------------------------------------------------- experiment/ and preset/

@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_every_job_of_an_experiment_composes_and_its_method_validates(name):
    cfg = compose_resolved("config", [f"+experiment={name}"])
    params = cfg.hydra.sweeper.params
    methods, budgets = str(params.method).split(","), [int(b) for b in str(params.budget).split(",")]
    assert set(methods) <= set(method_names()), methods
    assert {"vanilla", "blind"} <= set(methods) and budgets == [192, 128, 64]
    for method, budget in itertools.product(methods, budgets):
        job = compose_resolved("config", [f"+experiment={name}", f"method={method}", f"budget={budget}"])
        assert job.model.name == cfg.model.name and list(job.tasks.names) == list(cfg.tasks.names)
        overrides = {"text_encoder": "tiny"} if "text_encoder" in job.method else {}  # no CLIP download here
        instantiate(job.method, **overrides).schedule(L, V)


def test_quick_preset_runs_on_the_tiny_model():
    cfg = compose_resolved("bench", ["+preset=quick"])
    assert cfg.model.name == "tiny_random" and cfg.model.load.config == "tiny"
    assert set(cfg.methods) <= set(method_names()) and cfg.reps == 1


CHOICE_OPTIONS = ("positions", "decode_positions", "schedule", "variant", "stage")  # options with a closed set of values


@pytest.mark.parametrize("name", method_names())
def test_method_rejects_an_unknown_choice_by_name(name):
    """A typo in a method option is one error naming the key and the allowed values, never a silent default."""
    cfg = compose_resolved("config", [f"method={name}", "budget=64", f"model={OFFLINE_MODEL}"])
    for key in [k for k in CHOICE_OPTIONS if k in cfg.method]:
        with pytest.raises((ValueError, InstantiationException), match=rf"method\.{key}='bogus' is not allowed \(allowed: "):
            instantiate(cfg.method, **{key: "bogus"}).schedule(L, V)


def test_table_experiments_batch_accuracy_and_keep_batch_1_latency():
    """The 7B table sweeps run accuracy in batches of 8 (own run dirs) and time latency alone."""
    for name in ("core_table", "all_table"):
        cfg = compose_resolved("config", [f"+experiment={name}", "method=fastv", "budget=64"])
        assert cfg.batch_size == 8 and cfg.latency_samples > 0, name
        assert str(cfg.hydra.sweep.subdir).endswith("fastv-64-b8"), cfg.hydra.sweep.subdir
    assert compose_resolved("config", ["method=fastv", "budget=64"]).hydra.run.dir.endswith("fastv-64")
