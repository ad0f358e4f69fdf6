"""Training-only pieces of the embedded model's recipe: the lookup block, the bind-phase growth, the run
state and the model card built from it."""

import os
import random
import subprocess
import sys

import pytest
import torch

from harness.methods.base import Stage
from harness.model import build_word_processor
from harness.shapes import data
from harness.shapes.card import lm_stage_labels
from harness.shapes.curriculum import TASKS, decay_progress, warmup_cosine_lr
from harness.shapes.heldout import ROBUSTNESS_METHODS, random_at_layer2
from harness.shapes.packing import (
    KIND_PROMPT,
    Blocks,
    Layout,
    add_lookup_block,
    build_sequence,
    collate,
    lm_hidden,
)
from harness.shapes.state import TrainState, load_checkpoint, save_checkpoint
from harness.shapes.train import Recipe, main, parse_args


@pytest.fixture(scope="module")
def shapes_processor():
    return build_word_processor(data.vocabulary())


def obj(shape: str, colour: str, row: int) -> data.Obj:
    return data.Obj(shape=shape, colour=colour, size="small", row=row, col=0, evidence=[row * 24, row * 24 + 1])


def lookup_pairs(seq, start: int, blocks: Blocks) -> dict[tuple[str, str], str]:
    """(key word, value word) -> task for every labelled position of the block from `start`."""
    word = blocks.tokenizer.convert_ids_to_tokens
    pairs = {}
    for i in range(start, len(seq.ids)):
        if seq.labels[i] != -100:
            assert seq.labels[i] == seq.ids[i + 1]  # next-token target: the value word right after its key
            pairs[(word(seq.ids[i]), word(seq.ids[i + 1]))] = seq.tasks[i]
    return pairs


def with_lookup_block(blocks: Blocks, objects: list[data.Obj]):
    """A two-patch sequence with the lookup block of `objects` appended; (sequence, block start)."""
    seq = build_sequence(blocks, kept=[0, 1], questions=[])
    start = len(seq.ids)
    add_lookup_block(seq, blocks, data.Scene(objects), random.Random(0))
    return seq, start


def test_lookup_block_pairs_only_unique_attributes(shapes_processor):
    blocks = Blocks(shapes_processor.tokenizer)
    # stars twice, red twice: circle and square are unique shapes, blue and green unique colours
    seq, start = with_lookup_block(blocks, [obj("star", "red", 0), obj("circle", "blue", 4), obj("star", "green", 8), obj("square", "red", 12)])
    assert seq.ids[start] == blocks.newline and seq.labels[start] == -100
    assert set(seq.group[start:]) == {1} and set(seq.kind[start:]) == {KIND_PROMPT}
    assert seq.offset[start:] == list(range(len(seq.ids) - start))
    assert lookup_pairs(seq, start, blocks) == {
        ("circle", "blue"): "lookup/colour",
        ("square", "red"): "lookup/colour",
        ("blue", "circle"): "lookup/shape",
        ("green", "star"): "lookup/shape",
    }
    assert len(seq.ids) - start == 1 + 2 * 4  # newline + 4 pairs, no ambiguous word pair


def test_lookup_block_absent_when_nothing_is_unique(shapes_processor):
    blocks = Blocks(shapes_processor.tokenizer)
    seq, start = with_lookup_block(blocks, [obj("star", "red", 0), obj("star", "blue", 4), obj("circle", "red", 8), obj("circle", "blue", 12)])
    assert len(seq.ids) == start


