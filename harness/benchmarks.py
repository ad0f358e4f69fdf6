"""Every benchmark in one place: one record each, beside its task folder tasks/<name>/.

    from harness.benchmarks import BENCHMARKS, benchmark_for
    benchmark_for("pope_random").name        # -> "pope": its YAMLs and hooks are in tasks/pope/

A record holds what the rest of the harness used to list by hand: the tasks and the suites of conf/tasks/
that run each (tests/test_benchmark_records.py checks the suite files agree), the scoring rule of each
task (`harness.scoring.scorer_for`), the columns a local copy of its data must have (the data check,
`harness.tasks.COLUMNS`), its leaderboard columns and the published vanilla LLaVA-1.5-7B numbers
(harness/leaderboard/benchmarks.py) and the function of harness/fixtures.py that writes its fixture
(`write_fixtures`). The order here is the leaderboard's column order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from harness import fixtures
from harness.scoring import Scorer, gqa, mmbench, mme, pope, scienceqa, seedbench, vqa

# The suites of conf/tasks/ that run a task (a fixtures_* suite runs its real twin's tasks on fixtures).
PAPER = ("paper", "core", "all", "fixtures", "fixtures_core", "fixtures_all")
CORE = ("core", "all", "fixtures_core", "fixtures_all")
ALL = ("all", "fixtures_all")
FIXTURES_ALL = ("fixtures_all",)  # fixture-only: tasks without a leaderboard number of the published table
SHAPES = ("shapes",)


@dataclass(frozen=True)
class Column:
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


@dataclass(frozen=True)
class Published:
    """A published vanilla LLaVA-1.5-7B score, compared with a run's own vanilla row.

    Attributes:
        bench: Leaderboard column it belongs to.
        task, metric: Where the run's number is in results.json.
        value: The published number.
        source: Where it is published.
        scale: Full scale of the metric (MME perception: 2000); differences are compared in points
            of 100 (1.5 points of MME P = 30).
    """

    bench: str
    task: str
    metric: str
    value: float
    source: str
    scale: float = 100.0


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: its task folder tasks/<name>/ and everything the harness reads about it.

    Attributes:
        name: Its folder under tasks/ (YAMLs + utils.py hooks).
        tasks: {task or group name a suite lists: the suites of conf/tasks/ that list it}.
        scorers: {task name or prefix: its scoring rule}; the longest prefix of a task wins.
        data_columns: {task name or prefix: the columns its hooks, scorer and YAML read from a doc}; a
            local dataset lacking one is refused before the model loads.
        leaderboard: Its leaderboard columns.
        published: Published vanilla LLaVA-1.5-7B numbers, each naming one of `leaderboard`.
        fixture: The function of harness/fixtures.py that gives its fixture datasets in the hub schema
            (`{folder: {split: (rows, features)}}`), or None (the shapes suite generates its own data).
    """

    name: str
    tasks: dict[str, tuple[str, ...]]
    scorers: dict[str, Scorer]
    data_columns: dict[str, tuple[str, ...]]
    leaderboard: tuple[Column, ...] = ()
    published: tuple[Published, ...] = ()
    fixture: Callable[[], dict[str, fixtures.Splits]] | None = field(default=None, repr=False)


ZOO = "LLaVA model zoo (haotian-liu/LLaVA docs/MODEL_ZOO.md, LLaVA-1.5 7B full_ft-1e)"

