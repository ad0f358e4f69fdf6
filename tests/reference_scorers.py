"""Slow, literal ports of the official scoring code, for tests/test_scorer_references.py only.

Each function follows its source line by line (names, mutation, dict comparisons and all), so
that harness.scoring can be compared with it on many generated answers:

- `llava_eval_science_qa`: haotian-liu/LLaVA c121f04 `llava/eval/eval_science_qa.py` (the main
  loop's parsing and `get_pred_idx`), after `model_vqa_science.py`'s `outputs.strip()`.
- `LlavaM4CAnswerProcessor`: LLaVA c121f04 `llava/eval/m4c_evaluator.py` `EvalAIAnswerProcessor`
  (what `scripts/convert_vqav2_for_submission.py` applies); its tables equal vqaEval.py's (checked
  by hand against both sources), so it takes them from `VQAEval` below, with its own COMMA_STRIP.
- `VQAEval`: GT-Vision-Lab/VQA a013f00 `PythonEvaluationTools/vqaEvaluation/vqaEval.py`, the
  per-question body of `evaluate` (Python 2 prints left out).
- `can_infer*`, `mcq_circular_eval_exact_matching`: open-compass/VLMEvalKit e8e78f05
  `vlmeval/utils/matching_util.py` and `vlmeval/dataset/utils/multiple_choice.py` with
  `model=None` (the `exact_matching` judge), without pandas.
"""

from __future__ import annotations

import copy as cp
import os
import re
import string

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


# ---------------------------------------------------------------- GT-Vision-Lab vqaEval.py (a013f00)

class VQAEval:
    def __init__(self):
        self.contractions = {"aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
                             "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
                             "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't", "hed": "he'd", "hed've": "he'd've",
                             "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've",
                             "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
                             "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
                             "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
                             "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
                             "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
                             "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
                             "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
                             "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
                             "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd", "thered've": "there'd've",
                             "there'dve": "there'd've", "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
                             "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
                             "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
                             "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's", "whereve": "where've",
                             "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
                             "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
                             "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've",
                             "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've",
                             "youll": "you'll", "youre": "you're", "youve": "you've"}
        self.manualMap = {'none': '0', 'zero': '0', 'one': '1', 'two': '2', 'three': '3', 'four': '4', 'five': '5', 'six': '6',
                          'seven': '7', 'eight': '8', 'nine': '9', 'ten': '10'}
        self.articles = ['a', 'an', 'the']
        self.periodStrip = re.compile(r"(?!<=\d)(\.)(?!\d)")
        self.commaStrip = re.compile(r"(\d)(\,)(\d)")
        self.punct = [';', r"/", '[', ']', '"', '{', '}',
                      '(', ')', '=', '+', '\\', '_', '-',
                      '>', '<', '@', '`', ',', '?', '!']

    def evaluate_one(self, gt_answers: list[dict], res_answer: str) -> float:
        """The body of `evaluate`'s loop for one question: avgGTAcc (gt_answers are copied, then mutated as there)."""
        gts = {0: {'answers': [dict(a) for a in gt_answers]}}
        res = {0: {'answer': res_answer}}
        quesId = 0
        for ansDic in gts[quesId]['answers']:
            ansDic['answer'] = ansDic['answer'].replace('\n', ' ')
            ansDic['answer'] = ansDic['answer'].replace('\t', ' ')
            ansDic['answer'] = ansDic['answer'].strip()
        resAns = res[quesId]['answer']
        resAns = resAns.replace('\n', ' ')
        resAns = resAns.replace('\t', ' ')
        resAns = resAns.strip()
        gtAcc = []
        gtAnswers = [ans['answer'] for ans in gts[quesId]['answers']]

        if len(set(gtAnswers)) > 1:
            for ansDic in gts[quesId]['answers']:
                ansDic['answer'] = self.processPunctuation(ansDic['answer'])
                ansDic['answer'] = self.processDigitArticle(ansDic['answer'])
            resAns = self.processPunctuation(resAns)
            resAns = self.processDigitArticle(resAns)

        for gtAnsDatum in gts[quesId]['answers']:
            otherGTAns = [item for item in gts[quesId]['answers'] if item != gtAnsDatum]
            matchingAns = [item for item in otherGTAns if item['answer'] == resAns]
            acc = min(1, float(len(matchingAns)) / 3)
            gtAcc.append(acc)
        avgGTAcc = float(sum(gtAcc)) / len(gtAcc)
        return avgGTAcc

    def processPunctuation(self, inText):
        outText = inText
        for p in self.punct:
            if (p + ' ' in inText or ' ' + p in inText) or (re.search(self.commaStrip, inText) != None):  # noqa: E711
                outText = outText.replace(p, '')
            else:
                outText = outText.replace(p, ' ')
        outText = self.periodStrip.sub("",
                                       outText,
                                       re.UNICODE)
        return outText

    def processDigitArticle(self, inText):
        outText = []
        tempText = inText.lower().split()
        for word in tempText:
            word = self.manualMap.setdefault(word, word)
            if word not in self.articles:
                outText.append(word)
            else:
                pass
        for wordId, word in enumerate(outText):
            if word in self.contractions:
                outText[wordId] = self.contractions[word]
        outText = ' '.join(outText)
        return outText


