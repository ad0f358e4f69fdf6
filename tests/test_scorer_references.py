"""harness.scoring against literal ports of the official code (tests/reference_scorers.py) on many
generated adversarial answers: ScienceQA (LLaVA c121f04), VQAv2 (LLaVA's submission + vqaEval.py
a013f00), MMBench (VLMEvalKit e8e78f05, exact matching, CircularEval)."""

import itertools
import random

import pytest
import reference_scorers as ref

from harness.scoring import mmbench, scienceqa, vqa


@pytest.fixture(autouse=True)
def _no_verbose(monkeypatch):
    monkeypatch.delenv("VERBOSE", raising=False)  # VLMEvalKit's can_infer_option reads it


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


# ---------------------------------------------------------------- VQAv2

VQA_POOL = [
    "1,000", "1000", "1,,2", "1 2", "12", "1,2", "1, 2", "2,5", "two", "Two.", "2", "the dog", "dog", "a dog", "an apple",
    "a", "the", "t-shirt", "T-Shirt", "t shirt", "tshirt", "yes", "yes.", "Yes!", "no", "no.", "3.5", "3.5.", "3. 5", "i'm",
    "dont", "don't", "Ive", "ive", "it's", "its", "dogs'", "x-ray", "x ray", "hi! there", "a - b", "a  b", "(red)", "red",
    "red, white", "red white", "10", "ten", "none", "0", "zero", "e.g. cat", "...", "." * 40 + "x", "x" + "." * 35,
    "\tyes\n", " yes ", "ye s", "$5", "5$", "5 dollars", "50%", "#1", "@home", "c++", "a/b", "a / b", "left;right",
    "one two", "1 2 3", "3:00", "3 00", "o'clock", "oclock", "\"quoted\"", "[x]", "{y}", "a_b", "a=b", "<3", "q?", "wait!",
    "", "ÉCOLE", "école", "mr. smith", "mr smith", "u.s.a.", "usa", "st. louis", "4.0", "4",
]
VQA_SUFFIXES = ["", ".", " ", "!", "?", " dog", ",", "\n", " .", "..."]


def vqa_cases(n: int, seed: int = 0):
    rng = random.Random(seed)
    for _ in range(n):
        distinct = [rng.choice(VQA_POOL) for _ in range(rng.choice([1, 1, 2, 2, 3, 4]))]
        answers = [rng.choice(distinct) for _ in range(10)]
        response = rng.choice([rng.choice(distinct), rng.choice(VQA_POOL)]) + rng.choice(VQA_SUFFIXES)
        if rng.random() < 0.3:
            response = response.upper() if rng.random() < 0.5 else response.title()
        yield response, answers


def test_vqav2_matches_vqaeval_a013f00_on_generated_answers():
    compared, disagreements = 0, []
    for response, answers in vqa_cases(6000):
        dicts = [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]
        expected = ref.vqav2_reference(response, dicts)
        for got in (vqa.vqav2_accuracy(response, answers),
                    (lambda r: (r["pred"], r["score"]))(vqa.vqav2_score({"question_id": 1, "answers": dicts}, response))):
            if got[0] != expected[0] or abs(got[1] - expected[1]) > 1e-12:
                disagreements.append((response, answers, got, expected))
        compared += 1
    assert not disagreements, disagreements[:5]
    assert compared == 6000


def test_vqaeval_tables_and_processing_match_the_literal_port():
    official = ref.VQAEval()
    from lmms_eval.tasks._task_utils.vqa_eval_metric import EvalAIAnswerProcessor as P

    def mapping(table: dict) -> dict:  # both codes add word -> word entries as they run (setdefault)
        return {k: v for k, v in table.items() if k != v}

    assert (P.CONTRACTIONS, mapping(P.NUMBER_MAP), P.ARTICLES, P.PUNCTUATIONS, P.PERIOD_STRIP.pattern) == (
        official.contractions, mapping(official.manualMap), official.articles, official.punct, official.periodStrip.pattern)
    texts = {p + s for p in VQA_POOL for s in VQA_SUFFIXES} | {a + " " + b for a, b in itertools.product(VQA_POOL[:40], repeat=2)}
    for text in sorted(texts):
        assert vqa.vqaeval_punctuation(text) == official.processPunctuation(text), text
        assert vqa.vqaeval_digit_article(text) == official.processDigitArticle(text), text
        assert vqa.normalize(text) == ref.LlavaM4CAnswerProcessor()(text), text
    assert len(texts) > 2000


