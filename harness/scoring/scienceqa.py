"""ScienceQA-IMG as LLaVA's `llava/eval/eval_science_qa.py` on its main branch scores it.

Source: haotian-liu/LLaVA, `llava/eval/eval_science_qa.py`, released in ce1aa08 ("Release evaluation
scripts.", 2023-10-11) and unchanged at c121f04 (main, 2024-05-12); LLaVA-1.5's 66.8 comes from it
(`scripts/v1_5/eval/sqa.sh`, IMG-Accuracy). The rule, quoted from c121f04 (`args.options` defaults
to `["A", "B", "C", "D", "E"]`):

    if pred_text in args.options:
        answer = pred_text
    elif len(pred_text) >= 3 and pred_text[0] in args.options and pred_text[1:3] == ". ":
        answer = pred_text[0]
    else:
        pattern = re.compile(r'The answer is ([A-Z]).')
        res = pattern.findall(pred_text)
        if len(res) == 1:
            answer = res[0]  # 'A', 'B', ...
        else:
            answer = "FAILED"

    pred_idx = get_pred_idx(answer, prob['choices'], args.options)
    ...
    if pred_idx == prob['answer']:   # correct, else incorrect; accuracy = correct / total

    def get_pred_idx(prediction, choices, options):
        if prediction in options[:len(choices)]:
            return options.index(prediction)
        else:
            return -1
            return random.choice(range(len(choices)))

So a response gives a letter when it is exactly one of A-E, starts with "<letter>. ", or holds
exactly one match of `The answer is ([A-Z]).` (any character after the letter but a newline:
"The answer is B" at the very end fails, and so does a response saying it twice). Newlines are
never rewritten: "B\\ncircle" fails. The letter counts only when it is one of this question's
first len(choices) letters ("The answer is F." on 3 choices is wrong). A failed parse is never
replaced by a random guess: the `random.choice` line is unreachable after `return -1`, so a
failure (and a question with no prediction, read as 'FAILED') is counted wrong, in the total.
`pred` here is None for every such case.

The response is the generation stripped (`outputs.strip()` in `llava/eval/model_vqa_science.py`,
which writes `pred_text`; the harness strips its responses the same way and `parse` strips again,
a no-op then). The unmerged branch commit 5200b75 (2024-03-14) rewrites "\\n" into ". " and
accepts "The answer is X" anywhere; that is not the released rule and not used. lmms-eval's
scienceqa task also takes "B." as B.
"""

from __future__ import annotations

import re

from harness.scoring import Scorer

NAME = "llava_eval_science_qa_c121f04"
LETTERS = ("A", "B", "C", "D", "E")  # args.options
_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def parse(response: str, n_choices: int) -> str | None:
    """The option letter LLaVA's script reads from `response` for a question with `n_choices`, or None (wrong)."""
    text = response.strip()  # model_vqa_science.py: outputs.strip()
    if text in LETTERS:
        letter = text
    elif len(text) >= 3 and text[0] in LETTERS and text[1:3] == ". ":
        letter = text[0]
    else:
        found = _ANSWER_IS.findall(text)
        letter = found[0] if len(found) == 1 else None  # None: "FAILED"
    return letter if letter in LETTERS[:n_choices] else None  # get_pred_idx: -1 -> wrong


def score(doc: dict, response: str) -> dict:
    """{"pred": letter or None, "label": letter, "score"}."""
    pred, label = parse(response, len(doc["choices"])), LETTERS[int(doc["answer"])]
    return {"pred": pred, "label": label, "score": float(pred == label)}


def accuracy(records: list[dict]) -> float:
    return 100.0 * sum(r["score"] for r in records) / len(records) if records else float("nan")


SCORER = Scorer(NAME, score)
