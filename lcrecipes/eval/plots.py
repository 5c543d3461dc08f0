"""Report plots (matplotlib, Agg backend, PNG): score vs context length; score vs budget per method with RAG."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from lcrecipes.eval.tasks import IN_DOMAIN, OUT_OF_DOMAIN

if TYPE_CHECKING:
    from lcrecipes.eval.report import Run


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def score_vs_length(runs: list[Run], path: Path) -> None:
    """In-domain full-context score vs nominal length: one line per task (one run) or per run (several)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for run in runs:
        tasks = run.tasks(IN_DOMAIN)
        lines = [(t, t) for t in tasks] if len(runs) == 1 else [(f"{run.label} ({run.strategy})", None)]
        for name, task in lines:
            lens = sorted({n for t in (tasks if task is None else [task]) for n in run.lengths(t)})
            ys = [_at_length(run, tasks if task is None else [task], n) for n in lens]
            if lens:
                ax.plot(lens, ys, marker="o", label=name)
    _log2_x(ax)
    ax.set_ylim(-2, 102)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("in-domain score (×100)")
    _finish(fig, ax, path, "Score vs context length (full context)")


def _at_length(run: Run, tasks: list[str], n: int) -> float:
    vals = []
    for t in tasks:
        rows = run.select(t, "full", n)
        if rows:
            vals.append(100 * sum(r["score"] for r in rows) / len(rows))
    return sum(vals) / len(vals) if vals else math.nan


def score_vs_budget(run: Run, path: Path) -> None:
    """Per domain: score vs budget (tokens) for each compression method × mode and each RAG retriever, with the
    full-context score as a dashed line, so methods are compared at equal kept tokens."""
    plt = _pyplot()
    info = run.setting_info()
    domains = [d for d in (IN_DOMAIN, OUT_OF_DOMAIN) if run.tasks(d)]
    fig, axes = plt.subplots(1, max(1, len(domains)), figsize=(6 * max(1, len(domains)), 4), squeeze=False)
    for ax, d in zip(axes[0], domains):
        curves: dict[str, list[tuple[int, float]]] = {}
        for s, i in info.items():
            if i["kind"] == "full":
                continue
            name = f"{i['method']} ({i['mode']})" if i["kind"] == "compression" else f"RAG {i['retriever']}"
            curves.setdefault(name, []).append((i["budget"], run.domain_avg(d, s)))
        for name, pts in sorted(curves.items()):
            pts = sorted(p for p in pts if not math.isnan(p[1]))
            if not pts:
                continue
            ax.plot([b for b, _ in pts], [y for _, y in pts], marker="o", ls="--" if "RAG" in name else "-",
                    label=name)  # fmt: skip
        if "full" in info and not math.isnan(run.domain_avg(d, "full")):
            ax.axhline(run.domain_avg(d, "full"), color="k", ls=":", label="full context")
        _log2_x(ax)
        ax.set_ylim(-2, 102)
        ax.set_xlabel("budget (kept context tokens)")
        ax.set_ylabel(f"{d.replace('_', '-')} avg score (×100)")
        ax.legend(fontsize=7)
    _finish(fig, axes[0][0], path, f"{run.label} ({run.strategy}): score vs budget", legend=False)


def _log2_x(ax) -> None:
    """Log-2 x axis when something with a positive x was drawn (an empty panel keeps a linear axis)."""
    if any(len(line.get_xdata()) for line in ax.get_lines() if line.get_label() != "full context"):
        ax.set_xscale("log", base=2)


def _finish(fig, ax, path: Path, title: str, legend: bool = True) -> None:
    fig.suptitle(title, fontsize=10)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
