"""Fusing ranked lists: reciprocal rank fusion (RRF) and a weighted fusion of normalised scores.

Every list is (ids [nq, m] int64 with -1 padding, scores [nq, m] float "higher is better" with -inf padding),
best first. The output is (ids [nq, k], fused scores [nq, k]) best first, -1 / -inf padded.

    rrf:       fused(d) = sum over lists of 1 / (rrf_k + rank(d)), rank 1-based; a list that misses d adds 0.
               (Cormack, Clarke & Buettcher, SIGIR'09; rrf_k = 60 as there.) Only ranks matter, so BM25 scores
               and vector distances need no common scale. Entries of one list with equal scores (within
               TIE_RTOL: float32 distances of one vector computed by two kernels differ in the last bit) share
               the best rank of their group (1, 2, 2, 4): the order a search happens to give tied entries
               (duplicate documents have equal distances, and the cache and the index order them differently)
               must not change the fused scores.
    weighted:  each list's scores are min-max normalised to [0, 1] per query (the best gets 1, the worst 0; a
               list whose scores are all equal gives 1), then fused(d) = sum_i w_i * norm_i(d), a missing d
               adding 0 (Weaviate's "relative score fusion"). With two lists, dense and text, w = (alpha,
               1 - alpha).
Fused ties are broken by the smaller id, so the answer does not depend on the order of tied entries either.
"""
from __future__ import annotations

import numpy as np

RRF_K = 60            # Cormack et al.'s constant
FUSIONS = ("rrf", "weighted")
TIE_RTOL = 1e-6       # scores this close (relative, at least 1e-6 absolute) are equal: float32's precision is 6e-8


def rrf(lists, k: int, rrf_k: int = RRF_K) -> tuple[np.ndarray, np.ndarray]:
    """Reciprocal rank fusion of `lists` (see the module docstring)."""
    def contributions(ids, scores):
        return 1.0 / (rrf_k + _tied_ranks(scores))
    return _fuse(lists, k, [contributions] * len(lists), [1.0] * len(lists))


def weighted(lists, weights, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Weighted fusion of min-max normalised scores (see the module docstring)."""
    if len(weights) != len(lists):
        raise ValueError(f"{len(lists)} lists but {len(weights)} weights")
    return _fuse(lists, k, [_minmax] * len(lists), list(weights))


def tied(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Whether scores a and b are equal for ranking (TIE_RTOL); -inf padding ties only with itself."""
    with np.errstate(invalid="ignore"):
        close = np.abs(a - b) <= TIE_RTOL * np.maximum(1.0, np.maximum(np.abs(a), np.abs(b)))
    return close | (a == b)


def cut_after_ties(ids: np.ndarray, scores: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """The best-first lists cut to `depth` entries, plus the entries after it that tie with the last kept one
    (-1 / -inf padded): which members of a tied group a search returned first must not decide which are fused."""
    ids, scores = np.array(ids, np.int64), np.array(scores, np.float64)
    if ids.shape[1] <= depth:
        return ids, scores
    keep = np.zeros(ids.shape, bool)
    keep[:, :depth] = True
    if depth > 0:
        last = scores[:, depth - 1: depth]
        keep[:, depth:] = np.logical_and.accumulate(tied(last, scores[:, depth:]) & (ids[:, depth:] >= 0), axis=1)
    return np.where(keep, ids, -1), np.where(keep, scores, -np.inf)


def _tied_ranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks of best-first rows of scores, equal neighbours sharing the first one's rank."""
    nq, m = scores.shape
    if m == 0:
        return np.zeros((nq, 0), np.float64)
    pos = np.broadcast_to(np.arange(m), (nq, m))
    starts = np.concatenate([np.ones((nq, 1), bool), ~tied(scores[:, :-1], scores[:, 1:])], axis=1)
    return np.maximum.accumulate(np.where(starts, pos, 0), axis=1).astype(np.float64) + 1.0


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
        order = np.lexsort((keys, -vals))[:k]  # best fused score first, the smaller id among equals
        out_ids[q, :len(order)] = keys[order]
        out_scores[q, :len(order)] = vals[order]
    return out_ids, out_scores
