"""One scoring rule per benchmark, shared by the real and the embedded task families.

    from harness.scoring import scorer_for
    scorer = scorer_for("mmbench_en_dev")     # -> mmbench.SCORER
    fields = scorer.score(doc, response)      # per-sample score fields, written to samples.jsonl

Each module holds a benchmark's parser, its per-sample `score(doc, response) -> dict` and its
aggregation (its record in harness/benchmarks.py names the scorer of each task), written to match the tool that published LLaVA-1.5 numbers come from (named in the
module docstring, with the places where lmms-eval's own task differs). Every per-sample dict has
`score` (the sample's contribution to the headline accuracy, 0..1; absent only where a server
scores the split, VQAv2 test-dev) plus the fields its aggregation
needs (parsed prediction, label, image, group, ...). results.json, the leaderboard and W&B read
these fields instead of re-deriving them.

A failed sample (an undecodable image, a damaged row: its record has an `error`) is wrong on every
benchmark, whatever its parser would make of the empty response: `Scorer.score_failed` gives it
`score` 0 and `failed: true` (POPE: the prediction opposite to the label, see `pope.failed`). lmms-eval
hands the task hooks FAILED_RESPONSE as its response, and every `process_results` scores through
`Scorer.fields`, so the metrics count it wrong too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

FAILED_RESPONSE = "\x00prunebench: this sample failed\x00"  # the response lmms-eval gets for a failed sample


@dataclass(frozen=True)
class Scorer:
    """A benchmark's per-sample scoring rule.

    Attributes:
        name: Recorded in results.json (`tasks.<task>.scorer`), e.g. "llava_gqa_eval".
        score: `(doc, response) -> per-sample fields` (always with `score` in 0..1).
        failed: `doc -> fields` of a failed sample, where the aggregation reads more than `score`
            (POPE's prediction); by default the fields `score` gives an empty response.
    """

    name: str
    score: Callable[[dict, str], dict]
    failed: Callable[[dict], dict] | None = None

    def score_failed(self, doc: dict | None) -> dict:
        """The fields of a failed sample: `score` 0 and `failed` true, whatever the parser would say.

        Args:
            doc: the sample's doc, or None when it could not be read (then only `score` and `failed`).
        """
        fields = {}
        if doc is not None:
            try:
                fields = self.failed(doc) if self.failed is not None else self.score(doc, "")
            except Exception:  # noqa: BLE001 - a doc the scorer cannot read (the sample's failure itself)
                fields = {}
        return {**fields, "score": 0.0, "failed": True}

    def fields(self, doc: dict, response: str) -> dict:
        """`score(doc, response)`, or `score_failed(doc)` for FAILED_RESPONSE (what `process_results` hooks call)."""
        return self.score_failed(doc) if response == FAILED_RESPONSE else self.score(doc, response)


def scorer_for(task: str) -> Scorer | None:
    """The scorer of a task of tasks/ (real or embedded), or None for a task without one: its benchmark's
    record (harness/benchmarks.py) maps task names and prefixes to scorers, the longest prefix wins."""
    from harness.benchmarks import benchmark_for, longest_prefix

    bench = benchmark_for(task)
    key = longest_prefix(task, bench.scorers) if bench is not None else None
    return bench.scorers[key] if key is not None else None