# ---------------------------------------------------------------- LLaVA m4c_evaluator.py EvalAIAnswerProcessor (c121f04)

class LlavaM4CAnswerProcessor:
    _tables = VQAEval()
    CONTRACTIONS = _tables.contractions
    NUMBER_MAP = _tables.manualMap
    ARTICLES = _tables.articles
    PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
    COMMA_STRIP = re.compile(r"(?<=\d)(\,)+(?=\d)")
    PUNCTUATIONS = _tables.punct

    def word_tokenize(self, word):
        word = word.lower()
        word = word.replace(",", "").replace("?", "").replace("'s", " 's")
        return word.strip()

    def process_punctuation(self, in_text):
        out_text = in_text
        for p in self.PUNCTUATIONS:
            if (p + " " in in_text or " " + p in in_text) or (
                re.search(self.COMMA_STRIP, in_text) is not None
            ):
                out_text = out_text.replace(p, "")
            else:
                out_text = out_text.replace(p, " ")
        out_text = self.PERIOD_STRIP.sub("", out_text, re.UNICODE)
        return out_text

    def process_digit_article(self, in_text):
        out_text = []
        temp_text = in_text.lower().split()
        for word in temp_text:
            word = self.NUMBER_MAP.setdefault(word, word)
            if word not in self.ARTICLES:
                out_text.append(word)
            else:
                pass
        for word_id, word in enumerate(out_text):
            if word in self.CONTRACTIONS:
                out_text[word_id] = self.CONTRACTIONS[word]
        out_text = " ".join(out_text)
        return out_text

    def __call__(self, item):
        item = self.word_tokenize(item)
        item = item.replace("\n", " ").replace("\t", " ").strip()
        item = self.process_punctuation(item)
        item = self.process_digit_article(item)
        return item


def vqav2_reference(text: str, gt_answers: list[dict]) -> tuple[str, float]:
    """(LLaVA's submitted answer, vqaEval.py's avgGTAcc of it)."""
    submitted = LlavaM4CAnswerProcessor()(text)  # convert_vqav2_for_submission.py
    return submitted, VQAEval().evaluate_one(gt_answers, submitted)


# ---------------------------------------------------------------- VLMEvalKit matching_util.py (e8e78f05)

_VERBOSE_ANSWER_RE = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")


