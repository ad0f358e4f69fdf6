"""harness.scoring: every benchmark's rule against hand-computed values on adversarial answers."""

from pathlib import Path

import pytest
import yaml

from harness.scoring import Scorer, gqa, mmbench, mme, pope, scienceqa, scorer_for, seedbench, vqa

TASKS = Path(__file__).parents[1] / "tasks"


# ---------------------------------------------------------------- GQA: .rstrip('.').lower() and string equality

@pytest.mark.parametrize("text, normalized", [
    ("Red.", "red"), ("red...", "red"), ("The Red.", "the red"), ("a red circle", "a red circle"),
    ("T-shirt", "t-shirt"), ("yes!", "yes!"), ("two  dogs", "two  dogs"), (".red.", ".red"),
])
def test_gqa_normalize_official(text, normalized):
    assert gqa.normalize(text) == normalized


def test_gqa_crafted_answers():
    # the lenient rule (articles and punctuation dropped, spaces collapsed) gets 5 of 6; the official 2 of 6
    docs = [{"answer": a} for a in ("red", "yes", "blue", "yes", "red circle", "yes")]
    responses = ["The Red.", "Yes", "blue.", "No.", "a red circle", "yes!"]
    records = [gqa.score(d, r) for d, r in zip(docs, responses)]
    assert [r["score"] for r in records] == [0.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert gqa.accuracy(records) == pytest.approx(100 / 3)


# ---------------------------------------------------------------- MME: calculation.py's parse_pred_ans

@pytest.mark.parametrize("response, parsed", [
    ("Yes", "yes"), ("no", "no"), ("yes.", "yes"), ("No, it is not.", "no"), ("Not sure", "no"),
    ("y", "other"), ("n", "other"), ("N", "other"), ("The answer is yes", "other"), ("", "other"),
    ("Nope", "no"), ("  yes", "other"),  # "  ye" holds neither word; LLaVA strips before this
    ("Yesno", "yes"), ("ok yes", "other"),
])
def test_mme_parse_official(response, parsed):
    assert mme.parse(response) == parsed


def test_mme_scores_by_hand(capsys):
    def rec(image, category, answer, response):
        return mme.score({"question_id": image, "category": category, "answer": answer}, response)

    records = [
        rec("count/1.jpg", "count", "Yes", "Yes"), rec("count/1.jpg", "count", "No", "No."),    # both right
        rec("count/2.jpg", "count", "Yes", "y"), rec("count/2.jpg", "count", "No", "no"),       # "y" is other
        rec("code/1.png", "code_reasoning", "Yes", "n"), rec("code/1.png", "code_reasoning", "No", "No"),
        rec("OCR/1.jpg", "OCR", "Yes", "Yes"),                                                  # pair cut by limit
    ]
    totals = mme.totals(records)
    assert totals["categories"]["count"] == {"acc": 75.0, "acc_plus": 50.0, "score": 125.0}
    assert totals["categories"]["code_reasoning"] == {"acc": 50.0, "acc_plus": 0.0, "score": 50.0}
    # OCR: acc over its one question; acc+ leaves the incomplete image out (no whole image: 0)
    assert totals["categories"]["OCR"] == {"acc": 100.0, "acc_plus": 0.0, "score": 100.0}
    assert (totals["perception"], totals["cognition"], totals["total"]) == (225.0, 50.0, 275.0)
    assert "1 image(s) have 1 of their 2 questions" in capsys.readouterr().err
    assert len(mme.PERCEPTION) == 10 and len(mme.COGNITION) == 4


# ---------------------------------------------------------------- POPE: LLaVA's eval_pope.py

@pytest.mark.parametrize("response, parsed", [
    ("Yes, there is.", "yes"), ("No.", "no"), ("There is not a dog.", "no"), ("no", "no"),
    ("Yes. But no cat is visible.", "yes"), ("No, there isn't.", "no"), ("Nope", "yes"), ("NO", "yes"),
    ("Not really", "yes"), ("I do not see one", "no"), ("", "yes"),
])
def test_pope_parse(response, parsed):
    assert pope.parse(response) == parsed


def test_pope_metrics_by_hand():
    records = [pope.score({"answer": a}, r) for a, r in
               [("yes", "Yes"), ("yes", "No."), ("no", "Yes, a dog."), ("no", "not at all"), ("no", "No")]]
    # tp 1, fn 1, fp 1, tn 2
    assert pope.records_metrics(records) == pytest.approx(
        {"accuracy": 60.0, "precision": 50.0, "recall": 50.0, "f1": 50.0, "yes_ratio": 40.0})
    assert pope.metrics(["no", "no"], ["yes", "no"])["f1"] == 0.0
    with pytest.raises(ValueError):
        pope.metrics(["yes"], ["yes", "no"])


# ---------------------------------------------------------------- VQA accuracy (TextVQA, VQAv2)

def test_vqa_leave_one_out_by_hand():
    # 2 of 10 humans said "2": each left-out subset without one of them holds 1 match (1/3), the other 8 hold 2 (2/3)
    assert vqa.leave_one_out_accuracy("2", ["2", "2"] + ["3"] * 8) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)
    assert vqa.leave_one_out_accuracy("2", ["2"] * 3 + ["3"] * 7) == pytest.approx((3 * 2 / 3 + 7 * 1) / 10)
    assert vqa.leave_one_out_accuracy("2", ["2"] * 4 + ["3"] * 6) == 1.0
    assert vqa.leave_one_out_accuracy("4", ["3"] * 10) == 0.0


