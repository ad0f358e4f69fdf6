"""lmms-eval hooks of the TextVQA tasks (tasks/textvqa/textvqa_val{,_no_ocr}.yaml, lmms-eval 0.7.3).

The prompt is LLaVA-1.5's (with the dataset's OCR tokens unless `ocr: false`); scoring is
`harness.scoring.vqa` (LLaVA's M4C evaluator). `process_results` returns the sample's score fields (the
dict that also goes into samples.jsonl) through `Scorer.fields`: a failed sample (response
`FAILED_RESPONSE`) scores 0; the aggregation returns a percentage (0-100).

lmms-eval loads this file by path once per `!function` reference; it imports only the harness's
pure scoring modules.
"""

from harness.hooks import SHORT_ANSWER
from harness.hooks import doc_image_if_any as doc_to_visual  # noqa: F401 - `!function` hooks
from harness.hooks import lazy_images  # noqa: F401
from harness.scoring import vqa


def textvqa_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """`<question>[\\nReference OCR token: t1, t2, ...]\\nAnswer the question using a single word or phrase.`

    The OCR line is LLaVA-1.5's setting (`ocr: true`, the default of tasks/textvqa/textvqa_val.yaml); a
    question without OCR tokens gets no line.
    """
    kwargs = lmms_eval_specific_kwargs or {}
    ocr = kwargs.get("ocr", True)
    if ocr not in (True, False):
        raise ValueError(f"textvqa ocr={ocr!r} is not allowed (allowed: true, false)")
    tokens = doc.get("ocr_tokens") or []
    ocr_line = f"\nReference OCR token: {', '.join(tokens)}" if ocr and tokens else ""
    return f"{doc['question']}{ocr_line}{kwargs.get('post_prompt', SHORT_ANSWER)}"


def textvqa_process_results(doc: dict, results: list[str]) -> dict[str, dict]:
    return {"vqa_accuracy": vqa.TEXTVQA_SCORER.fields(doc, results[0])}


def vqa_aggregate_accuracy(records: list[dict]) -> float:
    """Mean VQA accuracy, %."""
    return vqa.accuracy(records)
