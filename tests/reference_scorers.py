"""Slow, literal ports of the official scoring code, for tests/test_scorer_references.py only.

Each function follows its source line by line (names, mutation, dict comparisons and all), so
that harness.scoring can be compared with it on many generated answers:

- `llava_eval_science_qa`: haotian-liu/LLaVA c121f04 `llava/eval/eval_science_qa.py` (the main
  loop's parsing and `get_pred_idx`), after `model_vqa_science.py`'s `outputs.strip()`.
"""

from __future__ import annotations

import re

# ---------------------------------------------------------------- LLaVA eval_science_qa.py (c121f04)

SQA_OPTIONS = ["A", "B", "C", "D", "E"]  # --options default


def get_pred_idx(prediction, choices, options):
    """
    Get the index (e.g. 2) from the prediction (e.g. 'C')
    """
    if prediction in options[:len(choices)]:
        return options.index(prediction)
    else:
        return -1


def llava_eval_science_qa(outputs: str, choices: list, answer: int) -> tuple[str, bool]:
    """(parsed answer or 'FAILED', correct) for one problem."""
    pred_text = outputs.strip()  # model_vqa_science.py writes outputs.strip() as "text"
    if pred_text in SQA_OPTIONS:
        answer_ = pred_text
    elif len(pred_text) >= 3 and pred_text[0] in SQA_OPTIONS and pred_text[1:3] == ". ":
        answer_ = pred_text[0]
    else:
        pattern = re.compile(r'The answer is ([A-Z]).')
        res = pattern.findall(pred_text)
        if len(res) == 1:
            answer_ = res[0]  # 'A', 'B', ...
        else:
            answer_ = "FAILED"
    pred_idx = get_pred_idx(answer_, choices, SQA_OPTIONS)
    return answer_, pred_idx == answer
