"""Fusing ranked lists: reciprocal rank fusion (RRF) and a weighted fusion of normalised scores.

Every list is (ids [nq, m] int64 with -1 padding, scores [nq, m] float "higher is better" with -inf padding),
best first. The output is (ids [nq, k], fused scores [nq, k]) best first, -1 / -inf padded.

    rrf:       fused(d) = sum over lists of 1 / (rrf_k + rank(d)), rank 1-based; a list that misses d adds 0.
               (Cormack, Clarke & Buettcher, SIGIR'09; rrf_k = 60 as there.) Only ranks matter, so BM25 scores
               and vector distances need no common scale.
    weighted:  each list's scores are min-max normalised to [0, 1] per query (the best gets 1, the worst 0; a
               list whose scores are all equal gives 1), then fused(d) = sum_i w_i * norm_i(d), a missing d
               adding 0 (Weaviate's "relative score fusion"). With two lists, dense and text, w = (alpha,
               1 - alpha).
Ties are broken by the order in which ids were first met (lists in the order given, best first).
"""
from __future__ import annotations

import numpy as np

RRF_K = 60            # Cormack et al.'s constant
FUSIONS = ("rrf", "weighted")


def rrf(lists, k: int, rrf_k: int = RRF_K) -> tuple[np.ndarray, np.ndarray]:
    """Reciprocal rank fusion of `lists` (see the module docstring)."""
    def contributions(ids, scores):
        ranks = np.arange(1, ids.shape[1] + 1, dtype=np.float64)
        return np.broadcast_to(1.0 / (rrf_k + ranks), ids.shape)
    return _fuse(lists, k, [contributions] * len(lists), [1.0] * len(lists))


def weighted(lists, weights, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Weighted fusion of min-max normalised scores (see the module docstring)."""
    if len(weights) != len(lists):
        raise ValueError(f"{len(lists)} lists but {len(weights)} weights")
    return _fuse(lists, k, [_minmax] * len(lists), list(weights))


def _minmax(ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    valid = ids >= 0
    lo = np.where(valid, scores, np.inf).min(1, keepdims=True)
    hi = np.where(valid, scores, -np.inf).max(1, keepdims=True)
    span = np.where(np.isfinite(hi - lo), hi - lo, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(span > 0, (scores - lo) / np.where(span > 0, span, 1.0), 1.0)
    return np.where(valid, norm, 0.0)


def _fuse(lists, k: int, transforms, weights) -> tuple[np.ndarray, np.ndarray]:
    lists = [(np.asarray(i, np.int64), np.asarray(s, np.float64)) for i, s in lists]
    nq = lists[0][0].shape[0]
    contrib = [w * t(i, s) for (i, s), t, w in zip(lists, transforms, weights)]
    out_ids = np.full((nq, k), -1, np.int64)
    out_scores = np.full((nq, k), -np.inf, np.float64)
    for q in range(nq):
        acc: dict[int, float] = {}
        for (ids, _), c in zip(lists, contrib):
            for d, v in zip(ids[q].tolist(), c[q].tolist()):
                if d >= 0:
                    acc[d] = acc.get(d, 0.0) + v
        if not acc:
            continue
        keys = np.fromiter(acc.keys(), np.int64, len(acc))
        vals = np.fromiter(acc.values(), np.float64, len(acc))
        order = np.argsort(-vals, kind="stable")[:k]  # stable: first-met order breaks ties
        out_ids[q, :len(order)] = keys[order]
        out_scores[q, :len(order)] = vals[order]
    return out_ids, out_scores
