"""What methods declare about themselves (harness.methods.base.FACTS): recorded in results.json `method_facts`,
and the paper's own token count (`tokens.avg_vision_tokens_paper`) written only where a method declares one."""

from __future__ import annotations

import pytest
from helpers import compose_job

from harness import runner
from harness.methods import load_method, method_names
from harness.methods.base import FACTS, declared_facts
from harness.schedule import paper_tokens, realized_budget

L, V = 32, 576
DECLARED = {  # method -> the facts it declares beyond the defaults
    "vanilla": {"reference": True, "ignores_budget": True},
    "blind": {"ignores_budget": True},
    "pool": {"difficult_reference": True},
    "sparsevlm": {"paper_accounting": "stage_layer_reduced"},
    "adaptinfer": {"paper_accounting": "stage_layer_reduced"},
    "dart": {"paper_accounting": "label"},
}


@pytest.mark.parametrize("name", method_names())
def test_each_method_declares_its_facts(name):
    method = load_method(name, 64, **({"text_encoder": "tiny"} if name == "cdpruner" else {}))
    assert declared_facts(method) == {**FACTS, **DECLARED.get(name, {})}


@pytest.mark.parametrize(
    ("name", "budget", "options", "paper"),
    [
        ("sparsevlm", 192, {}, 192.03125),               # 300/200/110 at 2/6/15, stage layers counted reduced
        ("adaptinfer", 64, {}, 64.96875),                  # 133/27/3 at 1/10/20
        ("adaptinfer", 192, {"schedule": "derived"}, 192.125),
        ("dart", 64, {}, 64.0),                            # the label: max_num_trunction = 64 (68 kept)
        ("divprune", 56, {}, None),                        # pre-LLM: the realized 56 is the only count
        ("pdrop", 270, {}, None),                          # stages act before their layer: realized = paper
    ],
)
def test_paper_tokens_follow_the_declared_accounting(name, budget, options, paper):
    method = load_method(name, budget, **{"schedule": "paper", **options})
    decision = method.schedule(L, V)
    stages = decision.stages
    value = paper_tokens(declared_facts(method)["paper_accounting"], stages, decision.budget, L, V)
    assert value == (None if paper is None else pytest.approx(paper))
    if name == "dart":
        assert realized_budget(stages, L, V) == pytest.approx((2 * 576 + 30 * 68) / 32)  # 99.75, not the label


@pytest.mark.parametrize(
    ("method", "budget", "paper"),
    [("dart", 64, 64.0), ("divprune", 56, None)],
)
def test_results_json_writes_the_paper_count_only_where_it_means_something(method, budget, paper, tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEBENCH_CACHE", str(tmp_path / "cache"))
    cfg = compose_job(["model=tiny_random", "tasks=fixtures", "tasks.names=[gqa]", f"method={method}",
                       f"budget={budget}", "method.schedule=paper", "limit=1", "max_new_tokens=2", "logger=none"])
    results = runner.run(cfg, tmp_path / "run")
    assert results["tokens"].get("avg_vision_tokens_paper") == paper
    assert results["method_facts"]["schedule"] == "paper"
    assert {k: results["method_facts"][k] for k in FACTS} == {**FACTS, **DECLARED.get(method, {})}
