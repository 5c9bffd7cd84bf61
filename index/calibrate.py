"""Recall calibration: the build measures recall@k against exact search on held-out samples and stores the
smallest nprobe that reaches `target_recall`, so the default search keeps its recall as the data grows.

Recall at a fixed nprobe falls with scale (measured: nprobe 8 gives 0.90 at 1M and 0.655 at 10M), so a fixed
default silently loses recall on big sets. The samples are stored rows, each moved off its row by a fraction of
its nearest-neighbour distance (moved_off: an unmoved row is an easier query than a new point), their own row
excluded from both the exact answer and the index's answer (k + 1 are fetched); they come from the data's own
distribution, which is what a user's queries are assumed to follow. The whole curve (nprobe -> recall) is kept
in the manifest, so a search may also ask for another target (`SearchParams.target_recall`).
"""
from __future__ import annotations

import logging
import time

import numpy as np

from index.kernels.exact import fold_block_topk
from index.types import Metric, SearchParams

log = logging.getLogger(__name__)
LADDER = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
MARGIN = 0.005   # the sample's recall must clear the target by at least this much, and by Z standard errors of
Z = 2.0          # its mean: at 10M a 1-SE margin (0.005) chose a tier nprobe that gave 0.8989 on 800 new queries
MOVE = 0.7         # calibration queries: each sampled row moved by this fraction of its nearest-neighbour distance
MOVE_NPROBE = 64   # the probes that find that neighbour
BLOCK_BYTES = 64 << 20  # float32 base rows per exact-search block: bounded memory while streaming a 10M-row file


