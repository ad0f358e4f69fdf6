"""Checks every method gets for free: parametrized over conf/method/*.yaml (a new YAML joins automatically).

That every method config composes and instantiates is in test_configs.py.
"""

from __future__ import annotations

import pytest
import torch
from helpers import QUESTIONS

from harness.engine import PruningEngine
from harness.methods import load_method, method_names
from harness.methods.base import Selection
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
    if engine.pre_llm:  # a method that may keep fewer (CDPruner: the tiny model's 64-dim features cap its DPP) says so
        assert counts == [counts[0]] * L and abs(counts[0] + engine.state.kept_fewer - 192) <= 1
        if not getattr(method, "may_keep_fewer", False):
            assert engine.state.kept_fewer == 0
    else:
        assert counts == vision_per_layer(engine.stages, L, V)
        assert abs(sum(counts) / L - 192) <= 1


@pytest.mark.parametrize("name", [m for m in METHODS if m not in NO_BUDGET])
@pytest.mark.parametrize("budget", [0, 577, "x"])
def test_bad_budget_names_the_value(tiny, name, budget):
    model, _ = tiny
    with pytest.raises(ValueError, match=f"budget={budget!r}" if isinstance(budget, str) else f"budget={budget}"):
        PruningEngine(model, load_method(name, budget))


@pytest.mark.parametrize("name", [m for m in METHODS if m not in NO_BUDGET])
@pytest.mark.parametrize("budget", [192, 64])
def test_a_kept_set_never_repeats_a_token(tiny, prompts, name, budget):
    """Engine-wide: every kept set holds distinct tokens and the recorded counts are those distinct tokens (+ merged);
    a pre-LLM method keeps the budget, or fewer only if it declares `may_keep_fewer`, and the shortfall is recorded."""
    model, _ = tiny
    method = load_method(name, budget)
    engine = PruningEngine(model, method, record_kept=True)
    with torch.no_grad(), engine:
        engine.generate(prompts[2], instruction=QUESTIONS[2], max_new_tokens=1, do_sample=False)
    st = engine.state
    assert st.kept, "record_kept records every stage's kept set"
    for layer, kept in st.kept.items():
        assert len(kept) == len(set(kept)) and kept == sorted(kept), (layer, kept)
    if engine.pre_llm:
        n = len(st.kept[0]) + st.n_merged
        assert st.vision_per_layer == [n] * L and n + st.kept_fewer == budget
        assert st.kept_fewer == 0 or getattr(method, "may_keep_fewer", False)
    else:
        assert st.kept_fewer == 0


def _with_a_repeated_token(method):
    """Make the method hand the engine its kept set with the first kept token twice (its count unchanged)."""
    def repeat(sel: Selection) -> Selection:
        keep = sel.keep.clone()
        if keep.numel() >= 2:
            keep[1] = keep[0]
        else:  # pool keeps no original token: two copies of token 0
            keep = torch.zeros(2, dtype=torch.long, device=keep.device)
        return Selection(keep=keep, merged=sel.merged)

    if getattr(method, "pre_llm", False):
        reduce = method.reduce
        method.reduce = lambda ctx: repeat(reduce(ctx))
    else:
        select = method.select
        method.select = lambda ctx: repeat(select(ctx))
    return method


@pytest.mark.parametrize("name", [m for m in METHODS if m not in NO_BUDGET])
def test_the_engine_refuses_a_repeated_token(tiny, prompts, name):
    """A method bug that repeats a token is one clear error, never a duplicate fed to the LLM and counted twice."""
    model, _ = tiny
    engine = PruningEngine(model, _with_a_repeated_token(load_method(name, 128)))
    with torch.no_grad(), engine, pytest.raises(RuntimeError, match=f"{name} returned .* distinct tokens .*never repeats"):
        engine.generate(prompts[0], instruction=QUESTIONS[0], max_new_tokens=1, do_sample=False)


PRE_LLM = [m for m in METHODS if m not in NO_BUDGET and getattr(load_method(m, 128), "pre_llm", False)]


@pytest.mark.parametrize("name", PRE_LLM)  # in-LLM stages keep exactly their count (apply_stage)
def test_a_pre_llm_method_keeps_fewer_only_if_it_says_so(tiny, prompts, name):
    model, _ = tiny
    method = load_method(name, 128)
    reduce = method.reduce

    def one_fewer(ctx):  # drops the last kept token (pool, which keeps none: the last merged one)
        sel = reduce(ctx)
        if sel.keep.numel():
            return Selection(keep=sel.keep[:-1], merged=sel.merged)
        return Selection(keep=sel.keep, merged=sel.merged[:-1])

    method.reduce = one_fewer
    engine = PruningEngine(model, method)
    with torch.no_grad(), engine:
        if getattr(method, "may_keep_fewer", False):
            engine.generate(prompts[0], instruction=QUESTIONS[0], max_new_tokens=1, do_sample=False)
            assert engine.state.kept_fewer >= 1 and engine.state.vision_per_layer[0] + engine.state.kept_fewer == 128
        else:
            with pytest.raises(RuntimeError, match="expected budget=128 \\(fewer only for a method that declares"):
                engine.generate(prompts[0], instruction=QUESTIONS[0], max_new_tokens=1, do_sample=False)