def test_growth_keeps_the_bind_phase_function(tmp_path):
    """After the bind phase on layers 0-3, the 28 other layers join with zero residual outputs:
    the 32-layer forward equals the 4-layer one, and the new layers then have gradients."""
    recipe = Recipe(parse_args(["--workdir", str(tmp_path), "--grow-from", "0,1,2,3"]))
    recipe.state.bind_end = 0.3
    blocks, model = recipe.blocks, recipe.model
    torch.manual_seed(0)
    for layer in model.model.language_model.layers:  # away from init, so a skipped layer would matter
        for p in layer.parameters():
            p.data.add_(0.05 * torch.randn_like(p))
    kept = list(range(0, 576, 6))  # 96 tokens
    question = (blocks.prompt("What colour is the star?"), blocks.words("red"), "gqa/colour")
    batch = collate([build_sequence(blocks, kept, [question])], Layout(n_image=96), blocks.pad)
    projected = torch.randn(1, 576, model.config.text_config.hidden_size)
    with torch.no_grad():
        before, _ = lm_hidden(model, batch, projected, layers=recipe.schedule.grow_layers)
        full, _ = lm_hidden(model, batch, projected)
        assert (before - full).abs().max() > 1e-3  # the other layers change the output before growth
        recipe.schedule.grow()
        after, _ = lm_hidden(model, batch, projected)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    after, _ = lm_hidden(model, batch, projected)
    after.square().sum().backward()
    new_layer = model.model.language_model.layers[4]
    assert new_layer.self_attn.o_proj.weight.grad.abs().sum() > 0


@pytest.mark.slow
def test_extend_lm_continues_a_finished_stage(tmp_path):
    """--extend-lm reopens a finished language stage for more minutes with a warm-restarted LR,
    keeps the step count and time, and refuses a stage that is still running."""
    small = ["--workdir", str(tmp_path), "--batch-lm", "1", "--questions-per-image", "2", "--log-every", "1",
             "--eval-pope", "1", "--eval-gqa", "1", "--eval-mme", "1", "--eval-robust", "1"]  # fmt: skip
    recipe = Recipe(parse_args(small))
    recipe.state.stage, recipe.state.phase, recipe.state.bind_end, recipe.state.grown = "done", 2, 0.1, True
    recipe.state.step["lm"], recipe.clock.offset["lm"] = 50, 600.0
    recipe.save()
    with pytest.raises(ValueError, match="--extend-lm"):  # no finished stage to extend
        Recipe(parse_args(small + ["--workdir", str(tmp_path / "fresh"), "--extend-lm", "1"]))

    recipe = Recipe(parse_args(small + ["--extend-lm", "0.1", "--lr-extend", "3e-4"]))
    assert recipe.state.stage == "lm" and recipe.extension["start_step"] == 50
    assert "continued for 0.1 min" in recipe.state.notes[-1]
    recipe.train_lm()
    assert recipe.state.stage == "final"
    assert recipe.state.step["lm"] > 50 and recipe.state.elapsed["lm"] >= 606.0
    lrs = [r["lr"] for r in recipe.curve.records() if "lr" in r]
    assert lrs and 0 < lrs[0] <= 3e-4 / 100 * 1.01  # warm-up from the extension's first step
    assert max(lrs) <= 3e-4
    assert len(Recipe(parse_args(small + ["--extend-lm", "0.1"])).state.extensions) == 2  # finished: a new one
    assert Recipe(parse_args(small + ["--restart-lm"])).extension is None  # a fresh stage has its own budget


def test_lm_stage_labels_follow_restarts_and_extensions():
    """A step counter that goes back starts a new language stage; the first ones were discarded, and
    the last one's records after an --extend-lm start are marked as its continuation."""
    steps = [0, 400, 800, 0, 300, 10, 500, 900, 1000, 1400]
    labels = lm_stage_labels([{"step": s} for s in steps], n_discarded=2, extension_steps=[900])
    assert labels == ["1 (discarded)"] * 3 + ["2 (discarded)"] * 2 + ["3"] * 3 + ["3, continued"] * 2
    assert lm_stage_labels([{"step": 5}, {"step": 9}], n_discarded=0, extension_steps=[]) == ["1", "1"]