def exact_neighbours(matrix, queries: np.ndarray, rows: np.ndarray, k: int, metric: Metric) -> np.ndarray:
    """Exact top-k rows [nq, k] of stored-form `queries` over `matrix` (the vector file's [n, dim+1] view),
    streamed in blocks, the query's own row (`rows`) excluded."""
    dim = queries.shape[1]
    nq = len(queries)
    best_d = np.full((nq, max(k, 0)), np.inf, np.float32)
    best_i = np.full((nq, max(k, 0)), -1, np.int64)
    if k <= 0 or nq == 0:
        return best_i   # nothing to rank (the kernel needs a k-th slot)
    is_l2 = metric is Metric.L2
    q = np.ascontiguousarray(queries, dtype=np.float32)
    exclude = np.ascontiguousarray(rows, dtype=np.int64)
    # a block's rows and its [nq, rows] products each stay within BLOCK_BYTES
    block_rows = max(1, BLOCK_BYTES // (4 * max(dim, nq, 1)))
    for s in range(0, len(matrix), block_rows):
        # one BLAS product per block and a compiled fold of it into the running top-k: faiss.knn kept a heap
        # per query and took 39 of the 10M build's 41 s of calibration (this: 10.5 s, the same answers). The
        # block is the file's strided view, which BLAS reads in place: no copy of the rows
        block = matrix[s: s + block_rows, :dim]
        dots = q @ block.T
        norms = np.einsum("ij,ij->i", block, block) if is_l2 else np.zeros(0, np.float32)
        fold_block_topk(dots, norms, s, exclude, is_l2, best_d, best_i)
        del dots
    return best_i


def recall_of(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of `truth` found in the same row of `found` (-1 never matches)."""
    hits = _hits(found, truth)
    return float(np.mean(hits)) if len(hits) else 0.0


def _hits(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return np.array([len(np.intersect1d(f[f >= 0], t[t >= 0])) / max(1, int((t >= 0).sum()))
                     for f, t in zip(found, truth)], np.float64)


def margin_of(hits: np.ndarray) -> float:
    """How far a sample's mean recall must clear a target: Z standard errors of the mean, at least MARGIN."""
    if len(hits) < 2:
        return MARGIN
    return max(MARGIN, Z * float(np.std(hits, ddof=1)) / float(np.sqrt(len(hits))))


def _margins(calibration: dict) -> list[float]:
    """The margin of each curve point (a calibration stored before margins were: MARGIN for every point)."""
    curve = calibration.get("curve") or []
    stored = calibration.get("margins")
    return list(stored) if stored is not None and len(stored) == len(curve) else [MARGIN] * len(curve)


def calibrate(index, target: float, *, samples: int = 500, k: int = 10, seed: int = 0,
              ladder=LADDER) -> dict:
    """Measure recall@k per nprobe on `samples` stored rows; return the manifest's "calibration" entry."""
    t0 = time.perf_counter()
    held_out = _held_out(index, samples, k, seed)
    if held_out is None:
        return {"target_recall": target, "nprobe": 0, "curve": [], "samples": 0}
    out = _curve(index, held_out, target, k, ladder, SearchParams())
    log.info("calibrated nprobe %d for recall@%d %.3f on %d samples (%.1f s)", out["nprobe"], k, target,
             out["samples"], time.perf_counter() - t0)
    return {**out, "seconds": round(time.perf_counter() - t0, 2)}


def calibrate_rerank(index, target: float, eps_ladder, *, samples: int = 500, k: int = 10, seed: int = 0,
                     ladder=LADDER) -> dict:
    """Calibrate nprobe at each rerank_eps of `eps_ladder` in turn (on the same samples and exact answers) until
    a curve reaches `target`: the entry of the first that does, or of the last, with its "rerank_eps" and the
    best recall each tried eps reached ("eps_tried"). For a path whose candidates come from estimates (the
    scan tier: too few code bytes cap the recall of a narrow re-rank at any nprobe)."""
    t0 = time.perf_counter()
    held_out = _held_out(index, samples, k, seed)
    if held_out is None:
        return {"target_recall": target, "nprobe": 0, "curve": [], "samples": 0, "rerank_eps": eps_ladder[0]}
    tried = []
    for eps in eps_ladder:
        out = {**_curve(index, held_out, target, k, ladder, SearchParams(rerank_eps=eps)), "rerank_eps": eps}
        tried.append([eps, max(r for _, r in out["curve"])])
        if reaches_target(out):
            break
    log.info("calibrated nprobe %d, rerank_eps %g for recall@%d %.3f on %d samples (%.1f s)", out["nprobe"],
             out["rerank_eps"], k, target, out["samples"], time.perf_counter() - t0)
    return {**out, "eps_tried": tried, "seconds": round(time.perf_counter() - t0, 2)}


def _held_out(index, samples: int, k: int, seed: int):
    """(rows, their queries (moved_off), the queries' exact top-k without the rows), or None for an index
    with nothing to measure."""
    live = np.nonzero(index.live_mask())[0]
    rng = np.random.default_rng([seed, 17])
    rows = np.sort(rng.choice(live, min(samples, len(live)), replace=False)) if len(live) else live
    if len(rows) == 0 or index.head_count() == 0:
        return None
    queries = moved_off(index, index.stored_vectors(rows), rows, rng)
    return rows, queries, exact_neighbours(index.stored_matrix(), queries, rows, k, index.metric)


def moved_off(index, stored: np.ndarray, rows: np.ndarray, rng) -> np.ndarray:
    """Each sampled row moved in a random direction by MOVE times its distance to its nearest other row (as the
    index finds it at a wide nprobe; a farther one only moves it more). A stored row is an easier query than a
    new point of the same data, because the index was built around it: unmoved, the samples scored 0.7 points
    above 2,000 fresh queries at 1M and 1.8 above them at 10M, so a calibration that cleared 0.90 on them served
    0.899. Moved by 0.7, the curve matched the fresh queries within 0.4 points at 10M and was 0.4-0.9 below
    them at 1M (docs/benchmarks.md, "Calibration queries moved off their rows")."""
    p = SearchParams(nprobe=min(MOVE_NPROBE, index.head_count())).resolved(2)
    found, _ = index.search_rows(stored, 2, p)
    other = np.array([next((int(f) for f in fs if f >= 0 and f != r), -1) for fs, r in zip(found, rows)])
    d1 = np.zeros(len(rows), np.float32)
    has = other >= 0
    if has.any():
        d1[has] = np.linalg.norm(index.stored_vectors(other[has]) - stored[has], axis=1)
    step = rng.standard_normal(stored.shape).astype(np.float32)
    step *= (MOVE * d1 / np.maximum(np.linalg.norm(step, axis=1), 1e-12))[:, None]
    queries = (stored + step).astype(np.float32)
    if index.metric is Metric.COSINE:  # the stored form of a cosine vector is unit length
        queries /= np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    return queries


def _curve(index, held_out, target: float, k: int, ladder, params: SearchParams) -> dict:
    """Recall per nprobe of the ladder with `params`' other knobs, up to the target and two points beyond."""
    rows, queries, truth = held_out
    curve, margins, chosen, beyond = [], [], None, 0
    for nprobe in ladder:  # up to the target, then two more points for searches that ask for more
        nprobe = min(nprobe, index.head_count())
        found, _ = index.search_rows(queries, k + 1, params.replace(nprobe=nprobe).resolved(k + 1))
        found = np.array([f[f != r][:k] for f, r in zip(found, rows)])
        hits = _hits(found, truth)
        r, m = float(np.mean(hits)), round(float(margin_of(hits)), 4)
        curve.append([int(nprobe), round(r, 4)])
        margins.append(m)
        if chosen is None and r >= target + m:
            chosen = nprobe
        elif chosen is not None:
            beyond += 1
        if beyond >= 2 or nprobe >= index.head_count() or r >= 0.999:
            break
    chosen = chosen if chosen is not None else curve[-1][0]
    return {"target_recall": target, "nprobe": int(chosen), "curve": curve, "margins": margins,
            "samples": int(len(rows)), "k": k}


def reaches_target(calibration: dict | None) -> bool:
    """Whether a calibration's curve reached its own target recall (by its margin, as `calibrate` chooses): True
    when it had no target or measured nothing (an empty index). A curve that never reached it means the path it
    was measured through cannot deliver the target at any nprobe it tried."""
    if not calibration or not calibration.get("target_recall") or not calibration.get("curve"):
        return True
    target = calibration["target_recall"]
    return any(r >= target + m for (_, r), m in zip(calibration["curve"], _margins(calibration)))


def nprobe_for(calibration: dict | None, target: float | None, fallback: int) -> int:
    """The calibrated nprobe: for the build's target (target None/0) or the smallest measured nprobe whose
    recall reached `target` (the largest measured if none did); `fallback` without a calibration."""
    if not calibration or not calibration.get("curve"):
        return fallback
    if not target:
        return int(calibration["nprobe"]) or fallback
    for (nprobe, r), m in zip(calibration["curve"], _margins(calibration)):
        if r >= target + m:
            return int(nprobe)
    return int(calibration["curve"][-1][0]) * (2 if target > calibration["curve"][-1][1] else 1)
