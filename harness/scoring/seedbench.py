"""SEED-Bench image questions as LLaVA's `scripts/convert_seed_for_submission.py` scores them.

A response is right when it equals the answer letter exactly (the generation loop strips it, as
LLaVA's does): "A" is right, "A." and "A. dog" are wrong. lmms-eval's seedbench task keeps only the
first character ("A." -> "A") and is more lenient. Accuracy overall and per question type.
"""

from __future__ import annotations

from harness.scoring import Scorer

NAME = "llava_seed_exact"
QUESTION_TYPES = {  # question_type_id -> name (the 9 image dimensions of SEED-Bench)
    1: "scene_understanding", 2: "instance_identity", 3: "instance_attributes", 4: "instance_location",
    5: "instances_counting", 6: "spatial_relation", 7: "instance_interaction", 8: "visual_reasoning",
    9: "text_understanding",
}


def score(doc: dict, response: str) -> dict:
    """{"pred", "label", "question_type", "score"}."""
    qtype = QUESTION_TYPES.get(int(doc["question_type_id"]), str(doc["question_type_id"]))
    return {"pred": response, "label": doc["answer"], "question_type": qtype, "score": float(response == doc["answer"])}


def accuracy(records: list[dict], question_type: str | None = None) -> float:
    """% correct, over all records or those of one question type (NaN when there are none)."""
    mine = [r for r in records if question_type is None or r["question_type"] == question_type]
    return 100.0 * sum(r["score"] for r in mine) / len(mine) if mine else float("nan")


SCORER = Scorer(NAME, score)
