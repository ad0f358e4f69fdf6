"""The schedule layer: pure arithmetic at the bottom of the import graph, one bisection, decisions returned.

The committed snapshot (tests/data/schedules.json, see tests/schedule_snapshot.py) holds every schedule every
method config decides for budgets 1..V on the 32-layer LLaVA layout and the tiny LLaVA-NeXT and Qwen2.5-VL
layouts; it was generated before the bisection was shared, so a changed stage, recorded budget, solved ratio
or error message fails here.
"""

from __future__ import annotations

import ast
import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
from schedule_snapshot import LAYOUTS, collect, line, settings

from harness.flops import layer_flops, prefill_flops
from harness.methods import load_method, method_names
from harness.schedule import (
    Schedule,
    Stage,
    bisect,
    paper_budget,
    realized_budget,
    scaled_schedule,
    vision_per_layer,
)

SNAPSHOT = Path(__file__).parent / "data" / "schedules.json"
ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize("module", ["harness.schedule", "harness.budget", "harness.flops"])
def test_arithmetic_modules_import_no_torch_hydra_or_methods(module):
    code = (f"import sys, {module}; print(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('torch', 'hydra', 'omegaconf') or m.startswith('harness.methods')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_schedule_module_imports_only_the_standard_library():
    tree = ast.parse((ROOT / "harness" / "schedule.py").read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported == {"__future__", "math", "collections.abc", "dataclasses"}


@pytest.mark.parametrize("name", method_names())
def test_every_schedule_equals_the_snapshot(name):
    """Each method config x schedule kind x layout x budget 1..V: stages, recorded budget, facts, errors."""
    expected = {k: v for k, v in json.loads(SNAPSHOT.read_text()).items() if k.split("|")[0] == name}
    got = collect(names=[name])
    assert got.keys() == expected.keys()
    for key, rows in got.items():
        lines = [text for count, text in expected[key] for _ in range(count)]  # budgets 1..V in order
        assert len(lines) == len(rows), key
        diff = [b for b, text in zip(rows, lines) if line(int(b), rows[b]) != text]
        assert not diff, f"{key} budget={diff[0]}: {line(int(diff[0]), rows[diff[0]])!r} != {lines[int(diff[0]) - 1]!r}"


def test_snapshot_covers_every_layout_and_option():
    keys = json.loads(SNAPSHOT.read_text()).keys()
    assert len(keys) == sum(len(settings(n)) for n in method_names()) * sum(len(c) for _, c, _ in LAYOUTS.values())
    assert {"pdrop|schedule=matched|llava_32|576", "sparsevlm|schedule=matched,variant=v2|qwen2_5_vl_28|4"} <= set(keys)


@pytest.mark.parametrize("name", method_names())
def test_schedule_returns_the_decision_and_leaves_the_method_unchanged(name):
    """A second schedule on another layout gives what a fresh method gives: nothing is carried in `self`."""
    method = load_method(name, 64)
    before = copy.deepcopy(vars(method))
    first = method.schedule(32, 576)
    assert isinstance(first, Schedule) and vars(method).keys() == before.keys()
    assert all(vars(method)[k] is v or vars(method)[k] == v for k, v in before.items()), name
    second = method.schedule(28, 256)
    assert second == load_method(name, 64).schedule(28, 256)


def test_recorded_budgets_of_the_baselines():
    assert load_method("vanilla", 64).schedule(32, 576) == Schedule([], 576)
    assert load_method("blind", 64).schedule(32, 576) == Schedule([], 0)
    assert type(load_method("fastv", 64.0).schedule(32, 576).budget) is int  # the validated budget


# ------------------------------------------------------------------ arithmetic, by hand
def test_vision_per_layer_realized_and_paper_accounting():
    stages = [Stage(1, 10), Stage(3, 4, merged=2)]  # 10 enter layer 2, 6 enter layer 4
    assert vision_per_layer(stages, 6, 20) == [20, 20, 10, 10, 6, 6]
    assert realized_budget(stages, 6, 20) == 72 / 6
    assert paper_budget(stages, 6, 20) == (20 + 10 + 10 + 6 + 6 + 6) / 6  # the stage layer counts the reduced set
    assert vision_per_layer([Stage(2, 5, before=True)], 4, 8) == [8, 8, 5, 5]


def test_bisect_ties_early_return_and_growth():
    step = lambda x: 0.0 if x < 0.5 else 2.0  # noqa: E731 -- target 1 is equidistant from both sides
    assert bisect(step, 1.0) == pytest.approx(0.5) and step(bisect(step, 1.0)) == 0.0  # a tie goes down
    assert step(bisect(step, 1.0, upper_on_tie=True)) == 2.0  # or up
    assert bisect(lambda x: 5.0, 3.0) == 0.0  # already reached at 0
    assert bisect(lambda x: x, 300.0) == pytest.approx(300.0)  # the upper end doubles past 1
    assert bisect(lambda x: x * 0, 3.0) == pytest.approx(2.0**20)  # unreachable: the caller checks the distance


def test_scaled_schedule_keeps_ratios_and_names_unreachable_budgets():
    # 6 layers, 80 tokens: (80 + 80 + 2 * 60a + 2 * 20a) / 6 = 40 at a = 1/2
    assert scaled_schedule("m", 40, [1, 3], [60, 20], 6, 80) == [Stage(1, 30), Stage(3, 10)]
    with pytest.raises(ValueError, match=r"budget=25 is unreachable for m .*\(allowed: 26\.\.80\)"):  # floor 160 / 6
        scaled_schedule("m", 25, [1, 3], [60, 20], 6, 80)


def test_flops_by_hand():
    # n=2, hidden=3, intermediate=5: 2 * (4*2*9 + 2*4*3 + 3*2*3*5) = 2 * (72 + 24 + 90)
    assert layer_flops(2, 3, 5) == 372.0
    assert prefill_flops([2, 2, 1], 3, 5) == 2 * 372.0 + 2 * (36 + 6 + 45)
    # grouped keys, kv_width=1: q, o 2*2*3*3 = 36; k, v 2*2*3*1 = 12; 2 * (36 + 12 + 24 + 90)
    assert layer_flops(2, 3, 5, kv_width=1) == 324.0
    assert layer_flops(2, 3, 5, kv_width=3) == layer_flops(2, 3, 5)


@pytest.mark.parametrize(("asset", "kv", "per_layer_636"), [
    # Vicuna-7B, full multi-head attention: unchanged, 2 * (4*636*4096^2 + 2*636^2*4096 + 3*636*4096*11008)
    ("llava-1.5-7b-hf", 4096, 2 * (4 * 636 * 4096**2 + 2 * 636**2 * 4096 + 3 * 636 * 4096 * 11008)),
    ("llava-v1.6-vicuna-7b-hf", 4096, 2 * (4 * 636 * 4096**2 + 2 * 636**2 * 4096 + 3 * 636 * 4096 * 11008)),
    # Qwen2.5-VL-7B: 4 KV heads of 28 (x 128) -> k, v project 3584 -> 512
    ("qwen2.5-vl-7b-instruct", 512,
     2 * (2 * 636 * 3584**2 + 2 * 636 * 3584 * 512 + 2 * 636**2 * 3584 + 3 * 636 * 3584 * 18944)),
])
def test_flops_of_the_7b_configs_count_keys_and_values_at_their_width(asset, kv, per_layer_636):
    from transformers import AutoConfig

    from harness.flops import kv_width, text_prefill_flops

    text = AutoConfig.from_pretrained(ROOT / "harness" / "assets" / asset).text_config
    assert kv_width(text) == kv
    assert text_prefill_flops(text, [636, 636, 100]) == 2 * per_layer_636 + layer_flops(100, text.hidden_size,
                                                                                      text.intermediate_size, kv)
