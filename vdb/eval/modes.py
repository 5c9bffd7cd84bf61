"""Dense, BM25 and hybrid search judged by the task, on every dataset that has texts.

One embedded collection holds the dataset's raw vectors with their texts (full-text index on `text`); every
mode is measured against it in the same process, one thread: the batch pass (its answers give the task metrics
and the batch QPS) and single-query passes (latency p50 / p99), after a warm-up. Modes:
    dense            vdb's vector search at its default knobs
    bm25             full-text search alone (the text index is exact: no ANN stage)
    hybrid-rrf       both, reciprocal rank fusion (rrf_k 60) of the top `candidates` of each list
    hybrid-weighted  both, alpha 0.5 on min-max-normalised scores
The funnel of a mode has two stages: `exact` (exact dense neighbours where the mode uses any; BM25 is exact) and
`served` (through vdb's index); their difference is what the vector index costs that mode. Every task metric
gets a bootstrap CI, and each mode's primary-task difference to dense a paired CI.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

import vdb
from vdb.eval import metrics as M
from vdb.eval.datasets import EvalDataset
from vdb.eval.groundtruth import ground_truth
from vdb.eval.measure import single_thread
from vdb.eval.tasks import evaluate_tasks, primary_task
from vdb.text import fusion
from vdb.text.options import DEFAULT_CANDIDATES

MODES = {"dense": None, "bm25": None, "hybrid-rrf": {"fusion": "rrf"},
         "hybrid-weighted": {"fusion": "weighted", "alpha": 0.5}}
UPSERT_BATCH = 5000
WARMUP = 20


def _run(db, mode: str, texts: list[str], q: np.ndarray, k: int):
    if mode == "dense":
        return db.search("m", q, top_k=k, use_cache=False).ids
    if mode == "bm25":
        return db.hybrid_search("m", text=texts, top_k=k).ids
    return db.hybrid_search("m", text=texts, vector=q, top_k=k, use_cache=False, **MODES[mode]).ids


def _exact_fused(mode: str, exact_dense, bm25, k: int) -> np.ndarray:
    """The hybrid answer with exact dense neighbours in place of the index's (the funnel's exact stage)."""
    ids, dists = exact_dense
    dense = (ids, np.where(ids >= 0, -dists.astype(np.float64), -np.inf))
    text = (bm25.ids, np.where(bm25.ids >= 0, -bm25.distances.astype(np.float64), -np.inf))
    opts = MODES[mode]
    if opts["fusion"] == "rrf":
        return fusion.rrf([dense, text], k)[0]
    return fusion.weighted([dense, text], [opts["alpha"], 1.0 - opts["alpha"]], k)[0]


def compare_modes(ds: EvalDataset, raw_b: np.ndarray, raw_q: np.ndarray, metric: str, k: int, workdir: Path, *,
                  cache_dir, seed: int = 0, n_boot: int = 1000, latency_queries: int = 500) -> dict:
    """The comparison of the module docstring, as a JSON-ready dict."""
    task = primary_task(ds, k)
    where = Path(workdir) / "modes-db"
    shutil.rmtree(where, ignore_errors=True)
    db = vdb.connect(where, checkpoint_interval_s=3600)
    try:
        db.create_collection("m", dim=ds.dim, metric=metric, text_field="text", seed=seed)
        t = time.perf_counter()
        for s in range(0, ds.n, UPSERT_BATCH):
            e = min(ds.n, s + UPSERT_BATCH)
            db.upsert("m", np.arange(s, e), raw_b[s:e], [{"text": x} for x in ds.base_texts[s:e]])
        db.flush("m")
        build_s = time.perf_counter() - t
        texts = list(ds.query_texts)
        depth = max(k, DEFAULT_CANDIDATES)
        exact_dense = ground_truth(raw_b, raw_q, metric, depth, cache_dir)
        rows, per_query = {}, {}
        with single_thread():
            for mode in MODES:
                _run(db, mode, texts[:WARMUP], raw_q[:WARMUP], k)
                t = time.perf_counter()
                found = _run(db, mode, texts, raw_q, k)
                batch_s = time.perf_counter() - t
                lat = np.empty(min(latency_queries, ds.nq))
                for i in range(len(lat)):
                    t = time.perf_counter()
                    _run(db, mode, texts[i: i + 1], raw_q[i: i + 1], k)
                    lat[i] = time.perf_counter() - t
                pq = evaluate_tasks(found, ds, k)
                pq["dense_overlap"] = M.recall_at_k(found, exact_dense[0][:, :k], k)
                per_query[mode] = pq
                rows[mode] = {"qps": round(ds.nq / batch_s, 1),
                              **{f"latency_{key}": v for key, v in M.latency_summary(lat).items()},
                              **{name: M.estimate(v, n_boot=n_boot, seed=seed).as_dict() for name, v in pq.items()}}
            bm25_deep = db.hybrid_search("m", text=texts, top_k=depth)
        exact = {"dense": evaluate_tasks(exact_dense[0][:, :k], ds, k), "bm25": per_query["bm25"],
                 **{m: evaluate_tasks(_exact_fused(m, exact_dense, bm25_deep, k), ds, k)
                    for m in ("hybrid-rrf", "hybrid-weighted")}}
    finally:
        db.close()
        shutil.rmtree(where, ignore_errors=True)
    dense_p50 = rows["dense"]["latency_p50_ms"]
    for mode, row in rows.items():
        row["latency_p50_vs_dense"] = round(row["latency_p50_ms"] / dense_p50, 3) if dense_p50 else None
        if task:
            row["funnel"] = {"exact": _mean(exact[mode][task]), "served": _mean(per_query[mode][task])}
            row["funnel"]["index_loss"] = round(row["funnel"]["exact"] - row["funnel"]["served"], 6)
            diff = per_query[mode][task] - per_query["dense"][task]
            row["vs_dense"] = {"diff": _mean(diff), "ci": [round(x, 6) for x in
                                                           M.bootstrap_ci(diff, n_boot=n_boot, seed=seed)]}
    return {"task": task, "k": k, "metric": metric, "candidates": depth, "build_s": round(build_s, 2),
            "task_metrics": sorted(per_query["dense"]), "modes": rows}


def _mean(v) -> float:
    return round(float(np.nanmean(v)), 6)
