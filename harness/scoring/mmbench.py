"""MMBench (EN / CN dev): single-pass accuracy and CircularEval, as the official evaluation.

Prompt (LLaVA's `llava/eval/model_vqa_mmbench.py`): `<hint>\\n<question>\\nA. <option A>\\n...`
then "Answer with the option's letter from the given choices directly." (CN: "请直接回答选项字母。").

CircularEval: the official dev TSV, mirrored by lmms-lab/MMBench (about 4,330 rows for 1,164
questions), holds every question once per rotation of its options; a copy's `index` is the
original's plus k * 1,000,000. A question counts as right only
when every one of its copies is answered right; single-pass accuracy uses the originals only.

Answer extraction follows the official tool's exact-matching step: with the characters
`.()[],:;!*#{}` turned into spaces, exactly one option letter among the words -> that letter;
otherwise exactly one option whose text appears in the answer (case-insensitive) -> its letter;
otherwise unparsed and wrong. The official tool then asks a GPT judge about unparsed answers;
here there is no judge (with LLaVA's letter prompt almost every answer is a bare letter).
"""

from __future__ import annotations

import math

from harness.scoring import Scorer

NAME = "mmbench_circular_exact"
LETTERS = ("A", "B", "C", "D", "E")
COPY_OFFSET = 1_000_000
POST_PROMPT = {"en": "Answer with the option's letter from the given choices directly.", "cn": "请直接回答选项字母。"}
_SPLIT_CHARS = ".()[],:;!*#{}"


def is_none(value) -> bool:
    """An empty hub cell: None, NaN, or the strings "nan"/"none"."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or (
        isinstance(value, str) and value.strip().lower() in ("nan", "none", ""))


def options(doc: dict) -> dict[str, str]:
    """{letter: option text} of the options this question has."""
    return {letter: str(doc[letter]) for letter in LETTERS if letter in doc and not is_none(doc[letter])}


def prompt(doc: dict, lang: str = "en") -> str:
    """LLaVA's MMBench prompt for `doc`."""
    question = doc["question"] if is_none(doc.get("hint")) else f"{doc['hint']}\n{doc['question']}"
    for letter, text in options(doc).items():
        question += f"\n{letter}. {text}"
    return f"{question}\n{POST_PROMPT[lang]}"


def parse(response: str, choices: dict[str, str]) -> str | None:
    """The option letter in `response` by exact matching, or None."""
    text = response
    for char in _SPLIT_CHARS:
        text = text.replace(char, " ")
    words = text.split()
    letters = [letter for letter in choices if letter in words]
    if len(letters) == 1:
        return letters[0]
    lowered = response.lower()
    hits = [letter for letter, option in choices.items() if option.lower() in lowered]
    return hits[0] if len(hits) == 1 else None


def score(doc: dict, response: str) -> dict:
    """{"pred", "label", "group", "copy", "category", "score"}; group = index mod 1e6, copy = index >= 1e6."""
    index = int(doc["index"])
    pred = parse(response, options(doc))
    return {"pred": pred, "label": doc["answer"], "group": index % COPY_OFFSET, "copy": index >= COPY_OFFSET,
            "category": doc.get("category"), "score": float(pred == doc["answer"])}


def single_accuracy(records: list[dict]) -> float:
    """% correct over the original questions (copies left out)."""
    originals = [r for r in records if not r["copy"]]
    return 100.0 * sum(r["score"] for r in originals) / len(originals) if originals else float("nan")


def circular_accuracy(records: list[dict]) -> float:
    """% of questions whose every evaluated copy is right."""
    groups: dict[int, bool] = {}
    for r in records:
        groups[r["group"]] = groups.get(r["group"], True) and r["score"] == 1.0
    return 100.0 * sum(groups.values()) / len(groups) if groups else float("nan")


SCORER = Scorer(NAME, score)
