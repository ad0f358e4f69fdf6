"""VQA accuracy for TextVQA and VQAv2, as LLaVA-1.5's published numbers were scored.

Answers are normalised by the EvalAI answer processor (lower-case, punctuation, articles, number
words -> digits: "Two." -> "2"), taken from lmms-eval (`EvalAIAnswerProcessor`, the same MMF code
LLaVA's `llava/eval/m4c_evaluator.py` ships). A prediction's accuracy over the 10 human answers is
the mean over the 10 leave-one-out subsets of min(#matches among the other 9 / 3, 1).

- TextVQA (`llava/eval/eval_textvqa.py` -> M4C `TextVQAAccuracyEvaluator`): prediction and all
  human answers always normalised. lmms-eval's textvqa task computes the same.
- VQAv2: LLaVA normalises the prediction before submission (`scripts/convert_vqav2_for_submission.py`)
  and the evaluation server runs the official VQA `vqaEval.py`, which strips whitespace and
  normalises the human answers (and the prediction again) only when the humans disagree. Done
  here the same way on a val split. lmms-eval's vqav2 task always normalises the human answers, so
  a raw-but-unanimous answer ("T-shirt" x10) can differ. The published 78.5 is test-dev, scored by
  the server: a val number here is comparable in spirit, not to the decimal.
"""

from __future__ import annotations

import sys
from functools import cache
from pathlib import Path

from harness.scoring import Scorer

TEXTVQA_NAME = "llava_m4c_textvqa"
VQAV2_NAME = "vqa_eval_server"


@cache
def _processor():
    from lmms_eval.tasks._task_utils.vqa_eval_metric import EvalAIAnswerProcessor

    return EvalAIAnswerProcessor()


def normalize(answer: str) -> str:
    """The EvalAI answer processor: "Two dogs." -> "2 dogs", "The red one" -> "red 1"."""
    return _processor()(answer)


def _punctuation_digits(answer: str) -> str:
    """The official vqaEval.py processing (punctuation, then digits/articles/contractions)."""
    processor = _processor()
    return processor.process_digit_article(processor.process_punctuation(answer))


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


def vqav2_accuracy(response: str, answers: list[str]) -> tuple[str, float]:
    """(submitted prediction, accuracy) under LLaVA's submission + the official vqaEval.py rule."""
    pred = normalize(response).replace("\n", " ").replace("\t", " ").strip()  # what LLaVA submits
    gts = [a.replace("\n", " ").replace("\t", " ").strip() for a in answers]
    if len(set(gts)) > 1:
        gts = [_punctuation_digits(a) for a in gts]
        pred = _punctuation_digits(pred)
    return pred, leave_one_out_accuracy(pred, gts)


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


def write_submission(run_dir: str | Path, task: str = "vqav2_testdev") -> Path:
    """`<run_dir>/<task>_submission.json`: `[{"question_id": int, "answer": str}, ...]` for the server.

    The answers are the EvalAI-normalised predictions, as LLaVA submits them; failed samples are
    left out. The server's test-dev phase wants every test2015 question: those not run are missing.
    """
    from harness.results import read_samples, write_json_atomic

    samples = [s for s in read_samples(run_dir) if s["task"] == task]
    if not samples:
        raise ValueError(f"no {task} samples in {Path(run_dir) / 'samples.jsonl'} (run python run.py tasks.names=[{task}] ...)")
    answers = [{"question_id": s["scores"]["question_id"], "answer": s["scores"]["pred"]}
               for s in sorted(samples, key=lambda s: s["doc_id"]) if s.get("scores")]
    path = Path(run_dir) / f"{task}_submission.json"
    write_json_atomic(path, answers)  # a list: json.dump writes it as the server expects
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m harness.scoring.vqa <run dir with vqav2_testdev samples>")
    print(f"wrote {write_submission(sys.argv[1])}")
