"""Attention-shift analysis: change points, proposed stages, the probe's attention, the written config."""

from __future__ import annotations

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from harness import analyze
from harness.analyze import AttentionProbe, change_layers, propose_stages
from harness.engine import PruningEngine


def test_change_layer_of_a_step_in_cumulative_attention():
    """Attention concentrated at layer 12 makes the cumulative curve a step there: L2 binary segmentation
    splits at 12. A uniform token gives a ramp, split in the middle."""
    attention = np.full((31, 5), 0.001)
    attention[12, 0] = 5.0  # token 0: the most attended, all of it at layer 12
    attention[:, 1] = 0.1  # token 1: uniform -> a linear ramp
    assert change_layers(attention, top_k=1) == [12]
    assert change_layers(attention, top_k=2) == [12, 16]


def test_propose_stages_takes_the_modes_and_never_layer_0():
    hist = np.zeros(31, dtype=int)
    hist[[0, 3, 9, 20, 25]] = [50, 10, 30, 20, 5]
    assert propose_stages(hist, 3) == [3, 9, 20]
    assert propose_stages(hist, 2) == [9, 20]


def test_probe_records_text_to_image_attention_of_every_layer(tiny, prompts):
    """The probe's per-layer [V] equals eager attention: text rows -> image columns, mean over heads and rows."""
    model, _ = tiny
    inputs = prompts[0]
    ids = inputs["input_ids"][0]
    where = (ids == model.config.image_token_index).nonzero().flatten()
    start, end = int(where[0]), int(where[-1]) + 1
    probe = AttentionProbe(576)
    with torch.no_grad():
        with PruningEngine(model, probe):
            logits = model(**inputs).logits
        model.set_attn_implementation({"text_config": "eager"})
        try:
            out = model(**inputs, output_attentions=True)
        finally:
            model.set_attn_implementation({"text_config": "sdpa"})
    assert torch.equal(logits, out.logits) or (logits - out.logits).abs().max() < 1e-4  # the probe prunes nothing
    assert sorted(probe.per_layer) == list(range(31))
    for layer in (0, 7, 30):
        expected = out.attentions[layer][0, :, end:, start:end].mean(dim=(0, 1))
        assert (probe.per_layer[layer] - expected).abs().max().item() < 1e-6


def test_written_config_runs_adaptinfer_with_the_proposed_layers(tmp_path, monkeypatch):
    (tmp_path / "method").mkdir()
    (tmp_path / "method" / "adaptinfer.yaml").write_text(
        (analyze.CONF / "method" / "adaptinfer.yaml").read_text())
    monkeypatch.setattr(analyze, "CONF", tmp_path)
    report = {"model": "m", "task": "t", "n_samples": 5, "proposed_stage_layers": [3, 9, 20]}
    path = analyze.write_method_config(report, "adaptinfer_m")
    text = path.read_text()
    assert text.startswith("# python run.py method=adaptinfer_m")
    cfg = OmegaConf.create({"budget": 128, "method": OmegaConf.load(path)})
    method = instantiate(cfg.method)
    assert method.name == "adaptinfer" and [s.layer for s in method.schedule(32, 576).stages] == [3, 9, 20]
