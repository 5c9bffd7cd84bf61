"""The sweep: measure vdb and its peers on one dataset and put recall, task metrics and cost side by side.

Order of work (each step's results feed the next):
  1. meta-features of the raw vectors, and the decision-tree recommendation;
  2. exact search under l2, ip and cosine (ground truth, cached) -> the task ceiling per metric;
  3. exact search over the INT8 reconstruction -> quantization loss;
  4. every system of the sweep: build once, then per operating point a batch pass (results, QPS) and
     single-query passes (latency); score recall (against that metric's exact neighbours, ties counted) and
     every task metric, with bootstrap CIs;
  5. the funnel, the saturation points, the recommendation check and the two rankings.
`write_outputs` (vdb.eval.report) turns the result into points.jsonl, summary.json, report.md and plots.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vdb.eval import metrics as M
from vdb.eval.baselines import FaissSystem
from vdb.eval.datasets import METRICS, EvalDataset
from vdb.eval.errors import EvalDatasetError
from vdb.eval.funnel import Funnel, build_funnel, exact_int8_search, saturation_point
from vdb.eval.groundtruth import distances_of, ground_truth
from vdb.eval.machine import git_revision, machine_info
from vdb.eval.measure import measure_point, single_thread
from vdb.eval.metafeatures import MetaFeatures, compute_metafeatures
from vdb.eval.rankings import rank_points, rank_systems
from vdb.eval.modes import compare_modes
from vdb.eval.recommend import (Recommendation, RecommendationCheck, check_recommendation, recommend,
                                recommend_hybrid)
from vdb.eval.sweep import SweepSpec, SystemSpec, default_sweep, load_sweep, with_service
from vdb.eval.systems import VdbSystem, remove_index_dir
from vdb.eval.tasks import evaluate_tasks, primary_task

log = logging.getLogger(__name__)
PEER_CV_MIN = 0.01          # metric peers only matter when the norms vary (else l2, ip and cosine rank alike)


@dataclass(frozen=True)
class EvalConfig:
    k: int = 10
    metric: str = "auto"                      # auto = the dataset's natural metric
    quick: bool = False
    sweep_file: str | None = None
    seed: int = 0
    latency_queries: int = 1000
    quick_queries: int = 1000                 # --quick evaluates the first N queries only
    cache_dir: str | None = None              # ground truth cache (default: <out>/groundtruth)
    n_boot: int = 1000
    peer_metrics: tuple[str, ...] | None = None   # None = automatic (see sweep.py)
    keep_indexes: bool = False
    progress: bool = True
    served_cached: float | None = None        # task value through the semantic cache (else measured, see below)
    server: str | None = None                 # evaluate a running vdb server (host:port) instead of embedded
    # Semantic cache of the service system (0: no cache points). Room for every query's entry (kjv: 2,000 x 40
    # x 384 floats = 123 MB): a cyclic pass over more entries than fit defeats LRU and measures capacity instead.
    cache_mb: float = 256.0
    modes: bool = True                        # datasets with texts: compare dense, BM25 and hybrid search


@dataclass(frozen=True)
class EvalResult:
    dataset: dict
    config: dict
    metric: str
    task: str | None
    exact: dict                               # metric -> {task metric -> Estimate dict}
    exact_int8: dict                          # task metric -> mean
    points: list[dict]
    metafeatures: MetaFeatures
    recommendation: Recommendation
    check: RecommendationCheck | None
    funnel: Funnel | None
    saturation: dict
    rankings: dict
    machine: dict
    git_revision: str | None
    timings_s: dict
    latencies: dict = field(default_factory=dict)   # label -> single-query latencies (s), for the CDF plot
    modes: dict | None = None                 # dense vs BM25 vs hybrid (datasets with texts; vdb/eval/modes.py)


def resolve_metric(ds: EvalDataset, metric: str) -> str:
    m = ds.metric if metric == "auto" else metric
    if m not in METRICS:
        raise EvalDatasetError(f"unknown metric {metric!r}: use auto, l2, ip or cosine")
    return m


def run_eval(ds: EvalDataset, out_dir: str | Path, config: EvalConfig = EvalConfig()) -> EvalResult:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if config.quick:
        ds = ds.with_queries(config.quick_queries)
    k, metric = config.k, resolve_metric(ds, config.metric)
    if not 1 <= k <= ds.n:
        raise EvalDatasetError(f"k must be in [1, {ds.n}] for this dataset, got {k}")
    task, timings = primary_task(ds, k), {}
    raw_b, raw_q = ds.raw_base(), ds.raw_queries()
    cache = config.cache_dir or out / "groundtruth"

    t = time.perf_counter()
    mf = compute_metafeatures(raw_b, raw_q, metric=metric, base_labels=ds.base_labels, k=k, seed=config.seed)
    timings["metafeatures"] = time.perf_counter() - t

    t = time.perf_counter()
    truth = {m: ground_truth(raw_b, raw_q, m, k, cache) for m in METRICS}
    exact_pq = {m: evaluate_tasks(truth[m][0], ds, k) for m in METRICS}
    int8_pq = evaluate_tasks(exact_int8_search(raw_b, raw_q, metric, k, seed=config.seed), ds, k)
    timings["exact"] = time.perf_counter() - t
    quant_loss = _mean(exact_pq[metric], task) - _mean(int8_pq, task) if task else None
    rec = recommend(mf, k=k, quantization_loss=quant_loss)

    spec = _sweep(config, metric, ds.n, mf.cv_norms)
    t = time.perf_counter()
    points, per_query, latencies = _run_sweep(spec, ds, raw_b, raw_q, truth, k, out, config)
    timings["sweep"] = time.perf_counter() - t

    modes = None
    if ds.has_texts and config.modes:
        t = time.perf_counter()
        modes = compare_modes(ds, raw_b, raw_q, metric, k, out, cache_dir=cache, seed=config.seed,
                              n_boot=config.n_boot, latency_queries=min(config.latency_queries, ds.nq))
        modes["recommendation"] = recommend_hybrid(modes)
        timings["modes"] = time.perf_counter() - t
    exact = {m: {name: M.estimate(v, n_boot=config.n_boot, seed=config.seed).as_dict() for name, v in pq.items()}
             for m, pq in exact_pq.items()}
    funnel, saturation, check = _analyse(task, metric, exact_pq, int8_pq, points, per_query, rec, config)
    rankings = {"points": rank_points(points, task),
                "systems": rank_systems(points, task, _mean(exact_pq[metric], task))} if task else {}
    summary = ds.summary()
    if ds.neighbors is not None and ds.metric == metric:
        summary["shipped_neighbors_recall"] = round(float(M.recall_at_k(ds.neighbors, truth[metric][0], k).mean()), 5)
    return EvalResult(
        dataset=summary, config={**config.__dict__, "metric": metric}, metric=metric, task=task, exact=exact,
        exact_int8={name: _mean(int8_pq, name) for name in int8_pq}, points=points, metafeatures=mf,
        recommendation=rec, check=check, funnel=funnel, saturation=saturation, rankings=rankings,
        machine=machine_info(), git_revision=git_revision(), timings_s={k_: round(v, 3) for k_, v in timings.items()},
        latencies=latencies, modes=modes)


def _sweep(config: EvalConfig, metric: str, n: int, cv_norms: float) -> SweepSpec:
    peers = config.peer_metrics
    if peers is None:
        peers = () if config.quick or cv_norms <= PEER_CV_MIN else tuple(m for m in METRICS if m != metric)
    if config.sweep_file:
        spec = load_sweep(config.sweep_file, metric, n, quick=config.quick, peer_metrics=peers)
    else:
        spec = default_sweep(metric, n, quick=config.quick, peer_metrics=peers)
    return with_service(spec, metric, quick=config.quick, server=config.server, cache=config.cache_mb > 0)


# -- the sweep -------------------------------------------------------------------------------------------------
def _run_sweep(spec: SweepSpec, ds, raw_b, raw_q, truth, k, out: Path, config: EvalConfig):
    rows, per_query, latencies = [], {}, {}
    bar = _bar(spec.count(), "operating points", config.progress)
    context = {"dataset": ds.name, "dataset_fingerprint": ds.fingerprint, "seed": config.seed,
               "git_revision": git_revision(), "machine": machine_info(), "n_queries": ds.nq}
    for sys_spec in spec.systems:
        system = _make_system(sys_spec, config.seed, config)
        try:
            with single_thread():
                info = system.build(raw_b, out / "indexes", progress=_stage_bars(config.progress))
            for params in sys_spec.search:
                m = measure_point(system, raw_q, k, params, latency_queries=min(config.latency_queries, ds.nq))
                label = sys_spec.label(params)
                row, pq = _score(m, ds, raw_b, raw_q, truth[sys_spec.metric][1], sys_spec.metric, k, config)
                rows.append({**_describe(sys_spec, system, params, label, info), **row, **context})
                per_query[label], latencies[label] = pq, m.latency_s
                bar.update(1)
        finally:
            system.close()
            if not config.keep_indexes:
                remove_index_dir(system)
    bar.close()
    if not config.keep_indexes and (out / "indexes").is_dir() and not any((out / "indexes").iterdir()):
        (out / "indexes").rmdir()
    return rows, per_query, latencies


def _make_system(spec: SystemSpec, seed: int, config: EvalConfig | None = None):
    if spec.kind == "vdb":
        return VdbSystem(spec.metric, {"seed": seed, **spec.build}, name=spec.name)
    if spec.kind == "vdb-service":
        from vdb.eval.service import ServiceSystem
        return ServiceSystem(spec.metric, {"seed": seed, **spec.build}, name=spec.name,
                             server=config.server if config else None,
                             cache_mb=config.cache_mb if config else 256.0)
    return FaissSystem(spec.kind, spec.metric, spec.build, seed=seed)


def _describe(spec: SystemSpec, system, params: dict, label: str, info) -> dict:
    return {"label": label, "system": spec.name, "kind": spec.kind, "family": system.family, "metric": spec.metric,
            "build": dict(spec.build), "search": dict(params), "build_s": info.seconds, "ram_bytes": info.ram_bytes,
            "disk_bytes": info.disk_bytes, "build_details": info.details}


def _score(m, ds: EvalDataset, raw_b, raw_q, truth_dists, metric: str, k: int,
           config: EvalConfig) -> tuple[dict, dict]:
    found_d = distances_of(raw_b, raw_q, m.ids, metric)
    pq = {"recall": M.distance_recall_at_k(found_d, truth_dists, k), **evaluate_tasks(m.ids, ds, k)}
    row: dict = {"k": k, "qps": round(m.qps, 1), "latency_queries": len(m.latency_s)}
    row.update({f"latency_{key}": v for key, v in M.latency_summary(m.latency_s).items()})
    row.update({key: round(v, 1) for key, v in m.counters.items()})
    ci = {}
    for name, values in pq.items():
        est = M.estimate(values, n_boot=config.n_boot, seed=config.seed)
        row[name], ci[name] = est.as_dict()["mean"], est.as_dict()["ci"]
    row["ci"] = ci
    return row, pq


# -- analysis --------------------------------------------------------------------------------------------------
def _analyse(task, metric, exact_pq, int8_pq, points, per_query, rec, config: EvalConfig):
    if task is None:
        return None, {}, None
    exact_chosen = _mean(exact_pq[metric], task)
    default_vdb = [p for p in points if p["kind"] == "vdb" and p["metric"] == metric and not p["build"]]
    served_pts = default_vdb or [p for p in points if p["kind"] == "vdb" and p["metric"] == metric] or \
        [p for p in points if p["kind"] == "vdb-service" and p["metric"] == metric and not p["search"]["use_cache"]]
    same_metric = [p for p in points if p["metric"] == metric and p["family"] != "exact"]
    saturation = {"overall": saturation_point(same_metric, task, exact_chosen, cost_key="latency_p50_ms"),
                  "vdb": saturation_point(served_pts, task, exact_chosen, cost_key="bytes_read_per_query")}
    if not served_pts:
        return None, saturation, None
    sat = saturation["vdb"]
    served = sat["label"] if sat else max(served_pts, key=lambda p: p[task])["label"]
    by_metric = {m: _mean(pq, task) for m, pq in exact_pq.items()}
    best = max(by_metric, key=by_metric.get)
    ci = {"metric misuse": _ci(exact_pq[best][task] - exact_pq[metric][task], config),
          "quantization loss": _ci(exact_pq[metric][task] - int8_pq[task], config),
          "index loss": _ci(int8_pq[task] - per_query[served][task], config)}
    served_cached = config.served_cached
    if served_cached is None:
        served_value = next(p[task] for p in served_pts if p["label"] == served)
        served_cached = _cached_task(points, metric, task, (sat or {}).get("search", {}).get("nprobe"), served_value)
    funnel = build_funnel(task, by_metric, metric, _mean(int8_pq, task), served_pts, served,
                          served_cached=served_cached, saturation=sat, ci=ci)
    check = check_recommendation(rec, by_metric, points, task=task, exact_ceiling=exact_chosen, metric=metric,
                                 measured_nprobe=(sat or {}).get("search", {}).get("nprobe"))
    return funnel, saturation, check


def _cached_task(points: list[dict], metric: str, task: str, nprobe, served: float) -> float | None:
    """The served value after the cache stage: the cache's effect (uncached minus cached, both measured on the
    service at the same nprobe, the one nearest the served point's) applied to the served value."""
    service = [p for p in points if p["kind"] == "vdb-service" and p["metric"] == metric]
    pairs = {}
    for p in service:
        pairs.setdefault(p["search"].get("nprobe", 32), {})[bool(p["search"].get("use_cache"))] = p[task]
    pairs = {n: v for n, v in pairs.items() if True in v and False in v}
    if not pairs:
        return None
    target = nprobe or 32
    n = min(pairs, key=lambda v: abs(np.log2(max(v, 1) / max(target, 1))))
    return float(served - (pairs[n][False] - pairs[n][True]))


def _ci(diff: np.ndarray, config: EvalConfig) -> list:
    lo, hi = M.bootstrap_ci(diff, n_boot=config.n_boot, seed=config.seed)
    return [round(lo, 6), round(hi, 6)]


def _mean(pq: dict, name: str) -> float:
    return float(np.nanmean(pq[name]))


# -- progress (stderr) -----------------------------------------------------------------------------------------
class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, file=sys.stderr, leave=False)


def _stage_bars(enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm
    return lambda stage, total: tqdm(total=total, desc=stage, file=sys.stderr, leave=False, unit_scale=True)
