"""Load a VLM and its processor: from the hub, a local directory, or a config with random weights.

    model, processor = load_llava(pretrained="llava-hf/llava-1.5-7b-hf")        # real weights
    model, processor = load_llava(config="tiny")                               # tests
    model, processor = load_llava(config="harness/assets/llava-1.5-7b-hf")    # 7B shapes, random
    model, processor = load_model("qwen2_5_vl", config="tiny")                 # other families (harness/families)
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    AutoProcessor,
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

ASSETS = Path(__file__).parent / "assets"
IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN, "\n", "USER:", "ASSISTANT:"]

# Words of the tiny test model's vocabulary (any text outside it maps to <unk>).
TINY_WORDS = (
    "a an the is are there in of on to what which how many colour color shape left right above below "
    "yes no one two three four five six image picture object objects answer question using single word "
    "or phrase please red green blue yellow purple orange white cyan circle square triangle star cross "
    "diamond dog cat car man woman table ? . , :"
).split()


def pick_device(device: str = "auto") -> torch.device:
    """`auto` -> cuda if available, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` -> fp16 on CUDA, bf16 on CPU; otherwise a torch dtype name (float32, bfloat16, float16)."""
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    allowed = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in allowed:
        raise ValueError(f"model.dtype={dtype!r} is not supported (allowed: auto, {', '.join(allowed)})")
    return allowed[dtype]


def word_tokenizer(words: list[str], special_tokens: list[str] = SPECIAL_TOKENS, image_token: str = IMAGE_TOKEN,
                   extra: dict[str, str] | None = None) -> PreTrainedTokenizerFast:
    """A closed word-level tokenizer that works offline: lower-cases, splits on whitespace and punctuation,
    prepends `<s>`; special tokens (the first four: unk, bos, eos, pad) are matched before normalisation."""
    vocab = {tok: i for i, tok in enumerate(special_tokens)}
    for word in words:
        vocab.setdefault(word.lower(), len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.add_special_tokens(SPECIAL_TOKENS)  # matched before normalisation: "\n", "USER:" survive
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        extra_special_tokens={"image_token": image_token, **(extra or {})},
    )


def build_word_processor(words: list[str], image_size: int = 336, patch_size: int = 14) -> LlavaProcessor:
    """A LLaVA processor with a closed word-level tokenizer that works offline.

    Lower-cases text, splits on whitespace and punctuation, prepends `<s>`. The processor expands
    `<image>` to (image_size / patch_size)^2 tokens, as for LLaVA-1.5.
    """
    tokenizer = word_tokenizer(words)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )


def tiny_config(vocab_size: int, image_token_id: int, num_layers: int = 32) -> LlavaConfig:
    """A small LLaVA: CLIP tower at 336 px / patch 14 (576 image tokens), a narrow Llama with GQA."""
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=336, patch_size=14, projection_dim=32,
    )
    text = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=num_layers, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=vocab_size, max_position_embeddings=2048,
        bos_token_id=1, eos_token_id=2, pad_token_id=3,
    )
    return LlavaConfig(
        vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_index=image_token_id,
        projector_hidden_act="gelu", vision_feature_layer=-2, vision_feature_select_strategy="default",
        pad_token_id=3,
    )


def set_image_processor(image_processor, options: dict) -> None:
    """Set image-processor options; `min_pixels` / `max_pixels` (Qwen2.5-VL) are its `size` bounds."""
    size_keys = {"min_pixels": "shortest_edge", "max_pixels": "longest_edge"}
    for key, value in options.items():
        if value is None:
            continue
        if key in size_keys:
            image_processor.size = {**dict(image_processor.size), size_keys[key]: int(value)}
        elif hasattr(image_processor, key):
            setattr(image_processor, key, value)
        else:
            raise ValueError(f"model.load.processor_kwargs.{key} is not an option of {type(image_processor).__name__}")


def load_llava(
    pretrained: str | None = None,
    config: str | None = None,
    num_layers: int = 32,
    dtype: str = "auto",
    device: str = "auto",
    seed: int = 0,
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor | None]:
    """LLaVA-1.5 (`load_model(family="llava", ...)`); see `load_model`."""
    return load_model("llava", pretrained, config, num_layers, dtype, device, seed)


def load_model(
    family: str = "llava",
    pretrained: str | None = None,
    config: str | None = None,
    num_layers: int = 32,
    dtype: str = "auto",
    device: str = "auto",
    seed: int = 0,
    processor_kwargs: dict | None = None,
):
    """Load a VLM of a family in `harness/families` (transformers' own class) with SDPA attention, in eval mode.

    Args:
        family: llava (LLaVA-1.5), llava_next or qwen2_5_vl.
        pretrained: hub id, local directory, or the name of a checkpoint under harness/assets
            (`tiny-llava-shapes`), with weights and processor (`from_pretrained`).
        config: instead of `pretrained`: "tiny" for the family's tiny test model, or a directory holding a
            `config.json` (e.g. `harness/assets/llava-1.5-7b-hf`, or just `llava-1.5-7b-hf`) to build with
            seeded random weights.
            A directory without a tokenizer gives `processor=None`.
        num_layers: decoder layers of the tiny model.
        processor_kwargs: set on the image processor (Qwen2.5-VL: `min_pixels`, `max_pixels`).
        dtype: "auto" (fp16 on CUDA, bf16 on CPU), "float32", "bfloat16" or "float16".
        device: "auto", "cpu", "cuda", "cuda:1", ...
        seed: seed of the random weights.
    """
    if (pretrained is None) == (config is None):
        raise ValueError("give exactly one of model.pretrained (hub id or directory) and model.config")
    from harness.families import family_named

    model_class = family_named(family).model_class
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    if pretrained is not None:
        if not Path(pretrained).is_dir() and (ASSETS / pretrained).is_dir():
            pretrained = str(ASSETS / pretrained)  # a checkpoint shipped under harness/assets
        elif not Path(pretrained).expanduser().is_dir() and str(pretrained).startswith(("/", ".", "~")):
            raise FileNotFoundError(
                f"model.load.pretrained={pretrained!r} is not a directory (give a local checkpoint directory, "
                "a hub id such as llava-hf/llava-1.5-7b-hf, or a name under harness/assets)"
            )
        model = model_class.from_pretrained(
            pretrained, dtype=torch_dtype, attn_implementation="sdpa", trust_remote_code=False
        )
        processor = AutoProcessor.from_pretrained(pretrained, trust_remote_code=False)
    else:
        if config == "tiny":
            model_config, processor = family_named(family).tiny(TINY_WORDS, num_layers)
        else:
            path = Path(config)
            if not path.is_dir() and (ASSETS / config).is_dir():
                path = ASSETS / config  # a name under harness/assets
            if not (path / "config.json").is_file():
                raise ValueError(f"model.config={config!r} is neither 'tiny' nor a directory with a config.json")
            model_config = model_class.config_class.from_pretrained(path)
            has_tokenizer = (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file()
            processor = AutoProcessor.from_pretrained(path) if has_tokenizer else None
        model_config._attn_implementation = "sdpa"
        torch.manual_seed(seed)
        with torch.device(dev):  # built directly in the target dtype: a 7B model never exists in fp32
            model = model_class._from_config(model_config, dtype=torch_dtype)
    if processor is not None and processor_kwargs:
        set_image_processor(processor.image_processor, processor_kwargs)
    model = model.to(dev).eval()
    model.requires_grad_(False)
    return model, processor


# Hub ids whose config.json is committed under harness/assets: their shape is known offline, before any download.
COMMITTED_CONFIGS = {  # hub id -> its config.json committed under harness/assets (read offline, before any load)
    "llava-hf/llava-1.5-7b-hf": "llava-1.5-7b-hf",
    "llava-hf/llava-v1.6-vicuna-7b-hf": "llava-v1.6-vicuna-7b-hf",
    "Qwen/Qwen2.5-VL-7B-Instruct": "qwen2.5-vl-7b-instruct",
}


def read_config(pretrained: str | None = None, config: str | None = None, num_layers: int = 32, **_) -> LlavaConfig | None:
    """The LlavaConfig `load_llava` would build, read without any weights (the arguments of `load_llava`).

    From "tiny", a local or committed directory, or a hub id (its committed config.json, else the hub's
    config.json alone). None when it cannot be read (e.g. an uncached hub id offline): the load says why.
    """
    if config == "tiny":
        processor = build_word_processor(TINY_WORDS)
        vocab = processor.tokenizer.get_vocab()
        return tiny_config(len(vocab), vocab[IMAGE_TOKEN], num_layers)
    where = config if config is not None else pretrained
    if where is None:
        return None
    where = str(where)
    path = Path(where).expanduser()
    if not path.is_dir() and (ASSETS / COMMITTED_CONFIGS.get(where, where)).is_dir():
        path = ASSETS / COMMITTED_CONFIGS.get(where, where)
    if (path / "config.json").is_file():
        return LlavaConfig.from_pretrained(path)
    if path.is_dir() or where.startswith(("/", ".", "~")):
        return None  # not a checkpoint: the load names the problem
    for local_only in (True, False):  # a hub id: its cached config.json, else that one small file from the hub
        with contextlib.suppress(Exception):  # not cached / offline / unknown id: the load reports it
            return LlavaConfig.from_pretrained(where, local_files_only=local_only)
    return None


def model_shape(llava_config: LlavaConfig) -> tuple[int, int]:
    """(decoder layers, image tokens per image) of a LLaVA config, as the engine counts them."""
    vision = llava_config.vision_config
    return llava_config.text_config.num_hidden_layers, (vision.image_size // vision.patch_size) ** 2
