"""The shipped CLIP text tower of the embedded model (harness/assets/tiny-clip-shapes): it loads offline through
the same code as OpenAI's CLIP, is paired with the embedded vision tower, has learned something (held-out
retrieval and evidence recall well above chance), and CDPruner runs with it on the default setup."""

from __future__ import annotations

import json
import random
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, CLIPModel

from harness.model import ASSETS, load_llava
from harness.shapes import clip_text, data
from harness.text_encoder import load_text_tower

ROOT = Path(__file__).parents[1]
CHECKPOINT = ASSETS / clip_text.ASSET


@pytest.fixture(scope="module")
def llava():
    return load_llava(pretrained="tiny-llava-shapes", dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def tower():
    return load_text_tower(clip_text.ASSET, 128)  # an asset name, as conf/model/tiny_llava_shapes.yaml gives it


def test_loads_offline_and_embeds_in_the_vision_projection_space(llava, tower):
    model, _ = llava
    assert sum(p.stat().st_size for p in CHECKPOINT.iterdir()) < 8 * 2**20
    assert (CHECKPOINT / "README.md").read_text().count("## Recipe") == 1
    width = model.config.vision_config.projection_dim
    text = tower.encode_text("What colour is the star?")
    assert text.shape == (1, width)
    assert tower.embed_patches(torch.randn(576, 128)).shape == (576, width)
    tokenizer = AutoTokenizer.from_pretrained(CHECKPOINT)
    ids = tokenizer("What colour is the star?")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id != 2  # pooled at </s>
    assert tokenizer.unk_token_id not in ids


def test_its_vision_side_is_the_embedded_tower(llava):
    """The pairing CDPruner assumes: the CLIP checkpoint's vision tower is the LLaVA's, weight for weight."""
    model, _ = llava
    clip = CLIPModel.from_pretrained(CHECKPOINT)
    ours = model.model.vision_tower.state_dict()
    theirs = clip.vision_model.state_dict()
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.slow
def test_retrieval_and_evidence_recall_beat_chance_on_held_out_scenes(llava, tower):
    model, processor = llava
    scenes = clip_text.heldout_scenes(16)  # never trained on
    hidden = clip_text.feature_states(model, processor, [image for _, image in scenes])
    top1, n = clip_text.retrieval_top1(tower, hidden, [scene for scene, _ in scenes])
    assert n >= 20 and top1 >= 0.6, (top1, n)  # chance 1/8
    rows = data.make_split("gqa", None, data.EVAL_SEEDS["gqa"], 12)  # the benchmark's own questions
    recall, chance = clip_text.evidence_recall(tower, clip_text.feature_states(model, processor, [r["image"] for r in rows]),
                                               rows)
    assert chance < 0.05 and recall >= 0.5, (recall, chance)


@pytest.mark.slow
def test_cdpruner_runs_on_the_default_model(tmp_path):
    """`python run.py method=cdpruner` on the default model and suite (cut short): no failed sample, each kept set
    distinct, the realized count below 128 reported as such."""
    env = {**os.environ, "PRUNEBENCH_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "2", "HYDRA_FULL_ERROR": "0"}
    run_dir = tmp_path / "cdpruner-128"
    proc = subprocess.run([sys.executable, "run.py", "method=cdpruner", "budget=128", "tasks.names=[shapes_gqa]",
                           "limit=3", "record_kept=true", "logger=none", f"hydra.run.dir={run_dir}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["model"] == "tiny_llava_shapes" and results["config"]["method"]["text_encoder"] == clip_text.ASSET
    assert results["tasks"]["shapes_gqa"]["n"] == 3 and results["tasks"]["shapes_gqa"]["n_failed"] == 0
    records = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    for record in records:
        kept = record["kept"]["0"]
        assert len(kept) == len(set(kept)) and record["vision_per_layer"] == [len(kept)] * 32
        assert record["kept_fewer"] == 128 - len(kept) > 0
    tokens = results["tokens"]
    assert tokens["avg_vision_tokens"] == pytest.approx(sum(len(r["kept"]["0"]) for r in records) / 3)
    assert tokens["below_budget"] == {"budget": 128, "samples": 3, "of": 3,
                                      "avg_kept_fewer": pytest.approx(128 - tokens["avg_vision_tokens"])}
    assert "fewer than the budget 128 in 3 of 3 samples" in proc.stdout


def test_the_loss_rewards_the_official_sign():
    """CDPruner's relevance is -cos (the official code negates it): a text embedding pointing *away* from its
    evidence patches has the lower loss, the same embedding pointing at them the higher one."""
    gen = torch.Generator().manual_seed(0)
    patches = torch.randn(2, 576, 8, generator=gen)  # [B, V, C]
    patches[..., :2] = 0.0  # background: orthogonal to the objects' directions e0, e1
    evidence = torch.zeros(2, 576, dtype=torch.bool)
    evidence[0, :4], evidence[1, 100:104] = True, True
    towards = torch.eye(8)[:2]  # [T, C]: text 0 is about image 0's object (e0), text 1 about image 1's (e1)
    patches[evidence] = torch.cat([towards[:1].expand(4, 8), towards[1:].expand(4, 8)])
    args = (patches, torch.tensor([0, 1]), evidence, torch.eye(2, dtype=torch.bool), torch.tensor([True, True]),
            torch.tensor(20.0), torch.tensor(20.0))
    away, _ = clip_text.contrastive_loss(-towards, *args)
    at, _ = clip_text.contrastive_loss(towards, *args)
    assert away < 0.01 and at > 10


def test_texts_of_a_scene_carry_their_evidence():
    scene = data.sample_scene(random.Random("texts:0"))
    texts = clip_text.scene_texts(scene, [])
    obj = scene.objects[0]
    assert (f"the {obj.colour} {obj.shape}", obj.evidence, ("pair", obj.colour, obj.shape)) in texts
    assert clip_text.holds(("pair", obj.colour, obj.shape), scene) and not clip_text.holds(("colour", "nocolour"), scene)
    assert clip_text.instruction(data.prompt("gqa", "What colour is the star?")) == "What colour is the star?"
