"""The CLIP text tower paired with the embedded model's vision tower (`harness/assets/tiny-clip-shapes`).

LLaVA-1.5's vision tower is frozen CLIP, so CDPruner takes the instruction's embedding from the text tower of the
same CLIP checkpoint. The embedded model's tower was trained from scratch without one; `train_text.py` trains
it here, against that frozen tower, and ships it as a transformers `CLIPModel` whose vision side *is* the
embedded tower (the same weights, its unused `post_layernorm` included) plus a trained `visual_projection`,
so `harness.text_encoder.load_text_tower("tiny-clip-shapes")` loads it exactly as it loads
`openai/clip-vit-large-patch14-336`.

Sign. CDPruner's official code scores a patch by the *negative* cosine of its projected feature-layer state with
the text embedding (`relevance = (-relevance).mean(dim=-1)`, Theia-4869/CDPruner `llava_arch.py`): on CLIP
ViT-L/336's penultimate patches the queried object has the lowest cosine with the text (the authors' answer in
Theia-4869/CDPruner issue #14; the same inversion as CLIP Surgery's "opposite visualization"). This tower is
trained with that convention: its relevance `-cos(z_i, t)` is high on the patches the text is about (an
aligned tower with its text projection negated), so the official formula points where it points on LLaVA-1.5.

Texts: the benchmark's own questions about training scenes (gqa, mme, pope positives; as CDPruner reads them,
without "\\nAnswer the question using a single word or phrase."), and object descriptions ("the red circle",
"red", "star"), each with its evidence patches.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModelWithProjection, PreTrainedTokenizerFast

from harness.shapes import data
from harness.shapes.tiny import pixel_values, tower_hidden

ASSET = "tiny-clip-shapes"  # under harness/assets
SPECIALS = ["<pad>", "<s>", "<unk>"]  # ids 0, 1, 2; "</s>" is the last id (eos != 2: pooled at the first eos)
HELDOUT_SEED = data.EVAL_SEED_BASE + 100  # held-out scenes: the evaluation range, none of the suite's own seeds
WIDTH, LAYERS, HEADS, CONTEXT = 64, 2, 2, 77  # text tower; projection = the vision config's projection_dim (64)


def text_tokenizer() -> PreTrainedTokenizerFast:
    """A closed word-level tokenizer over the benchmark's words: `<s> words </s>`, lower-cased, punctuation split."""
    words = [w for w in data.vocabulary() if w not in SPECIALS]
    vocab = {tok: i for i, tok in enumerate(SPECIALS + words + ["</s>"])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", model_max_length=CONTEXT,
                                   model_input_names=["input_ids", "attention_mask"])


def build_clip(llava, tokenizer, seed: int) -> CLIPModel:
    """A CLIP model: the LLaVA's vision tower (copied, frozen) + a seeded random text tower and projections."""
    vision = llava.config.vision_config
    text = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=WIDTH, intermediate_size=4 * WIDTH,
                          num_hidden_layers=LAYERS, num_attention_heads=HEADS, max_position_embeddings=CONTEXT,
                          projection_dim=vision.projection_dim, pad_token_id=tokenizer.pad_token_id,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                        projection_dim=vision.projection_dim)
    torch.manual_seed(seed)
    clip = CLIPModel(config).float()
    clip.vision_model.load_state_dict(llava.model.vision_tower.state_dict())
    clip.vision_model.requires_grad_(False)
    return clip


def text_model_of(clip: CLIPModel) -> CLIPTextModelWithProjection:
    """The text half of `clip` as a `CLIPTextModelWithProjection` sharing its modules (what CDPruner loads)."""
    model = CLIPTextModelWithProjection(clip.config.text_config)
    model.text_model, model.text_projection = clip.text_model, clip.text_projection
    return model


def instruction(prompt: str) -> str:
    """The instruction CDPruner encodes: the prompt without the short-answer suffix."""
    return prompt.replace(data.SHORT_ANSWER, "")


def scene_texts(scene: data.Scene, qas: list[data.QA]) -> list[tuple[str, list[int], tuple | None]]:
    """(text, evidence patches, description key) of one scene: its questions with evidence and, for every
    object, "the <colour> <shape>", "<colour>" and "<shape>". The key (("pair", c, s), ("colour", c), ("shape", s))
    says which images a description holds for (image-level loss); questions have None."""
    out = [(instruction(qa.prompt), sorted(qa.evidence), None) for qa in qas if qa.evidence]
    for obj in scene.objects:
        same_colour = sorted(p for o in scene.objects if o.colour == obj.colour for p in o.evidence)
        same_shape = sorted(p for o in scene.objects if o.shape == obj.shape for p in o.evidence)
        out.append((f"the {obj.colour} {obj.shape}", obj.evidence, ("pair", obj.colour, obj.shape)))
        out.append((obj.colour, same_colour, ("colour", obj.colour)))
        out.append((obj.shape, same_shape, ("shape", obj.shape)))
    return out


def holds(key: tuple, scene: data.Scene) -> bool:
    """Whether a description key holds for a scene (some object matches it)."""
    kind, *value = key
    if kind == "pair":
        return any((o.colour, o.shape) == tuple(value) for o in scene.objects)
    return any(getattr(o, kind) == value[0] for o in scene.objects)


