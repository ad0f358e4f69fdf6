"""GQA exact match as LLaVA-1.5's pipeline scores it.

LLaVA's `scripts/convert_gqa_for_eval.py` writes `prediction = text.rstrip('.').lower()` and GQA's
`eval.py` compares it with the gold answer by plain string equality. Nothing else is normalised:
"a red circle" does not match "red circle", "red!" does not match "red". (lmms-eval's GQA task
deletes all punctuation and is more lenient.) The response is already stripped of surrounding
whitespace by the generation loop, as LLaVA's generation script strips its outputs.
"""

from __future__ import annotations

from harness.scoring import Scorer

NAME = "llava_gqa_eval"


def normalize(prediction: str) -> str:
    """`prediction.rstrip('.').lower()`: "Red." -> "red", "The red." -> "the red"."""
    return prediction.rstrip(".").lower()


def score(doc: dict, response: str) -> dict:
    """{"pred": normalised prediction, "score": 1.0 if it equals the gold answer else 0.0}."""
    pred = normalize(response)
    return {"pred": pred, "score": float(pred == doc["answer"])}


def accuracy(records: list[dict]) -> float:
    """% of records with score 1."""
    return 100.0 * sum(r["score"] for r in records) / len(records) if records else float("nan")


SCORER = Scorer(NAME, score)