@pytest.mark.parametrize("response, answers, pred, accuracy", [
    ("Two.", ["2"] * 10, "2", 1.0),                                 # number word -> digit, dot dropped
    ("The dog", ["dog"] * 10, "dog", 1.0),                           # article dropped
    ("STOP!", ["stop"] * 3 + ["go"] * 7, "stop", 0.9),               # (3 * 2/3 + 7 * 1) / 10
    ("dark red", ["red"] * 7 + ["dark red"] * 3, "dark red", 0.9),
    ("red", ["red"] * 7 + ["dark red"] * 3, "red", 1.0),
    ("it's red", ["red"] * 10, "it 's red", 0.0),                  # EvalAI splits "'s" off
])
def test_textvqa_accuracy(response, answers, pred, accuracy):
    assert vqa.textvqa_accuracy(response, answers) == (pred, pytest.approx(accuracy))


def test_vqav2_server_rule():
    # the server normalises human answers only when they disagree; LLaVA normalises the prediction before
    assert vqa.vqav2_accuracy("Two", ["two"] * 10) == ("2", 0.0)         # unanimous raw "two" vs submitted "2"
    assert vqa.vqav2_accuracy("Two", ["two"] * 9 + ["2"]) == ("2", 1.0)  # disagreeing: both normalised
    assert vqa.vqav2_accuracy("yes.", ["yes"] * 10) == ("yes", 1.0)
    record = vqa.vqav2_score({"question_id": 7, "answers": [{"answer": "1"}] * 8 + [{"answer": "one"}, {"answer": "2"}]},
                             "one")
    assert record == {"pred": "1", "question_id": 7, "score": 1.0}
    assert "score" not in vqa.vqav2_score({"question_id": 8, "answers": None}, "one")  # test-dev: server-scored
    assert vqa.accuracy([{"score": 1.0}, {"score": 0.5}, {"pred": "x"}]) == 75.0


# ---------------------------------------------------------------- multiple choice

@pytest.mark.parametrize("response, parsed", [
    ("B", "B"), (" B ", "B"), ("B. cat", "B"), ("The answer is C.", "C"),
    ("The answer is C", None),                       # `The answer is ([A-Z]).` needs a character after the letter
    ("The answer is A. The answer is A.", None),     # two matches fail
    ("B.", None), ("(B)", None), ("cat", None), ("b", None), ("D", None),  # D: not an option of this question
    ("B\nbecause", None),                            # newlines are not rewritten: "B\nb" is not "B. "
])
def test_scienceqa_parse(response, parsed):
    assert scienceqa.parse(response, n_choices=3) == parsed


def test_scienceqa_score():
    doc = {"choices": ["dog", "cat", "cow"], "answer": 1}
    assert scienceqa.score(doc, "B") == {"pred": "B", "label": "B", "score": 1.0}
    assert scienceqa.score(doc, "B.")["score"] == 0.0


def test_scienceqa_crafted_answers():
    # LLaVA main's rule: "B\ncircle" and a final "The answer is B" fail; the unmerged 5200b75 rule took both
    docs = [{"choices": ["dog", "cat", "cow"], "answer": a} for a in (1, 2, 1)]
    records = [scienceqa.score(d, r) for d, r in zip(docs, ["B\ncircle", "C", "The answer is B"])]
    assert [r["score"] for r in records] == [0.0, 1.0, 0.0]
    assert scienceqa.accuracy(records) == pytest.approx(100 / 3)  # 100.0 under the 5200b75 rule


CHOICES = {"A": "apple", "B": "banana pie", "C": "cherry", "D": "pie"}


