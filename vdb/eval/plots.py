"""The report's PNG plots (matplotlib, Agg canvas, no pyplot state): QPS vs recall, task metric vs recall,
the funnel as a waterfall, and the single-query latency CDF. Each function writes one file and returns its path.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

DPI = 110
MAX_CDF_CURVES = 12


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return path


def _by_system(points: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for p in points:
        out.setdefault(p["system"], []).append(p)
    return {name: sorted(pts, key=lambda p: p["recall"]) for name, pts in out.items()}


def _style(name: str) -> dict:
    return {"linestyle": "-" if name.startswith("vdb") else "--", "marker": "o" if name.startswith("vdb") else "s"}


def pareto(pts: list[dict]) -> list[dict]:
    """The points no other point beats on both recall and QPS (ann-benchmarks' frontier), by recall."""
    front, best_qps = [], -1.0
    for p in sorted(pts, key=lambda p: (-p["recall"], -p["qps"])):
        if p["qps"] > best_qps:
            front.append(p)
            best_qps = p["qps"]
    return front[::-1]


def qps_vs_recall(points: list[dict], path: Path, *, k: int) -> Path:
    """One Pareto-frontier line per system; dominated points are drawn as faint markers."""
    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.subplots()
    for name, pts in _by_system(points).items():
        front = pareto(pts)
        line = ax.plot([p["recall"] for p in front], [p["qps"] for p in front], label=name, markersize=4,
                       **_style(name))[0]
        rest = [p for p in pts if p not in front]
        ax.scatter([p["recall"] for p in rest], [p["qps"] for p in rest], s=12, alpha=0.4, color=line.get_color())
    ax.set(xlabel=f"recall@{k} (vs exact search in the system's own metric)", ylabel="QPS (1 thread, batch)",
           yscale="log", title="Throughput vs recall")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def task_vs_recall(points: list[dict], task_names: list[str], primary: str, focus: str, path: Path, *,
                   k: int, exact: dict | None = None) -> Path:
    """Left: one curve per task metric for the `focus` system. Right: the primary task, one curve per system."""
    fig = Figure(figsize=(12, 4.8))
    left, right = fig.subplots(1, 2)
    pts = _by_system(points).get(focus, [])
    for name in task_names:
        left.plot([p["recall"] for p in pts], [p[name] for p in pts], marker="o", markersize=3, label=name)
    left.set(xlabel=f"recall@{k}", ylabel="task metric", title=f"{focus}: every task metric vs recall")
    for name, sys_pts in _by_system(points).items():
        right.plot([p["recall"] for p in sys_pts], [p[primary] for p in sys_pts], label=name, markersize=4,
                   **_style(name))
    for metric, value in (exact or {}).items():
        right.axhline(value, color="grey", linewidth=0.8, linestyle=":")
        right.annotate(f"exact {metric}", (0.0, value), xycoords=("axes fraction", "data"), fontsize=7,
                       color="grey", va="bottom")
    right.set(xlabel=f"recall@{k} (own metric)", ylabel=primary, title=f"{primary} vs recall, all systems")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def funnel_waterfall(stages: list[tuple[str, float | None]], final: float, task: str, path: Path) -> Path:
    """Bars falling from 1.0 by each stage's loss down to the served value; unmeasured stages are hatched."""
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    level, labels = 1.0, []
    for i, (name, loss) in enumerate(stages):
        if loss is None:
            ax.bar(i, 0.02, bottom=level - 0.01, color="white", edgecolor="grey", hatch="//")
            ax.annotate("not measured", (i, level + 0.02), ha="center", fontsize=8, color="grey")
        else:
            ax.bar(i, -loss, bottom=level, color="tab:red" if loss > 0 else "tab:green")
            ax.annotate(f"{-loss:+.3f}", (i, max(level, level - loss) + 0.01), ha="center", fontsize=8)
            level -= loss
        labels.append(name.replace(" ", "\n"))
    ax.bar(len(stages), final, color="tab:blue")
    ax.annotate(f"{final:.3f}", (len(stages), final + 0.01), ha="center", fontsize=8)
    ax.set_xticks(range(len(stages) + 1), labels + ["served"], fontsize=8)
    ax.set(ylabel=task, ylim=(0, 1.08), title="Information-loss funnel (from a perfect 1.0)")
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def latency_cdf(latencies: dict[str, np.ndarray], path: Path) -> Path:
    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.subplots()
    for label, seconds in list(latencies.items())[:MAX_CDF_CURVES]:
        ms = np.sort(np.asarray(seconds) * 1e3)
        ax.plot(ms, np.arange(1, len(ms) + 1) / len(ms), label=label, linewidth=1.2,
                linestyle=_style(label)["linestyle"])
    ax.set(xscale="log", xlabel="single-query latency (ms, log)", ylabel="fraction of queries",
           title="Latency CDF (1 thread)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)
