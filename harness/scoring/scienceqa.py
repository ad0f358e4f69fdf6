"""ScienceQA-IMG as LLaVA's `llava/eval/eval_science_qa.py` scores it.

The response (newlines replaced by ". ") gives a letter when it is exactly a letter A-E (after
stripping), starts with "<letter>. ", or contains "The answer is <letter>"; anything else fails
(wrong). The letter must be one of this question's options. So "B" and "B. cat" are B, but "B."
(no space after the dot), "(B)" and the option's text fail. lmms-eval's scienceqa task also takes
"B." as B.
"""

from __future__ import annotations

import re

from harness.scoring import Scorer

NAME = "llava_eval_science_qa"
LETTERS = ("A", "B", "C", "D", "E")
_ANSWER_IS = (re.compile(r"The answer is ([A-E])\."), re.compile(r"The answer is ([A-E])"))


def parse(response: str, n_choices: int) -> str | None:
    """The option letter LLaVA's script reads from `response`, or None (failed)."""
    text = response.replace("\n", ". ")
    if text.strip() in LETTERS:
        letter = text.strip()
    elif len(text) >= 3 and text[0] in LETTERS and text[1:3] == ". ":
        letter = text[0]
    else:
        match = next((m for m in (p.search(text) for p in _ANSWER_IS) if m), None) if "The answer is " in text else None
        letter = match.group(1) if match else None
    return letter if letter in LETTERS[:n_choices] else None


def score(doc: dict, response: str) -> dict:
    """{"pred": letter or None, "label": letter, "score"}."""
    pred, label = parse(response, len(doc["choices"])), LETTERS[int(doc["answer"])]
    return {"pred": pred, "label": label, "score": float(pred == label)}


def accuracy(records: list[dict]) -> float:
    return 100.0 * sum(r["score"] for r in records) / len(records) if records else float("nan")


SCORER = Scorer(NAME, score)
