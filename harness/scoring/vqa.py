"""VQA accuracy for TextVQA and VQAv2, as LLaVA-1.5's published numbers were scored.

- TextVQA (`llava/eval/eval_textvqa.py` -> M4C `TextVQAAccuracyEvaluator`): prediction and all
  human answers normalised by the EvalAI answer processor (lower-case, punctuation, articles,
  number words -> digits: "Two." -> "2"), taken from lmms-eval (`EvalAIAnswerProcessor`, the MMF
  code LLaVA's `llava/eval/m4c_evaluator.py` ships: same tables and code as at LLaVA c121f04); a
  prediction's accuracy over the 10 human answers is the mean over the 10 leave-one-out subsets of
  min(#matches among the other 9 / 3, 1). lmms-eval's textvqa task computes the same.
- VQAv2: LLaVA submits `EvalAIAnswerProcessor()(text)` for every question
  (`scripts/convert_vqav2_for_submission.py`, ce1aa08 = c121f04) and the evaluation server scores
  it; val is scored here by the official `vqaEval.py` (GT-Vision-Lab/VQA,
  `PythonEvaluationTools/vqaEvaluation/vqaEval.py` at a013f00, 2021-03-11, the master head),
  `VQAEval.evaluate`, quoted:

      for ansDic in gts[quesId]['answers']:
          ansDic['answer'] = ansDic['answer'].replace('\\n', ' ')
          ansDic['answer'] = ansDic['answer'].replace('\\t', ' ')
          ansDic['answer'] = ansDic['answer'].strip()
      resAns = res[quesId]['answer']
      resAns = resAns.replace('\\n', ' ')
      resAns = resAns.replace('\\t', ' ')
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
          otherGTAns = [item for item in gts[quesId]['answers'] if item!=gtAnsDatum]
          matchingAns = [item for item in otherGTAns if item['answer']==resAns]
          acc = min(1, float(len(matchingAns))/3)
          gtAcc.append(acc)
      avgGTAcc = float(sum(gtAcc))/len(gtAcc)

  So both the prediction and the human answers are processed only when the humans disagree (at
  a013f00; before it, in 458a8b2 of 2016, the prediction was processed always and the human answers
  by processPunctuation alone: not used). `processPunctuation`:

      for p in self.punct:
          if (p + ' ' in inText or ' ' + p in inText) or (re.search(self.commaStrip, inText) != None):
              outText = outText.replace(p, '')
          else:
              outText = outText.replace(p, ' ')
      outText = self.periodStrip.sub("", outText, re.UNICODE)

  with `commaStrip = re.compile("(\\d)(\\,)(\\d)")` (one comma between digits: unlike the EvalAI
  processor's `(?<=\\d)(\\,)+(?=\\d)`, "1,,2" does not count), `periodStrip =
  re.compile("(?!<=\\d)(\\.)(?!\\d)")` (every "." not followed by a digit; `re.UNICODE` lands in
  `sub`'s count argument, so at most 32 are removed) and `punct = [';', '/', '[', ']', '"', '{',
  '}', '(', ')', '=', '+', '\\\\', '_', '-', '>', '<', '@', '`', ',', '?', '!']`: a mark next to a
  space anywhere in the answer, or any mark in an answer holding digit-comma-digit, is deleted,
  otherwise it becomes a space. `processDigitArticle` lower-cases, splits on whitespace, maps
  `manualMap` (none/zero..ten -> 0..10), drops the articles a/an/the, maps `contractions` word by
  word, and joins with single spaces. Its tables are the EvalAI processor's (checked equal in
  tests/test_scorer_references.py), so they are imported from there. The 10 answer dicts of an
  official annotation differ by `answer_id` (1..10), so `item != gtAnsDatum` leaves out exactly
  the datum itself: the other 9, by position, here. The per-question value is `avgGTAcc`; the
  server's `round(100 * mean, 2)` is left to the reader.

  lmms-eval's vqav2 task always normalises the human answers, so a raw-but-unanimous answer
  ("T-shirt" x10) can differ. The published 78.5 is test-dev, scored by the server: a val number
  here is comparable in spirit, not to the decimal. Test-dev: `write_submission` writes the
  server's file, every question of the split with "" for one without an answer, as LLaVA's
  `convert_vqav2_for_submission.py` does.
"""

