"""The model axis: every in-LLM method on LLaVA-NeXT and Qwen2.5-VL (tiny random models, fp32).

As the method matrix of tests/test_methods.py, run per family: full budget is vanilla exactly; the pruned
run equals the shared masked-eager reference (tests/reference.py) given its kept sets; the realized count
is the same fraction budget/576 of each sample's image tokens (+-1 token); decode continues at the family's
positions; text-only prompts; two image sizes on Qwen2.5-VL.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import (
    MODEL_CONF,
    SIZES,
    family_inputs,
    image_count,
    is_pre_llm,
    method_for,
    run_cli,
    run_fixtures,
)
from omegaconf import OmegaConf
from reference import hidden_by_layer, masked_reference

from harness.engine import PruningEngine
from harness.families import (
    REFERENCE_TOKENS,
    family_of,
    scaled_budget,
)
from harness.methods import load_method, method_names
from harness.model import load_model

IN_LLM = [m for m in method_names() if m != "blind" and not is_pre_llm(m)]


@pytest.mark.parametrize("name", IN_LLM)
def test_full_budget_is_exactly_vanilla(family, name):
    fam, model, processor, cfg = family
    for size in SIZES[fam]:
        inputs = family_inputs(processor, cfg, size)
        n = inputs["input_ids"].shape[1]
        kwargs = dict(max_new_tokens=3, do_sample=False, output_logits=True)
        with torch.no_grad():
            ref = model.generate(**inputs, **kwargs, return_dict_in_generate=True)
            engine = PruningEngine(model, method_for(name, REFERENCE_TOKENS, cfg))
            with engine:
                new_tokens, out = engine.generate(inputs, **kwargs)
        assert torch.equal(new_tokens, ref.sequences[0, n:])
        for step, ref_step in zip(out.logits, ref.logits):
            assert (step - ref_step).abs().max().item() == 0.0
        assert engine.state.vision_per_layer == [image_count(model, inputs)] * engine.num_layers


@pytest.mark.parametrize("name", [m for m in IN_LLM if m != "vanilla"])
def test_pruned_run_equals_masked_reference_and_realizes_the_fraction(family, name):
    """Budget 192 (a third of each image): logits and tokens of the masked-eager reference given the kept sets;
    the mean image tokens per layer is round(192 * V / 576) +-1 for each image size."""
    fam, model, processor, cfg = family
    for seed, size in enumerate(SIZES[fam]):
        inputs = family_inputs(processor, cfg, size, seed)
        n, v = inputs["input_ids"].shape[1], image_count(model, inputs)
        method = method_for(name, 192, cfg, positions="original", decode_positions="global", variant="v2")
        with torch.no_grad():
            engine = PruningEngine(model, method, record_kept=True)
            engine.sample_seed = 5
            with engine:
                new_tokens, out = engine.generate(inputs, max_new_tokens=3, do_sample=False, output_logits=True)
        st = engine.state
        assert st.image_tokens == v
        assert abs(sum(st.vision_per_layer) / engine.num_layers - scaled_budget(192, v)) <= 1
        assert scaled_budget(192, v) == round(192 * v / REFERENCE_TOKENS)
        assert st.kept and min(st.kept) >= 1  # layer 0 always sees the whole prompt
        hidden = hidden_by_layer(st.kept, st.image_span[:1] + (st.image_span[0] + v,), n, engine.num_layers)
        ref = masked_reference(model, inputs, hidden, max_new_tokens=3)
        assert torch.equal(new_tokens, ref.sequences[0, n:])
        for step, ref_step in zip(out.logits, ref.logits):
            assert (step - ref_step).abs().max().item() < 1e-4


def test_fastv_kept_set_is_the_top_of_eager_attention(family):
    """FastV's kept set on each family: top-k of layer K-1's last-row eager attention, mean over heads."""
    fam, model, processor, cfg = family
    for size in SIZES[fam]:
        inputs = family_inputs(processor, cfg, size)
        ids = inputs["input_ids"][0]
        where = (ids == family_of(model).image_token_id(model)).nonzero().flatten()
        start, end = int(where[0]), int(where[-1]) + 1
        method = method_for("fastv", 128, cfg)
        with torch.no_grad():
            model.set_attn_implementation({"text_config": "eager"})
            try:
                attn = model(**inputs, output_attentions=True).attentions[method.K - 1]  # [1, H, N, N]
            finally:
                model.set_attn_implementation({"text_config": "sdpa"})
            engine = PruningEngine(model, method, record_kept=True)
            with engine:
                engine.generate(inputs, max_new_tokens=1, do_sample=False)
        keep = engine.stages[0].keep
        scores = attn[0, :, -1, start:end].mean(0)  # [V]
        expected = sorted(torch.topk(scores, keep).indices.tolist())
        assert engine.state.kept[method.K] == expected


@pytest.mark.parametrize("name", ["fastv", "adaptinfer"])
def test_per_layer_decode_continues_at_hf_positions_when_nothing_is_pruned(family, name):
    """decode_positions=per_layer at full budget: each layer's cache is full, so its position is HF's own
    (Qwen2.5-VL: cache length + rope_deltas); the run is vanilla exactly."""
    fam, model, processor, cfg = family
    inputs = family_inputs(processor, cfg, SIZES[fam][-1])
    n = inputs["input_ids"].shape[1]
    with torch.no_grad():
        ref = model.generate(**inputs, max_new_tokens=4, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
        engine = PruningEngine(model, method_for(name, REFERENCE_TOKENS, cfg, decode_positions="per_layer"))
        assert engine.decode_positions == "per_layer"
        with engine:
            new_tokens, out = engine.generate(inputs, max_new_tokens=4, do_sample=False, output_logits=True)
    assert torch.equal(new_tokens, ref.sequences[0, n:])
    for step, ref_step in zip(out.logits, ref.logits):
        assert (step - ref_step).abs().max().item() == 0.0


@pytest.mark.parametrize("name", ["fastv", "sparsevlm", "pdrop"])
def test_text_only_prompt_is_vanilla(family, name):
    _, model, processor, cfg = family
    inputs = family_inputs(processor, cfg, None)
    n = inputs["input_ids"].shape[1]
    with torch.no_grad():
        ref = model.generate(**inputs, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
        engine = PruningEngine(model, method_for(name, 64, cfg))
        with engine:
            new_tokens, _ = engine.generate(inputs, max_new_tokens=3, do_sample=False)
    assert torch.equal(new_tokens, ref.sequences[0, n:])
    assert engine.state.image_tokens == 0 and engine.state.vision_per_layer == [0] * engine.num_layers


def test_qwen_image_sizes_get_their_own_schedules():
    """Two image sizes: different token counts, each with the schedule of its own fraction."""
    cfg = OmegaConf.load(MODEL_CONF / "tiny_qwen2_5_vl.yaml")
    model, processor = load_model("qwen2_5_vl", config="tiny", num_layers=28, dtype="float32", device="cpu")
    engine = PruningEngine(model, method_for("fastv", 128, cfg))
    counts, keeps = [], []
    with torch.no_grad(), engine:
        for size in SIZES["qwen2_5_vl"]:
            inputs = family_inputs(processor, cfg, size)
            engine.generate(inputs, max_new_tokens=1, do_sample=False)
            counts.append(engine.state.image_tokens)
            keeps.append(engine.stages[0].keep)
            assert abs(sum(engine.state.vision_per_layer) / 28 - round(128 * counts[-1] / 576)) <= 1
    assert counts == [64, 120] and keeps[0] < keeps[1]


def test_compact_positions_are_refused_under_mrope(family):
    fam, model, _, _ = family
    method = load_method("adaptinfer", 64)  # compact by default
    if fam == "qwen2_5_vl":
        with pytest.raises(ValueError, match="adaptinfer: positions=compact .* qwen2_5_vl .*method.positions=original"):
            PruningEngine(model, method)
    else:
        assert PruningEngine(model, method).method.positions == "compact"


@pytest.mark.parametrize("config,count", [
    ("llava-v1.6-vicuna-7b-hf", 7_063_431_168),   # LLaVA-1.5-7B's 7,063,427,072 + the 4,096-wide image_newline
    ("qwen2.5-vl-7b-instruct", 8_292_166_656),    # the hub's parameter count of Qwen/Qwen2.5-VL-7B-Instruct
])
def test_7b_architectures_build_offline_with_the_hub_parameter_count(config, count):
    from transformers import AutoConfig

    from harness.families import family_named
    from harness.model import ASSETS

    model_config = AutoConfig.from_pretrained(ASSETS / config)
    family = {"llava_next": "llava_next", "qwen2_5_vl": "qwen2_5_vl"}[model_config.model_type]
    with torch.device("meta"):
        model = family_named(family).model_class._from_config(model_config)
    assert sum(p.numel() for p in model.parameters()) == count


@pytest.mark.slow
def test_run_py_on_tiny_qwen_records_the_realized_fraction(tmp_path):
    results, samples = run_fixtures("tiny_qwen2_5_vl", "fastv", 1, tmp_path)
    tokens = results["tokens"]
    assert tokens["budget_label"] == "11.1%" and len(tokens["vision_per_layer"]) == 28
    for s in samples:  # each sample: round(64 * V / 576) image tokens on average over the layers, +-1
        assert abs(sum(s["vision_per_layer"]) / 28 - round(64 * s["image_tokens"] / 576)) <= 1
    fraction = np.mean([np.mean(s["vision_per_layer"]) / s["image_tokens"] for s in samples])
    assert tokens["realized_fraction"] == pytest.approx(fraction)
    assert results["method_facts"]["stage_source"] == "scaled by depth (no Qwen port in FastV's code)"


@pytest.mark.parametrize("name,kind", [("adaptinfer", "paper"), ("adaptinfer", "derived"), ("dart", "paper"),
                                       ("divprune", "paper"), ("pdrop", "paper"), ("sparsevlm", "paper")])
def test_published_schedules_are_refused_off_llava_with_one_line(family, name, kind):
    fam, model, _, cfg = family
    with pytest.raises(ValueError, match=rf"^{name}: method.schedule={kind} uses counts published for LLaVA-1.5's "
                                         rf"576 image tokens; model family {fam} has no published {name} counts "
                                         r"\(allowed there: method.schedule=matched\)$"):
        PruningEngine(model, method_for(name, 128, cfg, schedule=kind))


def test_adaptinfer_on_qwen_uses_its_official_port_layers(family):
    fam, model, _, cfg = family
    engine = PruningEngine(model, method_for("adaptinfer", 64, cfg))
    expected = [0, 9, 19] if fam == "qwen2_5_vl" else [1, 10, 20]  # Qwen2-VL port's pruning_loc / LLaVA's own
    assert [s.layer for s in engine.stages] == expected


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny_llava_next", "tiny_qwen2_5_vl"])
def test_run_py_refuses_a_paper_schedule_off_llava_before_any_sample(tmp_path, model):
    proc = run_cli([f"model={model}", "tasks=fixtures", "method=adaptinfer", "budget=128", "method.schedule=paper",
                    "method.positions=original", "limit=1", "logger=none", f"hydra.run.dir={tmp_path / 'run'}"],
                   tmp_path / "cache", threads=2)
    assert proc.returncode != 0
    family = "llava_next" if model == "tiny_llava_next" else "qwen2_5_vl"
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: adaptinfer: method.schedule=paper uses counts published for LLaVA-1.5's 576 image tokens; "
        f"model family {family} has no published adaptinfer counts (allowed there: method.schedule=matched)")
    assert not (tmp_path / "run" / "samples.jsonl").exists()


@pytest.mark.slow
def test_run_py_refuses_a_method_the_family_cannot_run(tmp_path):
    proc = run_cli(["model=tiny_qwen2_5_vl", "tasks=fixtures", "method=visionzip", "budget=64", "limit=1",
                    "logger=none", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path / "cache", threads=2)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: visionzip reads the vision CLS token's attention; the qwen2_5_vl vision tower has no CLS token")
    assert not (tmp_path / "run" / "results.json").exists()


def test_bench_prompt_is_one_image_the_model_accepts(family):
    """harness.bench's fixed prompt on each family: HF's own check that image tokens match the features passes."""
    from harness.bench import fixed_prompt, vision_flops

    fam, model, _, _ = family
    inputs = fixed_prompt(model, question_tokens=8, prefix_tokens=4, seed=0)
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[1] == inputs["input_ids"].shape[1]
    assert image_count(model, inputs) == {"llava_next": 744, "qwen2_5_vl": 576}[fam]  # 144 + 4 * 144 + 24 rows; 48^2 / 4
    assert vision_flops(model, inputs) > 0
