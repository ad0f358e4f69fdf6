"""Checks every method gets for free: parametrized over conf/method/*.yaml (a new YAML joins automatically).

That every method config composes and instantiates is in test_configs.py.
"""

from __future__ import annotations

import pytest
import torch
from conftest import QUESTIONS

from harness.engine import PruningEngine
from harness.methods import load_method, method_names
from harness.schedule import realized_budget, vision_per_layer

METHODS = method_names()
NO_BUDGET = {"vanilla", "blind"}  # they ignore the budget by definition
V, L = 576, 32


@pytest.mark.parametrize("name", [m for m in METHODS if m not in NO_BUDGET])
@pytest.mark.parametrize("budget", [192, 128, 64])
def test_matched_budget_is_realized_on_the_7b_layout(name, budget):
    """Realized mean of image tokens entering each layer (merged included) = budget +-1 on 32 layers, 576 tokens."""
    method = load_method(name, budget)
    stages = method.schedule(L, V).stages
    if getattr(method, "pre_llm", False):
        assert stages == []
        return  # every layer sees the reduced block; the engine test below checks the count
    assert abs(realized_budget(stages, L, V) - budget) <= 1, (stages, realized_budget(stages, L, V))


@pytest.mark.parametrize("name", [m for m in METHODS if m != "blind"])
def test_full_budget_is_exactly_vanilla(tiny, prompts, name):
    """budget = 576 through the engine: identical first-token logits and generated tokens."""
    model, _ = tiny
    inputs = prompts[1]
    n = inputs["input_ids"].shape[1]
    kwargs = dict(max_new_tokens=4, do_sample=False, output_logits=True)
    with torch.no_grad():
        ref = model.generate(**inputs, **kwargs, return_dict_in_generate=True)
        engine = PruningEngine(model, load_method(name, V))
        with engine:
            new_tokens, out = engine.generate(inputs, **kwargs)
    assert torch.equal(new_tokens, ref.sequences[0, n:])
    for step, ref_step in zip(out.logits, ref.logits):
        assert (step - ref_step).abs().max().item() == 0.0
    assert engine.state.vision_per_layer == [V] * L


@pytest.mark.parametrize("name", [m for m in METHODS if m not in NO_BUDGET])
def test_engine_follows_the_schedule(tiny, prompts, name):
    """At budget 192 the engine's recorded per-layer counts are the schedule's, and their mean is the budget."""
    model, _ = tiny
    method = load_method(name, 192)
    with torch.no_grad():
        engine = PruningEngine(model, method, record_kept=True)
        engine.sample_seed = 11
        with engine:
            engine.generate(prompts[0], instruction=QUESTIONS[0], max_new_tokens=2, do_sample=False)
    counts = engine.state.vision_per_layer
    if engine.pre_llm:
        assert counts == [counts[0]] * L and abs(counts[0] - 192) <= 1
    else:
        assert counts == vision_per_layer(engine.stages, L, V)
    assert abs(sum(counts) / L - 192) <= 1


@pytest.mark.parametrize("name", [m for m in METHODS if m not in NO_BUDGET])
@pytest.mark.parametrize("budget", [0, 577, "x"])
def test_bad_budget_names_the_value(tiny, name, budget):
    model, _ = tiny
    with pytest.raises(ValueError, match=f"budget={budget!r}" if isinstance(budget, str) else f"budget={budget}"):
        PruningEngine(model, load_method(name, budget))