BENCHMARKS = (
    Benchmark(
        "gqa", tasks={"gqa": PAPER}, scorers={"gqa": gqa.SCORER},
        data_columns={"gqa": ("imageId", "question", "answer")},  # + its image table (harness.tasks.GQA_IMAGE_COLUMNS)
        leaderboard=(Column("GQA", ("gqa",), "exact_match", "accuracy"),),
        published=(Published("GQA", "gqa", "exact_match", 62.0, ZOO),),
        fixture=fixtures.gqa,
    ),
    Benchmark(
        "mme", tasks={"mme": PAPER}, scorers={"mme": mme.SCORER},
        data_columns={"mme": ("question_id", "image", "question", "answer", "category")},
        leaderboard=(Column("MME P+C", ("mme",), "mme_total", "mme"),),
        published=(Published("MME P+C", "mme", "mme_perception", 1510.7, ZOO + ", MME perception", scale=2000.0),),
        fixture=fixtures.mme,
    ),
    Benchmark(
        "pope", tasks={"pope": PAPER}, scorers={"pope": pope.SCORER},  # the group of the three splits
        data_columns={"pope": ("image", "question", "answer")},
        leaderboard=(Column("POPE F1", ("pope_adversarial", "pope_popular", "pope_random"), "pope_f1", "f1"),),
        published=(Published("POPE F1", "pope", "pope_f1", 85.9, ZOO),),
        fixture=fixtures.pope,
    ),
    Benchmark(
        "mmbench", tasks={"mmbench_en_dev": CORE, "mmbench_cn_dev": ALL}, scorers={"mmbench": mmbench.SCORER},
        data_columns={"mmbench": ("index", "image", "question", "answer")},
        leaderboard=(Column("MMB", ("mmbench_en_dev",), "circular_accuracy", "circular"),
                     Column("MMB-CN", ("mmbench_cn_dev",), "circular_accuracy", "circular")),
        published=(Published("MMB", "mmbench_en_dev", "circular_accuracy", 64.3, ZOO),
                   Published("MMB-CN", "mmbench_cn_dev", "circular_accuracy", 58.3, ZOO)),
        fixture=fixtures.mmbench,
    ),
    Benchmark(
        "scienceqa", tasks={"scienceqa_img": CORE}, scorers={"scienceqa": scienceqa.SCORER},
        data_columns={"scienceqa": ("image", "question", "choices", "answer")},
        leaderboard=(Column("SQA-IMG", ("scienceqa_img",), "accuracy", "accuracy"),),
        published=(Published("SQA-IMG", "scienceqa_img", "accuracy", 66.8, ZOO),),
        fixture=fixtures.scienceqa,
    ),
    Benchmark(
        "textvqa", tasks={"textvqa_val": CORE, "textvqa_val_no_ocr": FIXTURES_ALL},
        scorers={"textvqa": vqa.TEXTVQA_SCORER},
        data_columns={"textvqa": ("question_id", "image", "question", "answers")},
        leaderboard=(Column("TextVQA", ("textvqa_val",), "vqa_accuracy", "accuracy"),
                     Column("TextVQA no OCR", ("textvqa_val_no_ocr",), "vqa_accuracy", "accuracy")),
        published=(Published("TextVQA", "textvqa_val", "vqa_accuracy", 58.2, ZOO + ", with OCR tokens"),),
        fixture=fixtures.textvqa,
    ),
    Benchmark(
        "vqav2", tasks={"vqav2_val": ALL, "vqav2_testdev": FIXTURES_ALL},
        scorers={"vqav2": vqa.VQAV2_SCORER, "vqav2_testdev": vqa.VQAV2_TESTDEV_SCORER},
        data_columns={"vqav2_val": ("question_id", "image", "question", "answers", "multiple_choice_answer"),
                      "vqav2_testdev": ("question_id", "image", "question")},
        leaderboard=(Column("VQAv2 val", ("vqav2_val",), "vqa_accuracy", "accuracy"),),
        published=(Published("VQAv2 val", "vqav2_val", "vqa_accuracy", 78.5, ZOO + ", test-dev (server-scored; val here)"),),
        fixture=fixtures.vqav2,
    ),
    Benchmark(
        "seedbench", tasks={"seedbench_img": ALL}, scorers={"seedbench": seedbench.SCORER},
        data_columns={"seedbench": ("data_type", "image", "question", "choice_a", "choice_b", "choice_c", "choice_d",
                                    "answer", "question_type_id")},
        leaderboard=(Column("SEED-IMG", ("seedbench_img",), "seed_image", "accuracy"),),
        published=(Published("SEED-IMG", "seedbench_img", "seed_image", 66.1,
                             "LLaVA-1.5 paper (Liu et al., CVPR 2024), SEED image"),),
        fixture=fixtures.seedbench,
    ),
    Benchmark(  # the embedded benchmark: data generated by harness.shapes.data, scored by the real benchmarks' rules
        "shapes",
        tasks={"shapes_pope_random": SHAPES, "shapes_pope_popular": SHAPES, "shapes_pope_adversarial": SHAPES,
               "shapes_gqa": SHAPES, "shapes_mme": SHAPES},
        scorers={"shapes_gqa": gqa.SCORER, "shapes_mme": mme.SCORER, "shapes_pope": pope.SCORER},
        data_columns={"shapes_pope": ("image", "question", "answer"), "shapes_gqa": ("image", "question", "answer"),
                      "shapes_mme": ("question_id", "image", "question", "answer", "category")},
        leaderboard=(Column("shapes GQA", ("shapes_gqa",), "exact_match", "accuracy"),
                     Column("shapes MME", ("shapes_mme",), "total", "mme"),
                     Column("shapes POPE F1", ("shapes_pope_random", "shapes_pope_popular", "shapes_pope_adversarial"),
                            "f1", "f1")),
    ),
)


def longest_prefix(name: str, keys) -> str | None:
    """`name` if it is one of `keys`, else the longest key that is a prefix of it ("pope" covers
    "pope_random"), else None."""
    found = [key for key in keys if name == key or name.startswith(key + "_")]
    return max(found, key=len) if found else None


def benchmark_for(task: str) -> Benchmark | None:
    """The record of task `task` (a task of one of its suites, or a split: its scorer's prefix), or None."""
    for bench in BENCHMARKS:
        if task in bench.tasks or longest_prefix(task, bench.scorers) is not None:
            return bench
    return None
