"""Scores fixed responses through an lmms-eval task's own hooks (process_results, then the aggregations)."""

from __future__ import annotations


def score(task, responses: list[str]) -> dict[str, float]:
    """One response per doc through the task's process_results and aggregations.

    Args:
        task: a loaded lmms-eval task.
        responses: the model's answer for each of `task.test_docs()`, in order.

    Returns:
        Metric name -> aggregated value.
    """
    docs = task.test_docs()
    assert len(docs) == len(responses)
    per_metric = {}
    for doc, response in zip(docs, responses):
        for metric, value in task.process_results(doc, [response]).items():
            per_metric.setdefault(metric, []).append(value)
    return {metric: task.aggregation()[metric](values) for metric, values in per_metric.items()}
