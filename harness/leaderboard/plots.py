"""PREFIX_budget.png (score vs budget per method) and PREFIX_latency.png (score vs prefill latency)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from harness.leaderboard.table import Row, Table


def plot(tables: list[Table], prefix: str) -> list[Path]:
    """PREFIX_budget.png (accuracy vs budget per method) and PREFIX_latency.png (accuracy vs prefill latency)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = [Path(f"{prefix}_budget.png"), Path(f"{prefix}_latency.png")]
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    for path, kind in zip(paths, ("budget", "latency")):
        fig, axes = plt.subplots(1, len(tables), figsize=(6.4 * len(tables), 4.6), squeeze=False)
        for ax, table in zip(axes[0], tables):
            _plot_table(ax, table, kind)
        fig.tight_layout()
        fig.savefig(path, dpi=150, bbox_inches="tight")
        plt.close(fig)
    return paths


def _plot_table(ax, table: Table, kind: str) -> None:
    use_avg = any(r.avg is not None for r in table.rows)
    label = f"Avg (% of {table.reference_name})" if use_avg else (table.benchmarks[0].name if table.benchmarks else "score")
    if table.subset and not use_avg:
        label += " (difficult subset)"

    def value(row: Row):
        if use_avg:
            return row.avg
        return row.scores.get(table.benchmarks[0].name) if table.benchmarks else None

    palette = matplotlib_colors()
    methods = sorted({r.run.method for r in table.rows if not r.run.fact("ignores_budget")})
    color = {method: next(palette) for method in methods}
    color |= {r.run.method: "black" if r.run.fact("reference") else "dimgray" for r in table.rows if r.run.fact("ignores_budget")}
    if kind == "budget":
        by_method = defaultdict(list)
        for row in table.rows:
            if row.run.budget is not None and value(row) is not None:
                by_method[row.run.method].append((row.run.budget, value(row)))
        for method in methods:
            points = sorted(by_method[method])
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method, color=color[method])
        for row in table.rows:
            if row.run.budget is None and value(row) is not None:
                method, reference = row.run.method, row.run.fact("reference")
                tokens = row.run.tokens()  # vanilla: all 576, blind: 0
                kept = ("all " if reference else "") + ("?" if tokens is None else f"{tokens:.0f}")
                ax.axhline(value(row), linestyle="--" if reference else ":", color=color[method],
                           label=f"{method} ({kept} image tokens)")
        budgets = sorted({r.run.budget for r in table.rows if r.run.budget is not None})
        if budgets:
            ax.set_xticks(budgets)
        ax.set_xlabel("budget (average image tokens per layer)")
        ax.set_title(f"{label} vs budget\n{table.title}", fontsize=10)
    else:
        seen = set()
        for row in table.rows:
            x, y = row.run.get("latency_ms", "prefill", "mean"), value(row)
            if x is None or y is None:
                continue
            method = row.run.method
            marker = "*" if row.run.fact("reference") else "X" if row.run.fact("ignores_budget") else "o"
            ax.scatter([x], [y], marker=marker, s=140 if marker == "*" else 50, zorder=3, color=color[method],
                       label=None if method in seen else method)
            seen.add(method)
            name = method if row.run.budget is None else f"{method}@{row.run.budget}"
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set_xlabel("prefill latency, mean (ms)")
        ax.set_title(f"{label} vs prefill latency\n{table.title}", fontsize=10)
    ax.set_ylabel(label)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)


def matplotlib_colors():
    import matplotlib.pyplot as plt

    while True:
        yield from plt.rcParams["axes.prop_cycle"].by_key()["color"]
