"""MMBench (EN / CN dev): single-pass accuracy and CircularEval, as VLMEvalKit scores them without a judge.

Prompt (LLaVA's `llava/eval/model_vqa_mmbench.py`): `<hint>\\n<question>\\nA. <option A>\\n...`
then "Answer with the option's letter from the given choices directly." (CN: "请直接回答选项字母。").

Official code: open-compass/VLMEvalKit at e8e78f05 (default branch, 2026-08-18):
`vlmeval/utils/matching_util.py` (`can_infer*`, whose rules last changed in a67ace50, 2026-06-17)
and `vlmeval/dataset/utils/multiple_choice.py` (`mcq_circular_eval`), run with the judge
`exact_matching` (`ImageMCQDataset.evaluate_heuristic`: no GPT). Why this version: it is the one
with an official no-judge mode, which says what an unmatched answer counts (wrong), and it is what
VLMEvalKit runs today. LLaVA-1.5's 64.3 was scored by the MMBench evaluation server (LLaVA's
docs/Evaluation.md: submit `answers_upload/mmbench_dev_20230712`) in October 2023, before
VLMEvalKit's first commit (9ac258c1, 2023-11-25, whose `can_infer_option` looked for letters A-E
anywhere in the answer, without the rules below, and always asked ChatGPT when they failed); with
LLaVA's letter prompt almost every answer is a bare letter, which both versions read alike.

Letter extraction, `can_infer(answer, choices)` (choices: {letter: text} of the options the prompt
shows, `options(doc)`; VLMEvalKit's `build_choices`: the non-NaN option cells):
`can_infer_option` and, when it returns False, `can_infer_text`. Quoted (e8e78f05):

    if 'Failed to obtain answer via API' in answer:
        return False
    reject_to_answer = [
        "Sorry, I can't help with images of people yet.", "I can't process this file.",
        "I'm sorry, but without the image provided", 'Cannot determine the answer'
    ]
    for err in reject_to_answer:
        if err in answer:
            return 'Z'
    ...
    chars = '.()[],:;!*#{}'
    for c in chars:
        answer_mod = answer_mod.replace(c, ' ')
    splits = [x.strip() for x in answer_mod.split()]
    count = count_choice(splits, choices)          # letters of `choices` among the words
    if count == 1:
        for ch in choices:
            if 'A' in splits and len(splits) > 3 and verbose:
                ...
                return False
            if ch in splits and splits.index(ch) > (len(splits) - 5):
                return ch
    elif count == 0 and count_choice(splits, {'Z', ''}) == 1:
        return 'Z'
    match = _VERBOSE_ANSWER_RE.search(answer or "")   # r"(?i)(?:correct\\s+)?answer\\s+is\\s+\\**([ABCD])\\**"
    if match and match.group(1).upper() in choices:
        return match.group(1).upper()
    return False

    def can_infer_text(answer, choices):
        answer = answer.lower()
        if len(answer) > 2 * sum(len(str(v)) for v in choices.values()):
            return False
        ... cands = [k for k in choices if str(choices[k]).lower() in answer]
        if len(cands) == 1:
            return cands[0]
        return False

So: exactly one option letter among the words, and its first occurrence among the last four
words; else "Z" (a refusal, or the word "Z" with no letter); else "answer is X" (any case, X in
A-D and an option); else, for an answer at most twice as long as all option texts together,
exactly one option whose text it contains (case-insensitive). `verbose` is the environment's
`VERBOSE`, unset (off) here. `pred` is the letter, "Z" or None (no match). Under `exact_matching`
an unmatched answer is `opt='Z'` (`extract_answer_from_item`), and a circular group with one is
`hit=0` ("Failed in Prefetch, no GPT-based answer matching under `exact_matching` policy."): wrong,
never a random letter (that is the GPT path after 3 failed tries).

CircularEval: the official dev TSV, mirrored by lmms-lab/MMBench (about 4,330 rows for 1,164
questions), holds every question once per rotation of its options; a copy's `index` is the
original's plus k * 1,000,000. `mcq_circular_eval` keeps the rows whose `index == int(index % 1e6)`
(the originals, `data_main`), and for each scores the group `g_index == index`: hit = 1 only when
every row of it is matched to its answer. The accuracy is the mean hit over `data_main`, so only
questions whose original was evaluated count; copies without their original are left out.
Single-pass accuracy (`mcq_vanilla_eval` on the originals) uses the originals only.
"""

from __future__ import annotations

import math
import re

from harness.scoring import Scorer

NAME = "vlmevalkit_e8e78f05_exact_matching"
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


_API_FAILED = "Failed to obtain answer via API"
_REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
             "I'm sorry, but without the image provided", "Cannot determine the answer")
_VERBOSE_ANSWER = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")


def infer_option(answer: str, choices: dict[str, str]) -> str | None:
    """VLMEvalKit's `can_infer_option`: a letter of `choices`, "Z", or None (False)."""
    if _API_FAILED in answer:
        return None
    if any(refusal in answer for refusal in _REFUSALS):
        return "Z"
    text = answer
    for char in _SPLIT_CHARS:
        text = text.replace(char, " ")
    words = text.split()
    letters = [letter for letter in choices if letter in words]
    if len(letters) == 1:
        if words.index(letters[0]) > len(words) - 5:  # among the last four words
            return letters[0]
    elif not letters and "Z" in words:
        return "Z"
    match = _VERBOSE_ANSWER.search(answer)
    return match.group(1).upper() if match and match.group(1).upper() in choices else None


def infer_text(answer: str, choices: dict[str, str]) -> str | None:
    """VLMEvalKit's `can_infer_text`: the one option whose text the (not too long) answer holds, or None."""
    lowered = answer.lower()
    if len(lowered) > 2 * sum(len(str(text)) for text in choices.values()):
        return None
    hits = [letter for letter, text in choices.items() if str(text).lower() in lowered]
    return hits[0] if len(hits) == 1 else None


def parse(response: str, choices: dict[str, str]) -> str | None:
    """VLMEvalKit's `can_infer`: the option letter, "Z" (refusal) or None (no rule matched: wrong)."""
    return infer_option(str(response), choices) or infer_text(str(response), choices)


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
    """% of the evaluated original questions whose every evaluated copy (the original included) is right.

    A group whose original (index < 1e6) was not evaluated is left out, as `mcq_circular_eval` does.
    """
    groups: dict[int, bool] = {r["group"]: True for r in records if not r["copy"]}
    for r in records:
        if r["group"] in groups:
            groups[r["group"]] = groups[r["group"]] and r["score"] == 1.0
    return 100.0 * sum(groups.values()) / len(groups) if groups else float("nan")


SCORER = Scorer(NAME, score)
