"""POPE as LLaVA's `llava/eval/eval_pope.py` scores it ("yes" is the positive class)."""

from __future__ import annotations

from harness.scoring import Scorer

NAME = "llava_eval_pope"
METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio")


def parse(response: str) -> str:
    """ "no" if the first sentence says no/No/not, else "yes".

    Keep the text before the first ".", drop commas, split on single spaces; "no" if a word is
    "no", "No" or "not" (so "NO" and "Not" count as yes, as in LLaVA's script).
    """
    words = response.split(".")[0].replace(",", "").split(" ")
    return "no" if ("no" in words or "No" in words or "not" in words) else "yes"


def score(doc: dict, response: str) -> dict:
    """{"pred", "label", "score"}: the parsed prediction, the label, 1.0 if they agree."""
    pred, label = parse(response), doc["answer"].lower().strip()
    return {"pred": pred, "label": label, "score": float(pred == label)}


def failed(doc: dict) -> dict:
    """A failed sample's {"pred", "label"}: the prediction opposite to the label, so that it is wrong in
    every metric: a failed "yes" question is a false negative (recall), a failed "no" one a false positive
    (precision); accuracy counts it wrong, and yes_ratio counts the opposite answer."""
    label = doc["answer"].lower().strip()
    return {"pred": "no" if label == "yes" else "yes", "label": label}


def metrics(preds: list[str], labels: list[str]) -> dict[str, float]:
    """accuracy, precision, recall, F1 and yes-ratio (share of "yes" predictions), in %.

    A ratio with a zero denominator is 0 (LLaVA's script would divide by zero).
    """
    pairs = list(zip(preds, labels, strict=True))
    tp = sum(p == "yes" and t == "yes" for p, t in pairs)
    fp = sum(p == "yes" and t == "no" for p, t in pairs)
    fn = sum(p == "no" and t == "yes" for p, t in pairs)
    correct = sum(p == t for p, t in pairs)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    n = len(pairs)
    return {
        "accuracy": 100.0 * correct / n if n else 0.0,
        "precision": 100.0 * precision,
        "recall": 100.0 * recall,
        "f1": 100.0 * f1,
        "yes_ratio": 100.0 * sum(p == "yes" for p in preds) / n if n else 0.0,
    }


def records_metrics(records: list[dict]) -> dict[str, float]:
    """`metrics` over per-sample records from `score`."""
    return metrics([r["pred"] for r in records], [r["label"] for r in records])


SCORER = Scorer(NAME, score, failed)
