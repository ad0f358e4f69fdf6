"""Attention-shift analysis (AdaptInfer, arXiv 2508.06084): where does text-to-image attention shift?

    python -m harness.analyze                                  # embedded model, shapes_mme, 100 samples
    python -m harness.analyze model=llava_1_5_7b task=mme n=1000 '~tasks_data' +tasks_data.mme=/data/mme

For every sample, the text-to-image attention (text rows -> image columns, mean over heads and text
rows) is recorded at every decoder layer but the last; for the `top_k` image tokens with the most
attention over all layers, the cumulative attention over layers (normalised to end at 1) gets one
change point by binary segmentation with an L2 cost (`ruptures`). The histogram of change layers
shows where attention shifts; its `n_stages` most frequent layers are proposed as stage layers and
written as a method config that run.py accepts (`python run.py method=<written name>`).
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import numpy as np
import ruptures
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm import tqdm

from harness.engine import PruningEngine
from harness.methods.base import Selection, StageContext
from harness.schedule import Schedule, Stage

CONF = Path(__file__).parents[1] / "conf"


class AttentionProbe:
    """A no-op "method" with a stage at every layer: it keeps every token and records, per layer, the
    text-to-image attention `[V]` (mean over heads and text rows)."""

    name = "probe"
    query_rows = "text"
    positions = "original"

    def __init__(self, num_image_tokens: int):
        self.budget = num_image_tokens
        self.per_layer: dict[int, torch.Tensor] = {}

    def schedule(self, num_layers: int, num_image_tokens: int) -> Schedule:
        return Schedule([Stage(layer, num_image_tokens) for layer in range(num_layers - 1)], num_image_tokens)

    def select(self, ctx: StageContext) -> Selection:
        start, end = ctx.image_span
        self.per_layer[ctx.stage.layer] = ctx.attn[:, :, start:end].mean(dim=(0, 1)).cpu()  # [H, T, V] -> [V]
        return Selection(keep=torch.arange(end - start))


def change_layers(attention: np.ndarray, top_k: int) -> list[int]:
    """One change point per top image token on its normalised cumulative attention over layers.

    Args:
        attention: `[layers, V]` text-to-image attention of one sample.
        top_k: how many image tokens (most attention over all layers) to analyse.
    """
    top = np.argsort(-attention.sum(0), kind="stable")[:top_k]
    layers = []
    for token in top:
        signal = np.cumsum(attention[:, token])
        signal = signal / signal[-1] if signal[-1] > 0 else signal
        breakpoint_ = ruptures.Binseg(model="l2", min_size=1, jump=1).fit(signal.reshape(-1, 1)).predict(n_bkps=1)[0]
        layers.append(int(breakpoint_))  # the first layer of the second segment
    return layers


def propose_stages(histogram: np.ndarray, n_stages: int) -> list[int]:
    """The `n_stages` most frequent change layers (ties to the lower layer), ascending; never layer 0."""
    counts = histogram.copy()
    counts[0] = 0  # a stage at layer 0 would prune the layer HF reads the cache length from
    order = sorted(range(len(counts)), key=lambda layer: (-counts[layer], layer))
    return sorted(layer for layer in order[:n_stages] if counts[layer] > 0)


def run_analysis(cfg: DictConfig) -> dict:
    from harness.tasks import data_locations, load_tasks

    model, processor = instantiate(cfg.model.load)
    vision = model.config.vision_config
    num_image_tokens = (vision.image_size // vision.patch_size) ** 2
    probe = AttentionProbe(num_image_tokens)
    engine = PruningEngine(model, probe)
    data = data_locations(cfg.tasks_data)
    task = next(iter(load_tasks([cfg.task], data).values()))
    docs = task.test_docs() if task.has_test_docs() else task.validation_docs()
    n = min(cfg.n, len(docs))
    all_layers: list[int] = []
    with torch.no_grad(), engine:
        for i in tqdm(range(n), desc="analyze", unit="sample"):
            doc = docs[i]
            image = task.doc_to_visual(doc)[0]
            text = cfg.model.prompt.format(question=task.doc_to_text(doc))
            inputs = processor(images=image, text=text, return_tensors="pt")
            inputs.pop("attention_mask", None)
            device = next(model.parameters()).device
            inputs = {k: v.to(device) for k, v in inputs.items()}
            inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
            probe.per_layer.clear()
            model(**inputs)
            attention = torch.stack([probe.per_layer[layer] for layer in sorted(probe.per_layer)]).float().numpy()
            all_layers += change_layers(attention, cfg.top_k)
    num_layers = engine.num_layers
    histogram = np.bincount(np.array(all_layers, dtype=int), minlength=num_layers - 1)
    stages = propose_stages(histogram, cfg.n_stages)
    return {"model": cfg.model.name, "task": cfg.task, "n_samples": n, "top_k": cfg.top_k,
            "histogram": histogram.tolist(), "proposed_stage_layers": stages}


def plot_histogram(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = report["histogram"]
    fig, ax = plt.subplots(figsize=(8, 3.5), dpi=150)
    colours = ["tab:red" if layer in report["proposed_stage_layers"] else "tab:blue" for layer in range(len(hist))]
    ax.bar(range(len(hist)), hist, color=colours)
    ax.set_xlabel("change layer (first layer after the shift)")
    ax.set_ylabel("image tokens")
    ax.set_title(f"Attention shift: {report['model']} on {report['task']} "
                 f"({report['n_samples']} samples, top {report['top_k']} tokens); red = proposed stages")
    ax.title.set_fontsize(9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_method_config(report: dict, name: str) -> Path:
    """An AdaptInfer config with the proposed stage layers: conf/method/<name>.yaml."""
    base = (CONF / "method" / "adaptinfer.yaml").read_text().splitlines()
    body = [line for line in base[1:] if not line.startswith("layers:")]
    layers = report["proposed_stage_layers"]
    lines = [f"# python run.py method={name} budget=192",
             f"# Written by harness.analyze: AdaptInfer with stage layers {layers} from the attention-shift",
             f"# analysis of {report['model']} on {report['task']} ({report['n_samples']} samples).",
             *[line for line in body if not line.startswith("# python run.py")],
             f"layers: {layers}"]
    path = CONF / "method" / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


@hydra.main(version_base="1.3", config_path="../conf", config_name="analyze")
def main(cfg: DictConfig) -> None:
    report = run_analysis(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"attention_shift_{report['model']}_{report['task']}"
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_histogram(report, out / f"{stem}.png")
    print(f"change-layer histogram: {report['histogram']}")
    print(f"proposed stage layers: {report['proposed_stage_layers']}")
    print(f"written: {out / (stem + '.json')}, {out / (stem + '.png')}")
    if cfg.write_config:
        if len(report["proposed_stage_layers"]) != cfg.n_stages:
            raise SystemExit(f"error: only {len(report['proposed_stage_layers'])} distinct change layers; no config written")
        print(f"method config: {write_method_config(report, cfg.write_config)}")


if __name__ == "__main__":
    main()
