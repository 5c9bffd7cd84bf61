"""The information-loss funnel: where task quality is lost between a perfect answer and what vdb serves.
Every stage is a difference of two *measured* task values (the primary task metric, e.g. label_vote_acc@10):

  1.0 ─ embedding loss ─> ceiling      = task(exact search, best of l2 / ip / cosine on the raw vectors)
      ─ metric misuse  ─> exact(chosen) = task(exact search, the metric the index uses)
      ─ quantization   ─> exact(int8)   = task(exact search over the INT8 reconstruction of the stored vectors)
      ─ index          ─> served        = task(vdb at the served operating point)
      ─ cache          ─> served+cache  = task(through the semantic cache)   [not measured yet: no cache]

so 1 - Σ stages = the served value, exactly. vdb re-ranks its INT8 candidates with float32, so its index stage
is measured from the INT8 ceiling and can be negative (the re-rank wins back what INT8 lost); the index loss
of each operating point against the float32 ceiling, task(exact) - task(ANN), is reported next to it.
The saturation point is the cheapest operating point whose task value reaches 99% of exact(chosen).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from index.distance import normalize
from index.quantize import Int8Quantizer
from vdb.eval.groundtruth import exact_search

SATURATION = 0.99
QUANT_SAMPLE = 100_000
NOT_MEASURED = None


@dataclass(frozen=True)
class Funnel:
    task: str
    by_metric: dict                   # exact task value per metric on the raw vectors
    chosen_metric: str
    exact_int8: float
    served_point: str
    served: float
    index_loss: dict                  # per operating point label: exact(chosen) - task(point)
    served_cached: float | None = NOT_MEASURED
    saturation: dict | None = None
    ci: dict = field(default_factory=dict)   # stage -> [lo, hi] (paired bootstrap over queries)

    @property
    def best_metric(self) -> str:
        return max(self.by_metric, key=self.by_metric.get)

    @property
    def ceiling(self) -> float:
        return self.by_metric[self.best_metric]

    @property
    def exact_chosen(self) -> float:
        return self.by_metric[self.chosen_metric]

    @property
    def final(self) -> float:
        return self.served if self.served_cached is None else self.served_cached

    def stages(self) -> list[tuple[str, float | None]]:
        """(stage, loss) in funnel order; the cache stage is None while not measured."""
        cache = None if self.served_cached is None else self.served - self.served_cached
        return [("embedding loss", 1.0 - self.ceiling),
                ("metric misuse", self.ceiling - self.exact_chosen),
                ("quantization loss", self.exact_chosen - self.exact_int8),
                ("index loss", self.exact_int8 - self.served),
                ("cache loss", cache)]

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(best_metric=self.best_metric, ceiling=self.ceiling, exact_chosen=self.exact_chosen,
                 final=self.final, stages=[{"stage": s, "loss": v} for s, v in self.stages()])
        return d


def int8_reconstruction(raw_base: np.ndarray, metric: str, *, seed: int = 0) -> np.ndarray:
    """What vdb's INT8 codes decode to: the stored vectors (unit length for cosine) through an Int8Quantizer
    trained as `index.build` trains it (on up to 100,000 stored rows drawn with the build seed)."""
    stored = normalize(np.asarray(raw_base, np.float32)) if metric == "cosine" else np.asarray(raw_base, np.float32)
    rows = np.sort(np.random.default_rng(seed).choice(len(stored), min(len(stored), QUANT_SAMPLE), replace=False))
    q = Int8Quantizer.train(stored[rows])
    return q.decode(q.encode(stored))


def exact_int8_search(raw_base: np.ndarray, raw_queries: np.ndarray, metric: str, k: int, *,
                      seed: int = 0) -> np.ndarray:
    """Exact top-k over the INT8 reconstruction, scored the way vdb's kernels score codes (for cosine: the
    inner product of the unit query with the *un-renormalised* reconstruction)."""
    recon = int8_reconstruction(raw_base, metric, seed=seed)
    if metric == "cosine":
        return exact_search(recon, normalize(np.asarray(raw_queries, np.float32)), "ip", k)[0]
    return exact_search(recon, np.asarray(raw_queries, np.float32), metric, k)[0]


def saturation_point(points: list[dict], task: str, exact_value: float, *, cost_key: str,
                     frac: float = SATURATION) -> dict | None:
    """The cheapest point (smallest `cost_key`) with task >= frac * exact_value; None if none reaches it."""
    good = [p for p in points if p.get(task) is not None and p.get(cost_key) is not None
            and p[task] >= frac * exact_value]
    if not good:
        return None
    best = min(good, key=lambda p: (p[cost_key], p["label"]))
    return {"label": best["label"], "system": best.get("system"), "cost_key": cost_key, "cost": best[cost_key],
            "task": best[task], "target": frac * exact_value, "search": best.get("search", {})}


def build_funnel(task: str, by_metric: dict[str, float], chosen_metric: str, exact_int8: float,
                 points: list[dict], served_label: str, *, served_cached: float | None = NOT_MEASURED,
                 saturation: dict | None = None, ci: dict | None = None) -> Funnel:
    """Assemble the funnel from measured values. `points`: operating-point rows carrying `label` and `task`
    (only the vdb points of the chosen metric belong here); `served_label` names the served one."""
    exact = by_metric[chosen_metric]
    index_loss = {p["label"]: round(exact - p[task], 6) for p in points if p.get(task) is not None}
    served = next(p[task] for p in points if p["label"] == served_label)
    return Funnel(task=task, by_metric=dict(by_metric), chosen_metric=chosen_metric, exact_int8=exact_int8,
                  served_point=served_label, served=served, index_loss=index_loss, served_cached=served_cached,
                  saturation=saturation, ci=ci or {})