@torch.no_grad()
def feature_states(llava, processor, images: list, batch: int = 16) -> torch.Tensor:
    """The tower's feature-layer patch states `[N, 576, dv]` (CLS dropped), what CDPruner's `vision_hidden` holds."""
    out = [tower_hidden(llava, pixel_values(images[i:i + batch], processor))[:, 1:] for i in range(0, len(images), batch)]
    return torch.cat(out)


def heldout_scenes(n: int) -> list[tuple[data.Scene, object]]:
    """(scene, image) of n held-out scenes (seed HELDOUT_SEED: never trained on, not in the suite)."""
    out = []
    for i in range(n):
        rng = random.Random(f"{HELDOUT_SEED}:{i}")
        scene = data.sample_scene(rng)
        out.append((scene, data.render(scene, rng)))
    return out


def contrastive_loss(text_emb: torch.Tensor, patches: torch.Tensor, owner: torch.Tensor, evidence: torch.Tensor,
                     positives: torch.Tensor, described: torch.Tensor, patch_scale: torch.Tensor,
                     image_scale: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Patch-level and image-level InfoNCE on the relevance `r = -cos(z, t)`.

    Args:
        text_emb: `[T, C]` text embeddings; patches: `[B, V, C]` projected patch states (both unnormalised).
        owner: `[T]` the image of each text; evidence: `[T, V]` bool, the patches it is about.
        positives: `[T, B]` bool, the images a description holds for; described: `[T]` bool, which texts are
            descriptions (the image-level term is theirs).
        patch_scale, image_scale: the logit scales (exp of learned log-scales).

    Returns:
        (loss, {"patch": ..., "image": ...}): patch: -log of the softmax mass over its own image's patches that
        falls on the evidence; image: -log of the softmax mass over the batch's images (scored by their most
        relevant patch) that falls on the images the description holds for.
    """
    t = F.normalize(text_emb, dim=-1)
    z = F.normalize(patches, dim=-1)
    relevance = -torch.einsum("tc,bvc->tbv", t, z)  # [T, B, V]
    own = relevance[torch.arange(t.shape[0]), owner]  # [T, V]
    logp = F.log_softmax(patch_scale * own, dim=-1)
    patch = -torch.logsumexp(logp.masked_fill(~evidence, float("-inf")), dim=-1).mean()
    image = own.new_zeros(())
    if described.any():
        scores = image_scale * relevance[described].amax(-1)  # [D, B]
        logq = F.log_softmax(scores, dim=-1)
        image = -torch.logsumexp(logq.masked_fill(~positives[described], float("-inf")), dim=-1).mean()
    return patch + image, {"patch": patch.item(), "image": image.item()}


def relevance_fn(tower) -> Callable[[torch.Tensor, str], torch.Tensor]:
    """`(hidden [V, dv], text) -> [V]` CDPruner's relevance before min-max: mean over windows of -cos (a
    `harness.text_encoder.ClipTextTower`)."""
    def relevance(hidden: torch.Tensor, text: str) -> torch.Tensor:
        z = F.normalize(tower.embed_patches(hidden), dim=-1)
        t = F.normalize(tower.encode_text(text), dim=-1)
        return (-(z @ t.T)).mean(-1)
    return relevance


@torch.no_grad()
def retrieval_top1(tower, hidden: torch.Tensor, scenes: list[data.Scene], group: int = 8) -> tuple[float, int]:
    """Text -> image top-1 among `group` held-out images: for each object whose (colour, shape) occurs in one
    image of its group, "the <colour> <shape>" ranks the group's images by their most relevant patch.

    Returns:
        (accuracy, number of queries); chance is 1 / group.
    """
    relevance = relevance_fn(tower)
    right = total = 0
    for start in range(0, len(scenes) - group + 1, group):
        members = range(start, start + group)
        for k in members:
            for obj in scenes[k].objects:
                key = ("pair", obj.colour, obj.shape)
                if sum(holds(key, scenes[j]) for j in members) != 1:
                    continue
                text = f"the {obj.colour} {obj.shape}"
                best = max(members, key=lambda j: float(relevance(hidden[j], text).max()))
                right += best == k
                total += 1
    return right / max(total, 1), total


@torch.no_grad()
def evidence_recall(tower, hidden: torch.Tensor, rows: list[dict]) -> tuple[float, float]:
    """Mean recall of the evidence among a question's |E| most relevant patches, and chance (|E| / 576).

    Args:
        hidden: `[N, 576, dv]` for the rows' images; rows: suite rows (`question`, `evidence`; pope/gqa prompts
            are stripped of the suffix as CDPruner strips it).
    """
    relevance = relevance_fn(tower)
    recalls, chance = [], []
    for states, row in zip(hidden, rows):
        evidence = set(row["evidence"])
        if not evidence:
            continue
        top = relevance(states, instruction(row["question"])).topk(len(evidence)).indices.tolist()
        recalls.append(len(evidence.intersection(top)) / len(evidence))
        chance.append(len(evidence) / states.shape[0])
    return sum(recalls) / len(recalls), sum(chance) / len(chance)
