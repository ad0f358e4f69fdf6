"""MME as its official `eval_tool/calculation.py` scores it.

Parsing: lower-case; exactly "yes"/"no", else "yes" then "no" searched in the first four
characters, else "other" (always wrong). lmms-eval's parser is more lenient: it strips dots and
maps a lone "y"/"n" to yes/no; here "y" and "n" are "other". ("yes." is "yes" under both rules:
its first four characters contain "yes".)

Scores per category: acc = % questions correct, acc+ = % images with both questions correct,
score = acc + acc+; perception = sum over the 10 perception categories (max 2000), cognition over
the 4 cognition ones (max 800). The official tool requires both questions of every image; an image
with only one evaluated question (e.g. `limit` cut the pair) is left out of acc+ here, and the
aggregation warns.
"""

from __future__ import annotations

import sys
from collections import defaultdict

from harness.scoring import Scorer

NAME = "mme_calculation"
PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
QUESTIONS_PER_IMAGE = 2
_warned: set[int] = set()  # counts already warned about (each metric's aggregation calls category_scores)


def parse(response: str) -> str:
    """ "yes", "no" or "other", as calculation.py's `parse_pred_ans` after lower-casing."""
    text = response.lower()
    if text in ("yes", "no"):
        return text
    if "yes" in text[:4]:
        return "yes"
    if "no" in text[:4]:
        return "no"
    return "other"


def score(doc: dict, response: str) -> dict:
    """{"pred", "image", "category", "score"}: parsed answer, the image (question_id), its category."""
    pred = parse(response)
    return {"pred": pred, "image": doc["question_id"], "category": doc["category"],
            "score": float(pred == doc["answer"].lower())}


def category_scores(records: list[dict], warn: bool = True) -> dict[str, dict[str, float]]:
    """category -> {"acc", "acc_plus", "score"} from per-sample records of `score`.

    acc+ counts only images whose two questions were both evaluated; `warn` prints how many were
    not (their questions still count in acc).
    """
    by_category: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        by_category[record["category"]][record["image"]].append(record["score"])
    result, incomplete = {}, 0
    for category, images in by_category.items():
        answers = [s for image in images.values() for s in image]
        whole = [image for image in images.values() if len(image) == QUESTIONS_PER_IMAGE]
        incomplete += len(images) - len(whole)
        acc = 100.0 * sum(answers) / len(answers)
        acc_plus = 100.0 * sum(all(s == 1.0 for s in image) for image in whole) / len(whole) if whole else 0.0
        result[category] = {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus}
    if incomplete and warn and incomplete not in _warned:
        _warned.add(incomplete)
        print(f"warning: MME: {incomplete} image(s) have {QUESTIONS_PER_IMAGE - 1} of their {QUESTIONS_PER_IMAGE} "
              "questions evaluated (limit cut the pair?); acc+ leaves them out. Use an even limit to keep pairs whole.",
              file=sys.stderr)
    return result


def totals(records: list[dict]) -> dict:
    """{"categories": category_scores, "perception", "cognition", "total"} (sums over categories present)."""
    categories = category_scores(records)
    perception = sum(c["score"] for name, c in categories.items() if name in PERCEPTION)
    cognition = sum(c["score"] for name, c in categories.items() if name in COGNITION)
    return {"categories": categories, "perception": perception, "cognition": cognition, "total": perception + cognition}


SCORER = Scorer(NAME, score)
