"""Iceberg's published decision tree, mapped onto vdb's knobs, and a check of it against measured results.

The tree (Iceberg, 2025, section 4.3):
  1. metric: inner product if DBI_E >= DBI_C and CV <= 0.1, else Euclidean;
  2. method: partition-based if RA >= 60 or RC < 1.5, else graph-based.
vdb is a partition-based (SPANN) index, so the method answer does not change the engine: it sets how hard
the partitions must work (nprobe, replicas). The knob rules below are ours, documented next to each value,
and `check_recommendation` compares them with what a sweep measured.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from vdb.eval.metafeatures import MetaFeatures

CV_MAX = 0.1
RA_MIN = 60.0
RC_MAX = 1.5
RC_EASY = 2.0
QUANT_LOSS_MAX = 0.005        # INT8 "off" (bigger float32 re-rank) when exact INT8 search loses > half a point
SATURATION = 0.99


@dataclass(frozen=True)
class TreeStep:
    node: str                 # "metric" | "method"
    test: str                 # the rule with the measured values filled in
    values: dict
    outcome: str


@dataclass(frozen=True)
class Knobs:
    metric: str
    nprobe: int
    max_replicas: int
    int8: str                 # "on": default re-rank depth; "off": re-rank deeper with float32
    rerank_k: int
    cache_threshold: float | None
    reasons: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Recommendation:
    metric_family: str        # "ip" | "l2" (Iceberg's two choices)
    method_family: str        # "partition" | "graph"
    path: tuple[TreeStep, ...]
    knobs: Knobs

    def as_dict(self) -> dict:
        return asdict(self)

    def render(self) -> str:
        lines = ["Iceberg decision tree:"]
        lines += [f"  [{s.node}] {s.test}  ->  {s.outcome}" for s in self.path]
        lines.append("vdb knobs:")
        for name in ("metric", "nprobe", "max_replicas", "int8", "rerank_k", "cache_threshold"):
            value = getattr(self.knobs, name)
            lines.append(f"  {name:<16} {str(value):<8} {self.knobs.reasons.get(name, '')}")
        return "\n".join(lines)


def iceberg_tree(dbi_e: float, dbi_c: float, cv: float, ra: float, rc: float):
    """(metric family, method family, path) of Iceberg's tree for these meta-feature values."""
    ip = dbi_e >= dbi_c and cv <= CV_MAX
    metric = TreeStep("metric", f"DBI_E {dbi_e:.3f} >= DBI_C {dbi_c:.3f} [{_yn(dbi_e >= dbi_c)}] and "
                                f"CV {cv:.3f} <= {CV_MAX} [{_yn(cv <= CV_MAX)}]",
                      {"dbi_euclidean": dbi_e, "dbi_cosine": dbi_c, "cv_norms": cv},
                      "inner product" if ip else "Euclidean")
    partition = ra >= RA_MIN or rc < RC_MAX
    method = TreeStep("method", f"RA {ra:.1f} >= {RA_MIN:g} [{_yn(ra >= RA_MIN)}] or "
                                f"RC {rc:.3f} < {RC_MAX} [{_yn(rc < RC_MAX)}]",
                      {"relative_angle": ra, "relative_contrast": rc},
                      "partition-based" if partition else "graph-based")
    return ("ip" if ip else "l2"), ("partition" if partition else "graph"), (metric, method)


def recommend(mf: MetaFeatures, *, k: int = 10, quantization_loss: float | None = None) -> Recommendation:
    metric_family, method_family, path = iceberg_tree(mf.dbi_euclidean, mf.dbi_cosine, mf.cv_norms,
                                                      mf.relative_angle, mf.relative_contrast)
    return Recommendation(metric_family, method_family, path,
                          map_knobs(metric_family, method_family, mf, k=k, quantization_loss=quantization_loss))


def map_knobs(metric_family: str, method_family: str, mf: MetaFeatures, *, k: int = 10,
              quantization_loss: float | None = None) -> Knobs:
    reasons = {}
    if metric_family == "ip":
        metric = "cosine"
        reasons["metric"] = "IP branch (CV <= 0.1: norms nearly constant), so IP ranks as cosine does"
    else:
        metric = "l2"
        reasons["metric"] = "Euclidean branch"
    nprobe = 16 if mf.relative_contrast >= RC_EASY else 32 if mf.relative_contrast >= RC_MAX else 64
    difficulty = {16: "easy", 32: "medium"}.get(nprobe, "hard")
    reasons["nprobe"] = f"RC {mf.relative_contrast:.2f}: {difficulty}"
    if method_family == "graph":
        nprobe = min(2 * nprobe, 128)
        reasons["nprobe"] += "; graph-favoured data: SPANN probes more to match a graph index (x2)"
    replicas = 8 if mf.relative_contrast < RC_EASY or mf.relative_angle >= RA_MIN else 4
    reasons["max_replicas"] = ("blurred boundaries (RC < 2 or RA >= 60): replicate boundary vectors (SPANN's 8)"
                               if replicas == 8 else "well separated: 4 replicas save disk")
    int8_off = quantization_loss is not None and quantization_loss > QUANT_LOSS_MAX
    rerank = max(16 * k, 256) if int8_off else max(3 * k, 32)
    reasons["int8"] = ("not measured: vdb re-ranks with float32 anyway" if quantization_loss is None else
                       f"exact INT8 search loses {quantization_loss:+.4f}: "
                       + ("re-rank deeper with float32" if int8_off else "keep the default re-rank depth"))
    reasons["rerank_k"] = "max(16k, 256)" if int8_off else "vdb default max(3k, 32)"
    # vdb's cache has no similarity threshold to tune: hits are certified by the triangle inequality, and the
    # only knob is how many uncertified positions to tolerate (cache_error_budget). Recommend none.
    reasons["cache_threshold"] = (f"cache_error_budget 0 (certified hits only); the certifiable distance grows "
                                  f"with the gap between the k-th and K'-th neighbours, small at RC "
                                  f"{mf.relative_contrast:.2f}, so expect hits mostly on near-exact repeats"
                                  if mf.relative_contrast < RC_EASY else
                                  f"cache_error_budget 0 (certified hits only); RC {mf.relative_contrast:.2f}: "
                                  f"neighbour gaps are wide, near-duplicate queries certify")
    return Knobs(metric, nprobe, replicas, "off" if int8_off else "on", rerank, 0.0, reasons)


