"""Two views of the same sweep, and how far they agree (Iceberg's key finding is that they can differ).

* Point ranking: every operating point ordered by recall@k (ties by QPS) and, separately, by the task metric
  (ties by QPS); Kendall's tau-b between recall and task values over the points, and the most striking
  discordant pairs (A has more recall than B but a lower task value).
* System ranking: each system (kind + metric + build knobs) scored the ann-benchmarks way, by its best QPS at
  recall@k >= `recall_target`, and the task way, by its best QPS at task >= 99% of the exact-search ceiling
  of the evaluated metric; a system that never reaches the bar scores 0. Kendall's tau between the scores.
"""
from __future__ import annotations

from itertools import combinations

import numpy as np
from scipy.stats import kendalltau

RECALL_TARGET = 0.9
SATURATION = 0.99
DISCORDANT_SHOWN = 5


def rank_points(rows: list[dict], task: str, *, recall_key: str = "recall") -> dict:
    pts = [r for r in rows if r.get(task) is not None and r.get(recall_key) is not None]
    by_recall = sorted(pts, key=lambda r: (-r[recall_key], -r["qps"], r["label"]))
    by_task = sorted(pts, key=lambda r: (-r[task], -r["qps"], r["label"]))
    return {"by_recall": [r["label"] for r in by_recall], "by_task": [r["label"] for r in by_task],
            "kendall_tau": _tau([r[recall_key] for r in pts], [r[task] for r in pts]),
            "discordant": discordant_pairs(pts, task, recall_key)}


def discordant_pairs(pts: list[dict], task: str, recall_key: str = "recall",
                     shown: int = DISCORDANT_SHOWN) -> list[dict]:
    """Pairs where more recall comes with less task quality, largest task gap first."""
    out = []
    for a, b in combinations(pts, 2):
        hi, lo = (a, b) if a[recall_key] > b[recall_key] else (b, a)
        if hi[recall_key] > lo[recall_key] and hi[task] < lo[task]:
            out.append({"more_recall": hi["label"], "recall": [hi[recall_key], lo[recall_key]],
                        "better_task": lo["label"], "task": [hi[task], lo[task]],
                        "task_gap": round(lo[task] - hi[task], 6)})
    return sorted(out, key=lambda d: -d["task_gap"])[:shown]


def rank_systems(rows: list[dict], task: str, exact_task: float, *, recall_key: str = "recall",
                 recall_target: float = RECALL_TARGET) -> dict:
    systems: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("family") != "exact":
            systems.setdefault(r["system"], []).append(r)
    bar = SATURATION * exact_task
    scores = {name: {"qps_at_recall": _best_qps(pts, recall_key, recall_target),
                     "qps_at_task": _best_qps(pts, task, bar),
                     "max_recall": max(p[recall_key] for p in pts),
                     "max_task": max(p[task] for p in pts if p.get(task) is not None) if task else None}
              for name, pts in systems.items()}
    names = sorted(scores)
    return {"recall_target": recall_target, "task_target": round(bar, 6), "scores": scores,
            "by_recall": sorted(names, key=lambda s: (-scores[s]["qps_at_recall"], s)),
            "by_task": sorted(names, key=lambda s: (-scores[s]["qps_at_task"], s)),
            "kendall_tau": _tau([scores[s]["qps_at_recall"] for s in names],
                                [scores[s]["qps_at_task"] for s in names])}


def _best_qps(pts: list[dict], key: str, bar: float) -> float:
    ok = [p["qps"] for p in pts if p.get(key) is not None and p[key] >= bar]
    return round(max(ok), 1) if ok else 0.0


def _tau(a: list[float], b: list[float]) -> float | None:
    if len(a) < 2 or len(set(a)) < 2 or len(set(b)) < 2:
        return None
    tau = kendalltau(np.asarray(a), np.asarray(b)).statistic
    return None if not np.isfinite(tau) else round(float(tau), 4)