@pytest.mark.parametrize("text, processed", [
    ("1,000", "1000"), ("1,,2", "1  2"), ("1,2,3", "123"), ("x-ray", "x ray"), ("a - b", "a  b"), ("3.5.", "3.5"),
    ("hi! there", "hi there"), ("x" + "." * 40, "x" + "." * 8),  # re.UNICODE (32) is sub's count
])
def test_vqaeval_punctuation_cases(text, processed):
    assert vqa.vqaeval_punctuation(text) == processed


def test_vqav2_vqaeval_rule_differs_from_evalai_processing_of_the_answers():
    # "1,,2": vqaEval's commaStrip needs one comma between digits, so the mark becomes a space: "1 2";
    # the EvalAI processor's commaStrip takes "1,,2" and deletes it: "12"
    answers = ["1,,2"] * 9 + ["x"]
    assert vqa.vqav2_accuracy("1 2", answers) == ("1 2", 1.0)
    assert vqa.vqav2_accuracy("12", answers) == ("12", 0.0)
    assert vqa.vqav2_accuracy("The Two", ["2"] * 10) == ("2", 1.0)
    assert vqa.vqav2_accuracy("Two", ["two"] * 10) == ("2", 0.0)  # unanimous: the human answers stay raw


# ---------------------------------------------------------------- MMBench

MMB_CHOICES = [
    {"A": "apple", "B": "banana pie", "C": "cherry", "D": "pie"},
    {"A": "circle", "B": "square"},
    {"A": "Yes", "B": "No", "C": "A"},
    {"A": "圆形", "B": "正方形", "C": "三角形", "D": "星形"},
    {"A": "the cat is on the mat", "B": "the dog", "C": "a bird", "D": "nothing", "E": "everything"},
]
MMB_TOKENS = ["A", "B", "C", "D", "E", "Z", "a", "b", "(A)", "B.", "C)", "[D]", "A,", "**B**", "{C}", "A:", "#D", "B!",
              "The", "answer", "is", "correct", "Answer:", "option", "because", "I", "think", "not", "apple", "pie",
              "banana", "cherry", "circle", "Square", "圆形", "三角形", "the", "dog", "cat", "\n", "answer is", "ANSWER IS",
              "Cannot determine the answer", "I can't process this file.", "Failed to obtain answer via API", "nan"]
MMB_TEMPLATES = ["{L}", "{L}.", "({L})", "{L}. {T}", "The answer is {L}.", "The answer is {L}", "answer is {l}",
                 "The correct answer is **{L}**. Here's why: it has {T} in it and more words", "{L} is the answer",
                 "{L} is the answer because the picture shows it clearly", "I think the answer is {L} but {M} is close",
                 "{T}", "{T}.", "It is {T}", "Option {L}: {T}", "{L} or {M}", "{L} {M}", "Answer: {L}", "{l}",
                 "Sorry, I can't help with images of people yet. {L}", "Z", "Z.", "{L} Z", "{T} and {U}",
                 "The image shows {T} clearly, so the best choice here would definitely be that one overall", ""]


def mmbench_answers(choices: dict, rng: random.Random) -> list[str]:
    letters, texts = list("ABCDEZ"), list(choices.values()) + ["nothing", "Apple", "CIRCLE"]
    out = []
    for template in MMB_TEMPLATES:
        for _ in range(6):
            letter, other = rng.choice(letters), rng.choice(letters)
            out.append(template.format(L=letter, l=letter.lower(), M=other, T=rng.choice(texts), U=rng.choice(texts)))
    for _ in range(500):
        out.append(" ".join(rng.choice(MMB_TOKENS + texts) for _ in range(rng.randint(1, 12))))
    return out


def test_mmbench_matches_vlmevalkit_e8e78f05_on_generated_answers():
    rng, compared, disagreements = random.Random(0), 0, []
    for choices in MMB_CHOICES:
        for response in mmbench_answers(choices, rng):
            expected = ref.can_infer(response, dict(choices)) or None
            got = mmbench.parse(response, dict(choices))
            if got != expected:
                disagreements.append((choices, response, got, expected))
            for answer in choices:
                doc = {"index": 5, "question": "q", "hint": None, "answer": answer, "category": "c", **choices}
                item = {"prediction": response, "GT": answer, **choices}
                assert mmbench.score(doc, response)["score"] == ref.mcq_vanilla_eval_exact_matching([item]) / 100
            compared += 1
    assert not disagreements, disagreements[:5]
    assert compared > 3000