# -- checking against a sweep --------------------------------------------------------------------------------
@dataclass(frozen=True)
class RecommendationCheck:
    recommended_metric: str
    best_metric: str
    metric_ok: bool
    metric_cost: float             # task(exact, best metric) - task(exact, recommended metric)
    tree_metric: str               # the better of Iceberg's two choices (l2, ip) as measured
    tree_metric_ok: bool
    recommended_family: str
    best_family: str | None
    family_ok: bool | None
    best_point: str | None
    recommended_nprobe: int
    measured_nprobe: int | None
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return asdict(self)


def check_recommendation(rec: Recommendation, by_metric: dict[str, float], points: list[dict], *, task: str,
                         exact_ceiling: float, metric: str, cost_key: str = "latency_p50_ms",
                         measured_nprobe: int | None = None) -> RecommendationCheck:
    """Compare the recommendation with the measurements: the best metric in exact search (`by_metric`:
    task value per metric), and the index family whose cheapest point reaches 99% of `exact_ceiling` on
    `task` (among the operating points of `metric`, the metric the sweep served)."""
    best_metric = max(by_metric, key=by_metric.get)
    rec_metric = rec.knobs.metric
    tree_metric = "ip" if by_metric.get("ip", -1) > by_metric.get("l2", -1) else "l2"
    best_family, best_point = _best_family(points, task, SATURATION * exact_ceiling, metric, cost_key)
    notes = []
    if best_metric != rec_metric and best_metric in ("cosine", "ip") and rec.metric_family == "l2":
        notes.append(f"{best_metric} beats the recommended l2 by {by_metric[best_metric] - by_metric['l2']:.4f}: "
                     f"normalising the vectors is a choice Iceberg's tree does not offer")
    if rec.method_family == "graph" and best_family == "partition":
        notes.append("a partition index reached the ceiling more cheaply than the graph index, against the tree")
    return RecommendationCheck(
        recommended_metric=rec_metric, best_metric=best_metric, metric_ok=best_metric == rec_metric,
        metric_cost=round(by_metric[best_metric] - by_metric.get(rec_metric, float("nan")), 6),
        tree_metric=tree_metric, tree_metric_ok=tree_metric == rec.metric_family,
        recommended_family=rec.method_family, best_family=best_family,
        family_ok=None if best_family is None else best_family == rec.method_family, best_point=best_point,
        recommended_nprobe=rec.knobs.nprobe, measured_nprobe=measured_nprobe, notes=tuple(notes))


def _best_family(points: list[dict], task: str, target: float, metric: str, cost_key: str):
    ann = [p for p in points if p.get("family") in ("partition", "graph") and p.get("metric") == metric
           and p.get(task) is not None]
    if not ann:
        return None, None
    good = [p for p in ann if p[task] >= target and p.get(cost_key) is not None]
    best = min(good, key=lambda p: p[cost_key]) if good else max(ann, key=lambda p: p[task])
    return best["family"], best["label"]


def recommend_hybrid(modes: dict) -> dict:
    """When to turn hybrid search on, from the measured modes (vdb/eval/modes.py): "hybrid-<fusion>" when the
    better fusion beats dense on the primary task with a paired 95% CI above zero, "bm25" when full text alone
    beats dense and every fusion, else "dense"; with the gain, its CI and the latency it costs."""
    task, rows = modes.get("task"), modes["modes"]
    if not task:
        return {"mode": "dense", "reason": "no task metric: hybrid cannot be judged by the task"}
    hybrids = [m for m in rows if m.startswith("hybrid")]
    best = max(hybrids, key=lambda m: rows[m]["vs_dense"]["diff"])
    gain, ci = rows[best]["vs_dense"]["diff"], rows[best]["vs_dense"]["ci"]
    bm25 = rows["bm25"]["vs_dense"]
    cost = rows[best]["latency_p50_vs_dense"]
    if bm25["ci"][0] > 0 and bm25["diff"] > gain:
        mode, why = "bm25", f"full text alone beats dense by {bm25['diff']:+.4f} {bm25['ci']} and every fusion"
    elif ci[0] > 0:
        mode, why = best, f"{best} beats dense by {gain:+.4f} (95% CI {ci}) at {cost}x dense's p50 latency"
    else:
        mode = "dense"
        why = (f"the best fusion ({best}) changes {task} by {gain:+.4f} (95% CI {ci}), not a gain that the "
               f"{cost}x latency would buy")
    others = {m: {n: rows[m][n]["mean"] for n in modes["task_metrics"] if n != "dense_overlap"} for m in rows}
    return {"mode": mode, "task": task, "reason": why, "by_mode": others}


def _yn(flag: bool) -> str:
    return "yes" if flag else "no"