def test_model_card_describes_the_recorded_run_not_todays_flags(tmp_path):
    """--card-only with other flags still reports the flags the checkpoint was trained with."""
    work = ["--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    recipe = Recipe(parse_args(work + ["--batch-lm", "3", "--lr-lm", "0.002"]))
    recipe.record_run()  # as a training stage does when it starts
    recipe.save()
    (tmp_path / "out").mkdir()
    main(work + ["--card-only", "--batch-lm", "7", "--lr-lm", "0.009"])
    card = (tmp_path / "out" / "README.md").read_text()
    assert "batch 3 images,\n   AdamW 0.002 " in card
    assert "batch 7" not in card and "0.009" not in card


def test_state_reads_the_free_form_dict_of_earlier_checkpoints():
    """An earlier checkpoint's dict (history as one "; "-joined string, bind phase as a dict, no align
    stage) loads into the typed record; an unknown key is an error that names it."""
    legacy = {"stage": "lm", "step": {"vision": 5, "lm": 7}, "images": {"vision": 80, "lm": 28},
              "elapsed": {"total": 9.0, "vision": 4.0, "lm": 3.0}, "note": "first; second event",
              "bind": {"end": 0.25, "grown": True}, "args": {"seed": 3}}  # fmt: skip
    state = TrainState.from_dict(legacy)
    assert state.notes == ["first", "second event"]
    assert (state.bind_end, state.grown) == (0.25, True)
    assert state.step == {"vision": 5, "lm": 7, "align": 0} and state.images["align"] == 0 and state.elapsed["align"] == 0
    assert state.args == {"seed": 3} and state.task_loss == dict.fromkeys(TASKS, 1.0)
    with pytest.raises(ValueError, match="unknown keys \\['colour_scale'\\]"):
        TrainState.from_dict({**legacy, "colour_scale": 3.0})


def test_checkpoint_round_trip_keeps_the_record(tmp_path):
    state = TrainState(stage="align", bind_end=0.1, notes=["a; b"], extensions=[{"start_step": 4}])
    save_checkpoint(state, {"model": {}, "heads": {}, "torch_rng": torch.get_rng_state()}, tmp_path / "state.pt")
    loaded, weights = load_checkpoint(tmp_path / "state.pt")
    assert loaded == state and set(weights) == {"model", "heads", "torch_rng"}
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # no temporary file left behind


@pytest.mark.slow
def test_importing_the_recipe_has_no_side_effects():
    """Importing sets no environment variable and registers no attention function; setting up a
    recipe registers the packed attention."""
    code = ("import os, harness.shapes.train; from transformers import AttentionInterface; "
            "print('OMP_WAIT_POLICY' in os.environ, 'prunebench_packed' in AttentionInterface._global_mapping)")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_one_lr_formula_hand_values():
    """Linear warm-up times a cosine from 1 to 0.1 of the peak (progress clipped at 1)."""
    assert warmup_cosine_lr(1e-3, 1, 100, 0.0) == pytest.approx(1e-5)
    assert warmup_cosine_lr(1e-3, 100, 100, 0.0) == 1e-3
    assert warmup_cosine_lr(1e-3, 500, 100, 0.5) == pytest.approx(1e-3 * (0.1 + 0.45))
    assert warmup_cosine_lr(1e-3, 500, 100, 1.0) == pytest.approx(1e-4)
    assert warmup_cosine_lr(1e-3, 500, 100, 3.0) == pytest.approx(1e-4)
    assert decay_progress(None, 0.9) == 0.0 and decay_progress(0.4, 0.7) == pytest.approx(0.5)


def test_robustness_rows_use_the_harness_random_method():
    """The L2 rows keep exactly 192 / 32 image tokens entering layer 2 on the 32-layer model."""
    for mode, keep in (("L2_random192_original", 192), ("L2_random192_compact", 192), ("L2_random32_original", 32)):
        method = ROBUSTNESS_METHODS[mode]()
        assert method.schedule(32, 576).stages == [Stage(1, keep)], mode
        assert method.positions == mode.rsplit("_", 1)[1]
    assert ROBUSTNESS_METHODS["pre_random32_compact"]().pre_llm
    with pytest.raises(ValueError, match="keep=33"):
        random_at_layer2(33, "original")