def can_infer_option(answer, choices):
    verbose = os.environ.get('VERBOSE', 0)
    # Choices is a dictionary
    if 'Failed to obtain answer via API' in answer:
        return False

    reject_to_answer = [
        "Sorry, I can't help with images of people yet.", "I can't process this file.",
        "I'm sorry, but without the image provided", 'Cannot determine the answer'
    ]
    for err in reject_to_answer:
        if err in answer:
            return 'Z'

    def count_choice(splits, choices, prefix='', suffix=''):
        cnt = 0
        for c in choices:
            if prefix + c + suffix in splits:
                cnt += 1
        return cnt

    answer_mod = cp.copy(answer)
    chars = '.()[],:;!*#{}'
    for c in chars:
        answer_mod = answer_mod.replace(c, ' ')

    splits = [x.strip() for x in answer_mod.split()]
    count = count_choice(splits, choices)

    if count == 1:
        for ch in choices:
            if 'A' in splits and len(splits) > 3 and verbose:
                return False
            if ch in splits and splits.index(ch) > (len(splits) - 5):
                return ch
    elif count == 0 and count_choice(splits, {'Z', ''}) == 1:
        return 'Z'

    match = _VERBOSE_ANSWER_RE.search(answer or "")
    if match and match.group(1).upper() in choices:
        return match.group(1).upper()

    return False


def can_infer_text(answer, choices):
    answer = answer.lower()
    if len(answer) > 2 * sum(len(str(v)) for v in choices.values()):
        return False
    assert isinstance(choices, dict)
    for k in choices:
        assert k in string.ascii_uppercase
        choices[k] = str(choices[k]).lower()
    cands = []
    for k in choices:
        if choices[k] in answer:
            cands.append(k)
    if len(cands) == 1:
        return cands[0]
    return False


def can_infer(answer, choices):
    answer = str(answer)
    copt = can_infer_option(answer, choices)
    return copt if copt else can_infer_text(answer, choices)


# ---------------------------------------------------------------- VLMEvalKit multiple_choice.py (e8e78f05), model=None

def extract_answer_exact_matching(item: dict) -> str:
    """`extract_answer_from_item(None, item)`'s opt: can_infer, else 'Z'."""
    choices = {ch: item[ch] for ch in string.ascii_uppercase if ch in item and item[ch] is not None}  # build_choices
    ret = can_infer(item['prediction'], choices)
    return ret if ret else 'Z'


def prefetch_circular_group(sub_data: list[dict]):
    GT, PRED = [], []
    for item in sub_data:
        GT.append(item['GT'])
        choices = {ch: item[ch] for ch in string.ascii_uppercase if ch in item and item[ch] is not None}
        PRED.append(can_infer(item['prediction'], choices))  # prefetch_answer
        if PRED[-1] and (GT[-1] != PRED[-1]):
            return dict(hit=0)
    flag = True
    for g, p in zip(GT, PRED):
        if g != p:
            flag = False
    return dict(hit=1) if flag else None


def mcq_circular_eval_exact_matching(data: list[dict]) -> float:
    """Mean hit over the originals (`data_main`), in %; rows: index, prediction, GT, option columns."""
    data = sorted(data, key=lambda r: r['index'])  # data.sort_values(by='index')
    for row in data:
        row['g_index'] = int(row['index'] % 1e6)
    data_main = [row for row in data if row['index'] == row['g_index']]
    result = {}
    for main in data_main:
        sub_data = [row for row in data if row['g_index'] == main['index']]
        pf = prefetch_circular_group(sub_data)
        # a group the prefetch cannot settle: "Failed in Prefetch, no GPT-based answer matching"
        result[main['index']] = pf if pf is not None else dict(hit=0)
    hits = [result[row['index']]['hit'] for row in data_main]
    return 100.0 * sum(hits) / len(hits)


def mcq_vanilla_eval_exact_matching(data: list[dict]) -> float:
    """Mean hit over the given rows, in % (`eval_vanilla`: opt == GT)."""
    hits = [int(extract_answer_exact_matching(row) == row['GT']) for row in data]
    return 100.0 * sum(hits) / len(hits)
