"""One scoring rule per benchmark, shared by the real and the embedded task families.

    from harness.scoring import scorer_for
    scorer = scorer_for("mmbench_en_dev")     # -> mmbench.SCORER
    fields = scorer.score(doc, response)      # per-sample score fields, written to samples.jsonl

Each module holds a benchmark's parser, its per-sample `score(doc, response) -> dict` and its
aggregation, written to match the tool that published LLaVA-1.5 numbers come from (named in the
module docstring, with the places where lmms-eval's own task differs). Every per-sample dict has
`score` (the sample's contribution to the headline accuracy, 0..1; absent only where a server
scores the split, VQAv2 test-dev) plus the fields its aggregation
needs (parsed prediction, label, image, group, ...). results.json, the leaderboard and W&B read
these fields instead of re-deriving them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Scorer:
    """A benchmark's per-sample scoring rule.

    Attributes:
        name: Recorded in results.json (`tasks.<task>.scorer`), e.g. "llava_gqa_eval".
        score: `(doc, response) -> per-sample fields` (always with `score` in 0..1).
    """

    name: str
    score: Callable[[dict, str], dict]


def scorer_for(task: str) -> Scorer | None:
    """The scorer of a task of tasks/ (real or embedded), or None for a task without one."""
    from harness.scoring import gqa, mme, mmbench, pope, scienceqa, seedbench, vqa

    table = {
        "gqa": gqa.SCORER, "shapes_gqa": gqa.SCORER,
        "mme": mme.SCORER, "shapes_mme": mme.SCORER,
        "pope": pope.SCORER, "shapes_pope": pope.SCORER,
        "mmbench": mmbench.SCORER,
        "scienceqa": scienceqa.SCORER,
        "textvqa": vqa.TEXTVQA_SCORER,
        "vqav2": vqa.VQAV2_SCORER, "vqav2_testdev": vqa.VQAV2_TESTDEV_SCORER,
        "seedbench": seedbench.SCORER,
    }
    keys = [key for key in table if task == key or task.startswith(key + "_")]
    return table[max(keys, key=len)] if keys else None