from __future__ import annotations

import json
import re
import sys
from functools import cache
from pathlib import Path

from harness.scoring import Scorer

TEXTVQA_NAME = "llava_m4c_textvqa"
VQAV2_NAME = "vqaEval_py_a013f00"  # val: LLaVA's submitted answer, scored by GT-Vision-Lab vqaEval.py at a013f00
VQAV2_TESTDEV_NAME = "llava_vqav2_submission"  # test-dev: LLaVA's submitted answer; the server scores it

_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")  # vqaEval.py's commaStrip
_PERIOD_COUNT = int(re.UNICODE)  # vqaEval.py passes re.UNICODE (32) as periodStrip.sub's count


@cache
def _processor():
    from lmms_eval.tasks._task_utils.vqa_eval_metric import EvalAIAnswerProcessor

    return EvalAIAnswerProcessor()


def normalize(answer: str) -> str:
    """The EvalAI answer processor: "Two dogs." -> "2 dogs", "The red one" -> "red 1"."""
    return _processor()(answer)


def vqaeval_punctuation(text: str) -> str:
    """vqaEval.py's `processPunctuation`: "1,000" -> "1000", "1,,2" -> "1  2", "x-ray" -> "x ray", "a - b" -> "a  b"."""
    processor = _processor()
    out = text
    strip_all = _COMMA_STRIP.search(text) is not None
    for mark in processor.PUNCTUATIONS:
        out = out.replace(mark, "" if strip_all or mark + " " in text or " " + mark in text else " ")
    return processor.PERIOD_STRIP.sub("", out, _PERIOD_COUNT)


def vqaeval_digit_article(text: str) -> str:
    """vqaEval.py's `processDigitArticle`: "The Two dogs" -> "2 dogs", "dont" -> "don't"."""
    processor = _processor()
    words = [processor.NUMBER_MAP.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in processor.ARTICLES]
    return " ".join(processor.CONTRACTIONS.get(w, w) for w in words)


def leave_one_out_accuracy(pred: str, answers: list[str]) -> float:
    """mean over i of min(#{j != i : answers[j] == pred} / 3, 1), in 0..1."""
    if not answers:
        raise ValueError("a VQA question needs its human answers (got none)")
    accs = [min(1.0, sum(a == pred for j, a in enumerate(answers) if j != i) / 3.0) for i in range(len(answers))]
    return sum(accs) / len(accs)


def textvqa_accuracy(response: str, answers: list[str]) -> tuple[str, float]:
    """(normalised prediction, accuracy) under LLaVA's TextVQA rule."""
    pred = normalize(response)
    return pred, leave_one_out_accuracy(pred, [normalize(a) for a in answers])


def vqaeval_accuracy(res_ans: str, answers: list[str]) -> float:
    """vqaEval.py's `avgGTAcc` of the submitted answer `res_ans` against the human answers, in 0..1."""
    def clean(text: str) -> str:
        return text.replace("\n", " ").replace("\t", " ").strip()

    res_ans, gts = clean(res_ans), [clean(a) for a in answers]
    if len(set(gts)) > 1:
        gts = [vqaeval_digit_article(vqaeval_punctuation(a)) for a in gts]
        res_ans = vqaeval_digit_article(vqaeval_punctuation(res_ans))
    return leave_one_out_accuracy(res_ans, gts)


def vqav2_accuracy(response: str, answers: list[str]) -> tuple[str, float]:
    """(LLaVA's submitted answer, vqaEval.py's accuracy of it) for a VQAv2 response."""
    submitted = normalize(response)  # convert_vqav2_for_submission.py: answer_processor(text)
    return submitted, vqaeval_accuracy(submitted, answers)


def _answers(doc: dict) -> list[str]:
    answers = doc.get("answers")
    return [a["answer"] if isinstance(a, dict) else a for a in answers] if answers else []


def textvqa_score(doc: dict, response: str) -> dict:
    """{"pred", "score"}: normalised prediction and its VQA accuracy (0..1)."""
    pred, acc = textvqa_accuracy(response, _answers(doc))
    return {"pred": pred, "score": acc}