@pytest.mark.parametrize("response, parsed", [
    ("A", "A"), ("A.", "A"), ("(C)", "C"), ("Answer: B", "B"), ("The answer is D.", "D"), ("**B**", "B"),
    ("A is the answer", "A"),                                     # A is the 1st of 4 words: among the last four
    ("A is the answer because it is red", None),                  # 1st of 8 words: too early, no other rule
    ("A is the answer because of the apple", "A"),                # too early, but the text "apple" alone matches
    ("I think it is B", "B"), ("The correct answer is **c**", "C"),  # "answer is" pattern, any case
    ("answer is b because the long explanation goes on", "B"),
    ("cherry", "C"), ("Cherry!", "C"), ("pie", "D"),              # option text instead of the letter
    ("banana pie", None),                                         # both "banana pie" and "pie" appear in it
    ("cherry " * 10, None),                                       # longer than 2 x the option texts (2 x 27)
    ("A or B", None), ("I don't know", None), ("", None),
    ("Z", "Z"), ("Cannot determine the answer", "Z"), ("Sorry, I can't help with images of people yet. A", "Z"),
    ("Failed to obtain answer via API", None), ("E", None),       # E: not an option here
])
def test_mmbench_parse_official_cases(response, parsed):
    choices = {"A": "apple", "B": "banana pie", "C": "cherry", "D": "pie"}
    assert mmbench.parse(response, choices) == parsed
    assert (ref.can_infer(response, dict(choices)) or None) == parsed


def circular_rows(rng: random.Random, n_groups: int) -> list[dict]:
    """Groups with a random subset of their rotations (original sometimes missing), random responses."""
    rows = []
    for group in range(n_groups):
        options = ["red", "green", "blue", "pink"][: rng.randint(2, 4)]
        for k in range(len(options)):
            if rng.random() < 0.25:
                continue
            rotated = options[k:] + options[:k]
            choices = dict(zip("ABCD", rotated))
            answer = "ABCD"[rotated.index(options[0])]
            response = rng.choice([answer, answer, answer, rng.choice("ABCD"), rotated[0], "I don't know", answer + "."])
            rows.append({"index": group + k * 1_000_000, "answer": answer, "response": response, "choices": choices})
    rng.shuffle(rows)
    return rows


def test_mmbench_circular_matches_vlmevalkit_on_generated_sets():
    rng, compared = random.Random(1), 0
    for _ in range(300):
        rows = circular_rows(rng, rng.randint(1, 8))
        if not any(r["index"] < 1_000_000 for r in rows):
            continue
        records = [mmbench.score({"index": r["index"], "question": "q", "answer": r["answer"], **r["choices"]}, r["response"])
                   for r in rows]
        data = [{"index": r["index"], "prediction": r["response"], "GT": r["answer"], **r["choices"]} for r in rows]
        assert mmbench.circular_accuracy(records) == pytest.approx(ref.mcq_circular_eval_exact_matching(data))
        originals = [d for d in data if d["index"] < 1_000_000]
        assert mmbench.single_accuracy(records) == pytest.approx(ref.mcq_vanilla_eval_exact_matching(originals))
        compared += 1
    assert compared > 250


def test_mmbench_circular_leaves_out_groups_without_their_original():
    def rec(index, right):
        return {"group": index % 1_000_000, "copy": index >= 1_000_000, "score": float(right)}

    records = [rec(0, 1), rec(1_000_000, 1),                  # question 0: right in both rotations
               rec(1, 1), rec(1_000_001, 0),                  # question 1: one rotation wrong
               rec(2, 1),                                     # question 2: right (its copies not run)
               rec(3, 0), rec(1_000_003, 1),                  # question 3: original wrong
               rec(1_000_004, 1), rec(2_000_004, 1)]          # question 4: copies only -> not counted
    assert mmbench.circular_accuracy(records) == 50.0         # counting question 4 gave 3 of 5 = 60.0
    assert mmbench.single_accuracy(records) == 75.0
