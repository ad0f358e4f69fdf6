"""A list of tables as Markdown, LaTeX (booktabs) or CSV."""

from __future__ import annotations

import csv
import io

from harness.leaderboard.benchmarks import BENCHMARKS, PUBLISHED_TOLERANCE
from harness.leaderboard.bootstrap import CI_LEVEL
from harness.leaderboard.runs import CHOICE_RULE, extent, sort_key
from harness.leaderboard.table import Row, Table

MISSING = {"markdown": "—", "latex": "--", "csv": ""}
FAILED_MARK = {"markdown": " †", "latex": "$^\\dagger$", "csv": ""}  # a benchmark cell with failed samples
PARTIAL_MARK = {"markdown": " ‡", "latex": "$^\\ddagger$", "csv": ""}  # a score of a run with a limit


def _signed(x: float, fmt: str) -> str:
    text = f"{x:+.1f}" if fmt == "markdown" else f"{x:.1f}"
    return text.replace("-", "−") if fmt == "markdown" else f"${text}$"


def _budget(run) -> str:
    """The budget, followed by the label the field uses for the model's family where it differs
    (results.json `tokens.budget_label`: "64 (320)" on LLaVA-NeXT, "64 (11.1%)" on Qwen2.5-VL)."""
    label = (run.results.get("tokens") or {}).get("budget_label")
    return str(run.budget) if label in (None, str(run.budget)) else f"{run.budget} ({label})"


def _tokens(run, fmt: str, text: str) -> str:
    """The realized tokens, marked where the method kept fewer than the budget asked in some samples (results.json
    `tokens.below_budget`: CDPruner once its DPP has no gain left): "71.9 (< 128)"."""
    below = (run.results.get("tokens") or {}).get("below_budget")
    if not below or fmt == "csv":
        return text
    return f"{text} (< {below['budget']})" if fmt == "markdown" else f"{text} ($<${below['budget']})"


def _cells(table: Table, row: Row, fmt: str) -> list[str]:
    missing = MISSING[fmt]

    def num(value, spec=".1f", suffix=""):
        return missing if value is None else f"{value:{spec}}{suffix}"

    run = row.run
    cells = [run.method, missing if run.budget is None else _budget(run)]
    for bench in table.benchmarks:
        score, ci = row.scores[bench.name], row.ci.get(bench.name)
        text = num(score) + (PARTIAL_MARK[fmt] if score is not None and run.partial and not table.subset else "")
        if table.subset and row.difficult.get(bench.name):
            text += f" (n={row.difficult[bench.name][1]})"
        if ci is not None and score is not None:
            diff, low, high = ci
            inner = f"{_signed(diff, fmt)} [{_signed(low, fmt)}, {_signed(high, fmt)}]" + _paired_n(row.paired.get(bench.name), "; ")
            text += f" ({inner})" if fmt == "markdown" else f" {{\\scriptsize ({inner})}}"
        failed = run.n_samples(bench.tasks)[1]
        cells.append(text + (FAILED_MARK[fmt] if failed else ""))
    cells.append(num(row.avg) + (_paired_n(row.avg_basis, " (", ")") if row.avg is not None else ""))
    if not table.subset:
        hard = row.difficult.get("all")
        cells.append(missing if hard is None else f"{num(hard[0])} (n={hard[1]})")
    cells.append(_tokens(run, fmt, num(run.tokens())))
    if table.has_paper_tokens:
        cells.append(num(run.get("tokens", "avg_vision_tokens_paper")))
    cells.append(num(run.get("latency_ms", "prefill", "mean")))
    cells.append(num(row.speedup, ".2f", "×" if fmt == "markdown" else "$\\times$")
                 + (_paired_n(row.latency, " (", ")") if row.speedup is not None else ""))
    reduction = run.get("flops", "reduction")
    cells.append(num(None if reduction is None else 100 * reduction, ".1f", "%" if fmt == "markdown" else "\\%"))
    n, failed = run.n_samples()
    limit = run.results.get("limit")
    cells.append(f"{n}" + (f" (limit {limit})" if limit is not None else "") + (f" ({failed} failed)" if failed else ""))
    return cells


def _paired_n(paired, before: str, after: str = "") -> str:
    """ "; n=12" for a comparison on fewer samples than one of the two runs ran (else "")."""
    return "" if paired is None or paired.whole else f"{before}n={paired.n}{after}"


def _header(table: Table, fmt: str) -> list[str]:
    head = ["Method", "Budget", *[b.name for b in table.benchmarks], "Avg"]
    if not table.subset:
        head.append("Difficult")
    head.append("Tokens")
    if table.has_paper_tokens:
        head.append("Tokens (paper)")
    head += ["Prefill ms", "Speedup", "FLOPs ↓" if fmt == "markdown" else "FLOPs $\\downarrow$", "n"]
    return head