def vqav2_score(doc: dict, response: str) -> dict:
    """{"pred", "question_id", "score"}; a test-dev doc (no answers: the server scores it) has no "score"."""
    answers = _answers(doc)
    if not answers:
        return {"pred": normalize(response), "question_id": int(doc["question_id"])}
    pred, acc = vqav2_accuracy(response, answers)
    return {"pred": pred, "question_id": int(doc["question_id"]), "score": acc}


def accuracy(records: list[dict]) -> float:
    """Mean VQA accuracy in %."""
    scored = [r["score"] for r in records if r.get("score") is not None]
    return 100.0 * sum(scored) / len(scored) if scored else float("nan")


TEXTVQA_SCORER = Scorer(TEXTVQA_NAME, textvqa_score)
VQAV2_SCORER = Scorer(VQAV2_NAME, vqav2_score)
VQAV2_TESTDEV_SCORER = Scorer(VQAV2_TESTDEV_NAME, vqav2_score)


def read_question_ids(path: str | Path) -> list[int]:
    """Question ids, in order, from the official questions file (`{"questions": [{"question_id": ...}]}`,
    e.g. v2_OpenEnded_mscoco_test2015_questions.json), a JSON list (of ids or of such dicts), or a
    JSON-lines file of dicts (LLaVA's llava_vqav2_mscoco_test2015.jsonl)."""
    text = Path(path).read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = [json.loads(line) for line in text.splitlines() if line.strip()]
    if isinstance(data, dict):
        data = data["questions"]
    return [int(q["question_id"]) if isinstance(q, dict) else int(q) for q in data]


def split_question_ids(run_dir: str | Path, task: str = "vqav2_testdev") -> list[int]:
    """Every question id of `task`'s split, in dataset order, from the data the run used (results.json
    `config.tasks.data`, loaded as the run loaded it)."""
    from omegaconf import OmegaConf

    from harness.tasks import data_locations, load_tasks

    results = Path(run_dir) / "results.json"
    if not results.is_file():
        raise ValueError(f"{results} is missing, so the split's questions are unknown; give them: "
                         f"python -m harness.scoring.vqa {run_dir} <questions.json>")
    config = OmegaConf.create(json.loads(results.read_text())["config"])
    docs = load_tasks([task], data_locations(config.tasks.data, cache=config.paths.cache))[task].test_docs()
    return [int(q) for q in docs["question_id"]]


def write_submission(run_dir: str | Path, task: str = "vqav2_testdev",
                     questions: list[int] | str | Path | None = None) -> Path:
    """`<run_dir>/<task>_submission.json`: `[{"question_id": int, "answer": str}, ...]` for the server.

    As LLaVA's `scripts/convert_vqav2_for_submission.py`: one entry per question of the list, in its
    order, the EvalAI-normalised response for an answered one and "" for one the run did not answer
    (a failed sample, or one left out by `limit`).

    Args:
        questions: the question ids the server wants (a list, or a file for `read_question_ids`:
            LLaVA lists all of test2015); default every question of the task's split the run read.
    """
    from harness.results import read_samples, write_json_atomic

    samples = [s for s in read_samples(run_dir) if s["task"] == task]
    if not samples:
        raise ValueError(f"no {task} samples in {Path(run_dir) / 'samples.jsonl'} (run python run.py tasks.names=[{task}] ...)")
    if questions is None:
        questions = split_question_ids(run_dir, task)
    elif isinstance(questions, (str, Path)):
        questions = read_question_ids(questions)
    answered = {int(s["scores"]["question_id"]): s["scores"]["pred"] for s in samples if s.get("scores")}
    answers = [{"question_id": q, "answer": answered.get(q, "")} for q in questions]
    outside = len(set(answered) - set(questions))
    empty = sum(a["question_id"] not in answered for a in answers)
    print(f"{task}: {len(answers)} questions, {len(answers) - empty} answered, {empty} without an answer (\"\")"
          + (f", {outside} answered question(s) not in the list left out" if outside else ""), file=sys.stderr)
    path = Path(run_dir) / f"{task}_submission.json"
    write_json_atomic(path, answers)  # a list: json.dump writes it as the server expects
    return path


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python -m harness.scoring.vqa <run dir with vqav2_testdev samples> [<questions file>]")
    print(f"wrote {write_submission(sys.argv[1], questions=sys.argv[2] if len(sys.argv) == 3 else None)}")