@pytest.mark.parametrize("response, parsed", [
    ("A", "A"), ("A.", "A"), ("(C)", "C"), ("Answer: B", "B"), ("The answer is D.", "D"),
    ("cherry", "C"), ("Cherry!", "C"),                 # option text instead of the letter
    ("pie", "D"),                                     # only option D's text occurs in "pie"
    ("banana pie", None),                             # both "banana pie" and "pie" appear in it
    ("A or B", None), ("I don't know", None),         # two letters / nothing
    ("B is right, the others are not", None),         # the letter is not among the last four words
    ("Cannot determine the answer", "Z"),             # refusal: "Z", wrong
])
def test_mmbench_parse(response, parsed):
    assert mmbench.parse(response, CHOICES) == parsed


def test_mmbench_prompt_and_circular():
    doc = {"index": 1_000_003, "question": "What is it?", "hint": "A fruit.", "A": "apple", "B": "pear",
           "C": None, "D": "nan", "answer": "B", "category": "x"}
    assert mmbench.prompt(doc) == ("A fruit.\nWhat is it?\nA. apple\nB. pear\n"
                                   "Answer with the option's letter from the given choices directly.")
    assert mmbench.prompt({**doc, "hint": None}, "cn") == "What is it?\nA. apple\nB. pear\n请直接回答选项字母。"
    assert mmbench.score(doc, "B.") == {"pred": "B", "label": "B", "group": 3, "copy": True, "category": "x", "score": 1.0}
    records = [{"group": 1, "copy": False, "score": 1.0}, {"group": 1, "copy": True, "score": 0.0},
               {"group": 2, "copy": False, "score": 1.0}, {"group": 2, "copy": True, "score": 1.0},
               {"group": 3, "copy": False, "score": 0.0}, {"group": 3, "copy": True, "score": 1.0}]
    assert mmbench.single_accuracy(records) == pytest.approx(200 / 3)
    assert mmbench.circular_accuracy(records) == pytest.approx(100 / 3)


def test_seedbench_exact_letter():
    doc = {"answer": "A", "question_type_id": 5}
    assert seedbench.score(doc, "A") == {"pred": "A", "label": "A", "question_type": "instances_counting", "score": 1.0}
    assert [seedbench.score(doc, r)["score"] for r in ("A.", "A. two", "a", "B")] == [0.0, 0.0, 0.0, 0.0]
    records = [{"question_type": "instances_counting", "score": 1.0}, {"question_type": "instances_counting", "score": 0.0},
               {"question_type": "scene_understanding", "score": 1.0}]
    assert seedbench.accuracy(records) == pytest.approx(200 / 3)
    assert seedbench.accuracy(records, "instances_counting") == 50.0


def task_yaml_names() -> list[str]:
    """The `task:` name of every task YAML in tasks/; group YAMLs (their `task:` is a list of tasks) aside."""
    class Loader(yaml.SafeLoader):  # lmms-eval's `!function` tags are not needed here
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    names = []
    for path in sorted(TASKS.rglob("*.yaml")):
        task = yaml.load(path.read_text(), Loader=Loader).get("task")
        if isinstance(task, list):  # a group
            continue
        assert isinstance(task, str), f"{path.name}: no task name"
        names.append(task)
    return names


def test_every_task_has_one_scorer():
    registered = {id(obj): obj for module in (gqa, mmbench, mme, pope, scienceqa, seedbench, vqa)
                  for obj in vars(module).values() if isinstance(obj, Scorer)}
    names = task_yaml_names()
    assert len(names) == len(set(names)) >= 18 and {"gqa", "shapes_pope_random", "vqav2_testdev"} <= set(names)
    for name in names:  # one scoring rule per task, one of the benchmark modules' own
        scorer = scorer_for(name)
        assert isinstance(scorer, Scorer) and id(scorer) in registered, name
    assert scorer_for("shapes_gqa") is scorer_for("gqa") is gqa.SCORER
    assert scorer_for("shapes_pope_random") is scorer_for("pope_adversarial") is pope.SCORER
    assert scorer_for("shapes_mme") is scorer_for("mme") is mme.SCORER
    assert scorer_for("mmbench_cn_dev") is mmbench.SCORER and scorer_for("textvqa_val_no_ocr") is vqa.TEXTVQA_SCORER
    assert scorer_for("vqav2_val") is vqa.VQAV2_SCORER and scorer_for("vqav2_testdev") is vqa.VQAV2_TESTDEV_SCORER
    assert scorer_for("seedbench_img") is seedbench.SCORER
    assert scorer_for("unknown_task") is None