def _legend(table: Table, replicates: int) -> list[str]:
    lines, reference = [], table.reference_name
    if table.subset:
        lines.append(f"Accuracy (%) on the difficult samples ({reference} right, {table.difficult_name} at the same budget "
                     "wrong); n = their number.")
    else:
        if replicates > 0 and any(ci for row in table.rows for ci in row.ci.values()):
            lines.append(f"Score (Δ: paired difference to {reference} [{CI_LEVEL:.0f}% CI], paired bootstrap over samples, "
                         f"B={replicates}).")
        lines.append(f"Avg: mean over the benchmarks present ({', '.join(b.name for b in table.benchmarks)}) of score / "
                     f"{reference} score × 100. Difficult: accuracy on the samples "
                     f"{reference} answers correctly and {table.difficult_name} at the same budget does not (n = their "
                     "number). Tokens: realized mean image tokens per layer.")
        lines.append(f"Scores and prefill ms are each run's own samples; Δ, Avg and Speedup compare a row with {reference} "
                     "on the samples both ran (paired by task and doc_id, both scores recomputed there from samples.jsonl; "
                     "a failed sample is a wrong answer).")
        if any(not p.whole for row in table.rows for p in (*row.paired.values(), row.avg_basis, row.latency)
               if p.refused is None):
            lines.append(f"(n=N) after Δ, Avg or Speedup: on the N samples this run and {reference} both ran (both timed "
                         "for Speedup), fewer than one of them ran; the score beside it is the run's own.")
    if table.not_compared:
        lines.append(f"Not compared with {reference} (—):")
        lines += [f"- {line}" for line in table.not_compared]
    duplicates = [row.run for row in table.rows if row.run.others]
    if duplicates:
        lines.append(f"Several runs of one method and budget: the row uses the one with {CHOICE_RULE}:")
        lines += [f"- {run.method}" + (f" {run.budget}" if run.budget is not None else "") + f": {run.path} ({extent(run)}) "
                  "over " + ", ".join(f"{o.path} ({extent(o)})" for o in run.others) for run in duplicates]
    if table.published:
        lines.append(f"{reference} vs the published LLaVA-1.5-7B numbers (a gap over {PUBLISHED_TOLERANCE} points is warned about):")
        lines += [f"- {line}" for line in table.published]
    if any(row.run.n_samples()[1] for row in table.rows):
        lines.append("†: some samples of this benchmark failed (n counts them; their `error` is in "
                     "samples.jsonl) and the score treats them as wrong answers.")
    if any(row.run.partial for row in table.rows):
        lines.append(f"n: samples of the run; {'' if table.subset else '‡ and '}(limit L): a partial run, only the first L "
                     "samples of each task ran: its scores are on those, not the whole benchmark.")
    if table.not_significant:
        lines.append("Not significantly different (the CI of the paired difference contains 0):")
        lines += [f"- {pair}" for pair in table.not_significant]
    return lines


def to_markdown(tables: list[Table], replicates: int) -> str:
    out = []
    for table in tables:
        head = _header(table, "markdown")
        out += [f"### {table.title}", "", "| " + " | ".join(head) + " |",
                "| " + " | ".join(["---", "---"] + ["---:"] * (len(head) - 2)) + " |"]
        out += ["| " + " | ".join(_cells(table, row, "markdown")) + " |" for row in table.rows]
        out += [""] + [f"{line}" for line in _legend(table, replicates)] + [""]
    return "\n".join(out)


def _latex_escape(text: str) -> str:
    for char in "&%_#$":
        text = text.replace(char, "\\" + char)
    return text.replace("—", "---")


def to_latex(tables: list[Table], replicates: int) -> str:
    out = []
    for table in tables:
        head = _header(table, "latex")
        out += ["\\begin{table}[t]", "\\centering", "\\small",
                f"\\caption{{{_latex_escape(table.title)}}}",
                "\\begin{tabular}{ll" + "r" * (len(head) - 2) + "}", "\\toprule",
                " & ".join(_latex_escape(h) if "$" not in h else h for h in head) + " \\\\", "\\midrule"]
        previous = None
        for row in table.rows:
            group = (sort_key(row.run)[0], row.run.budget)
            if previous is not None and group != previous:
                out.append("\\midrule")
            previous = group
            cells = _cells(table, row, "latex")
            out.append(" & ".join([_latex_escape(cells[0])] + cells[1:]) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}"]
        out += [f"% {_latex_escape(line)}" for line in _legend(table, replicates)]
        out += ["\\end{table}", ""]
    return "\n".join(out)


def _slug(name: str) -> str:
    return name.lower().replace("+", "").replace(" ", "_").replace("__", "_")


def _n(paired) -> int | None:
    """Samples a comparison was paired on (None when known only from results.json counts)."""
    return paired.n if paired is not None and paired.n else None


def to_csv(tables: list[Table], replicates: int) -> str:
    benchmarks = [b for b in BENCHMARKS if any(b in t.benchmarks for t in tables)]
    head = ["model", "tasks", "method", "budget"]
    for bench in benchmarks:
        slug = _slug(bench.name)
        head += [slug, f"{slug}_diff", f"{slug}_ci_low", f"{slug}_ci_high", f"{slug}_paired_n", f"{slug}_difficult_acc",
                 f"{slug}_difficult_n"]
    head += ["avg", "avg_paired_n", "difficult_acc", "difficult_n", "tokens", "tokens_paper", "prefill_ms", "speedup",
             "speedup_paired_n", "flops_reduction_pct", "n", "n_failed", "limit", "batch_size", "run_dir"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(head)
    for table in tables:
        for row in table.rows:
            run = row.run
            values = [table.model, " ".join(table.suite), run.method, run.budget]
            for bench in benchmarks:
                ci = row.ci.get(bench.name) or (None, None, None)
                hard = row.difficult.get(bench.name) or (None, None)
                values += [row.scores.get(bench.name), *ci, _n(row.paired.get(bench.name)), *hard]
            hard = row.difficult.get("all") or (None, None)
            reduction = run.get("flops", "reduction")
            values += [row.avg, _n(row.avg_basis) if row.avg is not None else None, *hard, run.tokens(),
                       run.get("tokens", "avg_vision_tokens_paper"), run.get("latency_ms", "prefill", "mean"),
                       row.speedup, _n(row.latency) if row.speedup is not None else None,
                       None if reduction is None else 100 * reduction, *run.n_samples(),
                       run.results.get("limit"), run.batch_size, str(run.path)]
            writer.writerow(["" if v is None else (f"{v:.6g}" if isinstance(v, float) else v) for v in values])
    return buffer.getvalue()
