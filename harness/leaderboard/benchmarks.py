"""The leaderboard's columns (one per benchmark) and the published vanilla LLaVA-1.5-7B numbers."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Benchmark:
    """A leaderboard column.

    Attributes:
        name: Column header.
        tasks: Its lmms-eval tasks; several are splits and the score is the mean of `metric` over
            those present (POPE: mean F1 of the three splits).
        metric: The headline metric in results.json `tasks.<task>.metrics`.
        kind: How a score is recomputed from the per-sample score fields: "accuracy" (mean of
            `score`, 0..1 per sample: exact match, VQA accuracy), "f1" (POPE F1, "yes" positive),
            "mme" (sum over categories of acc + acc+, acc+ per image) or "circular" (MMBench
            CircularEval: % of question groups with every rotation right).
    """

    name: str
    tasks: tuple[str, ...]
    metric: str
    kind: str


BENCHMARKS = (
    #          column              tasks (splits: mean over those present)                                 metric         kind
    Benchmark("GQA",              ("gqa",),                                                                "exact_match", "accuracy"),
    Benchmark("MME P+C",          ("mme",),                                                                "mme_total",   "mme"),
    Benchmark("POPE F1",          ("pope_adversarial", "pope_popular", "pope_random"),                     "pope_f1",     "f1"),
    Benchmark("MMB",              ("mmbench_en_dev",),                                                     "circular_accuracy", "circular"),
    Benchmark("MMB-CN",           ("mmbench_cn_dev",),                                                     "circular_accuracy", "circular"),
    Benchmark("SQA-IMG",          ("scienceqa_img",),                                                      "accuracy",    "accuracy"),
    Benchmark("TextVQA",          ("textvqa_val",),                                                        "vqa_accuracy", "accuracy"),
    Benchmark("TextVQA no OCR",   ("textvqa_val_no_ocr",),                                                 "vqa_accuracy", "accuracy"),
    Benchmark("VQAv2 val",        ("vqav2_val",),                                                          "vqa_accuracy", "accuracy"),
    Benchmark("SEED-IMG",         ("seedbench_img",),                                                      "seed_image",  "accuracy"),
    Benchmark("shapes GQA",       ("shapes_gqa",),                                                         "exact_match", "accuracy"),
    Benchmark("shapes MME",       ("shapes_mme",),                                                         "total",       "mme"),
    Benchmark("shapes POPE F1",   ("shapes_pope_random", "shapes_pope_popular", "shapes_pope_adversarial"), "f1",         "f1"),
)


@dataclass(frozen=True)
class Published:
    """A published vanilla LLaVA-1.5-7B score, compared with a run's own vanilla row.

    Attributes:
        bench: Leaderboard column it belongs to.
        task, metric: Where the run's number is in results.json.
        value: The published number.
        scale: Full scale of the metric (MME perception: 2000); differences are compared in points
            of 100 (1.5 points of MME P = 30).
        source: Where it is published.
    """

    bench: str
    task: str
    metric: str
    value: float
    source: str
    scale: float = 100.0


PUBLISHED_MODEL = "llava_1_5_7b"  # conf/model/llava_1_5_7b.yaml; only its vanilla row is compared
PUBLISHED_TOLERANCE = 1.5         # points (of 100); a larger gap is warned about
_ZOO = "LLaVA model zoo (haotian-liu/LLaVA docs/MODEL_ZOO.md, LLaVA-1.5 7B full_ft-1e)"
PUBLISHED = (
    Published("GQA", "gqa", "exact_match", 62.0, _ZOO),
    Published("MMB", "mmbench_en_dev", "circular_accuracy", 64.3, _ZOO),
    Published("MMB-CN", "mmbench_cn_dev", "circular_accuracy", 58.3, _ZOO),
    Published("MME P+C", "mme", "mme_perception", 1510.7, _ZOO + ", MME perception", scale=2000.0),
    Published("POPE F1", "pope", "pope_f1", 85.9, _ZOO),
    Published("SQA-IMG", "scienceqa_img", "accuracy", 66.8, _ZOO),
    Published("TextVQA", "textvqa_val", "vqa_accuracy", 58.2, _ZOO + ", with OCR tokens"),
    Published("VQAv2 val", "vqav2_val", "vqa_accuracy", 78.5, _ZOO + ", test-dev (server-scored; val here)"),
    Published("SEED-IMG", "seedbench_img", "seed_image", 66.1, "LLaVA-1.5 paper (Liu et al., CVPR 2024), SEED image"),
)

