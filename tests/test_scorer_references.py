"""harness.scoring against literal ports of the official code (tests/reference_scorers.py) on many
generated adversarial answers: ScienceQA (LLaVA c121f04)."""

import itertools

import pytest
import reference_scorers as ref

from harness.scoring import scienceqa


# ---------------------------------------------------------------- ScienceQA

SQA_LETTERS = ["A", "B", "C", "D", "E", "F", "Z", "a", "b"]
SQA_TEMPLATES = [
    "{L}", " {L}", "{L} ", "\n{L}\n", "{L}.", "{L}. ", "{L}. circle", "{L}.circle", "{L}.\ncircle", "{L}\ncircle",
    "{L}\n", "{L})", "({L})", "{L}: circle", "{L}, circle", "{L} circle", "{L}.. circle", "{L}.  circle", "{L} . circle",
    "The answer is {L}.", "The answer is {L}", "The answer is {L},", "The answer is {L}\n", "The answer is {L} ",
    "the answer is {L}.", "The answer is ({L}).", "The answer is {L}{M}.", "The answer is {L}. The answer is {M}.",
    "The answer is {L}.The answer is {L}.", "I think. The answer is {L}. Yes", "circle. The answer is {L}.",
    "Answer: {L}", "The answer is: {L}.", "The answer is  {L}.", "The answer is {L}.\nThe answer is {M}",
    "{L}. The answer is {M}.", "{L}\nThe answer is {M}.", "The answer is {L}\nThe answer is {M}.",
    "{L}{M}", "{L} {M}", "{L}.{M}", "{L}. {M}", "Option {L}", "{L}\n\nBecause",
]
SQA_OTHER = ["", "FAILED", "circle", "I cannot tell from the image.", "AB", "A.B.", ". ", "..", "The answer is", "E. ",
             "The answer is .", "The answer is A\u00a0B", "\u00a0A", "A\u00a0", "\ttab", "The answer is ÄX."]


def sqa_answers() -> list[str]:
    out = [t.format(L=l, M=m) for t in SQA_TEMPLATES for l, m in itertools.product(SQA_LETTERS, ["A", "C", "E"])]
    return sorted(set(out)) + SQA_OTHER


def test_scienceqa_matches_llava_c121f04_on_generated_answers():
    answers, compared, disagreements = sqa_answers(), 0, []
    for n_choices in (2, 3, 4, 5):
        choices = ["square", "circle", "triangle", "star", "heart"][:n_choices]
        for label in range(n_choices):
            doc = {"choices": choices, "answer": label}
            for response in answers:
                parsed, correct = ref.llava_eval_science_qa(response, choices, label)
                mine = scienceqa.score(doc, response)
                expected_pred = parsed if ref.get_pred_idx(parsed, choices, ref.SQA_OPTIONS) >= 0 else None
                if (mine["score"], mine["pred"]) != (float(correct), expected_pred):
                    disagreements.append((n_choices, label, response, mine, parsed, correct))
                compared += 1
    assert not disagreements, disagreements[:5]
    assert compared > 8000  # about 590 distinct answers x 14 (choices, label) layouts


@pytest.mark.parametrize("response, parsed", [
    ("B", "B"), (" B ", "B"), ("B. cat", "B"), ("B\ncircle", None), ("B\n", "B"),  # stripped, as model_vqa_science
    ("The answer is C.", "C"), ("The answer is C,", "C"), ("The answer is C", None), ("The answer is C\n", None),
    ("The answer is C\n.", None), ("The answer is C.\n", "C"),
    ("The answer is C\nmore", None), ("The answer is B. The answer is B.", None), ("The answer is BC.", "B"),
    ("The answer is F.", None), ("B.", None), ("(B)", None), ("cat", None), ("b", None), ("D", None), ("", None),
    ("A. The answer is B.", "A"), ("I think. The answer is B. Yes", "B"),
])
def test_scienceqa_official_cases(response, parsed):
    assert scienceqa.parse(response, n_choices=3) == parsed
    answer, _ = ref.llava_eval_science_qa(response, ["x", "y", "z"], 0)
    assert (answer if ref.get_pred_idx(answer, ["x", "y", "z"], ref.SQA_OPTIONS) >= 0 else None) == parsed
