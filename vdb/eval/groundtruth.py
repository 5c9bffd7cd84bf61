"""Exact top-K neighbours per metric (the oracle recall and the funnel are measured against), cached on disk.

Search is faiss flat (through `index.FlatIndex`, so l2 / ip / cosine follow vdb's conventions), chunked over
queries to bound memory. Exact ties (duplicate vectors: kjv has 347 base verses in groups of identical text) are
broken by the lower id, so the top-k and every task metric computed from it are deterministic; faiss's and
numpy's own tie orders are implementation details (the kjv README's 0.451 used numpy argsort's order).

The cache key is the content fingerprint of the (base, queries) arrays searched plus the metric and K:
`<cache>/<fingerprint>-<metric>-k<K>.ids.npy` (+ `.dist.npy`). A cached file for a larger K serves any smaller K
(top-K lists are prefixes of each other).
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np

from index import FlatIndex
from vdb.eval.datasets import array_fingerprint

log = logging.getLogger(__name__)
QUERY_CHUNK = 2048
TIE_MARGIN = 16


def exact_search(base: np.ndarray, queries: np.ndarray, metric: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64 [nq, k], distances float32 [nq, k]) by brute force, nearest first."""
    flat = FlatIndex(base, metric)
    ids = np.empty((len(queries), k), np.int64)
    dists = np.empty((len(queries), k), np.float32)
    for s in range(0, len(queries), QUERY_CHUNK):
        ids[s: s + QUERY_CHUNK], dists[s: s + QUERY_CHUNK] = _search_ties_by_id(flat, queries[s: s + QUERY_CHUNK], k)
    return ids, dists


def _search_ties_by_id(flat: FlatIndex, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k ordered by (distance, id). Fetches k + margin and widens the rows whose k-th distance is still
    tied with the last one fetched, until the tie is resolved or the whole base was fetched."""
    ids = np.empty((len(q), k), np.int64)
    dists = np.empty((len(q), k), np.float32)
    rows, fetch = np.arange(len(q)), min(k + TIE_MARGIN, len(flat))
    while len(rows):
        i, d = flat.search(q[rows], fetch)
        order = np.lexsort((i, d), axis=1)
        i, d = np.take_along_axis(i, order, 1), np.take_along_axis(d, order, 1)
        ids[rows], dists[rows] = i[:, :k], d[:, :k]
        open_ = (d[:, k - 1] == d[:, -1]) & np.isfinite(d[:, -1]) if fetch < len(flat) else np.zeros(len(rows), bool)
        rows, fetch = rows[open_], min(2 * fetch, len(flat))
    return ids, dists


def ground_truth(base: np.ndarray, queries: np.ndarray, metric: str, k: int,
                 cache_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k, read from / written to `cache_dir` when one is given."""
    if cache_dir is None:
        return exact_search(base, queries, metric, k)
    cache = Path(cache_dir)
    key = f"{array_fingerprint(base, queries)}-{metric}"
    hit = _cached(cache, key, k)
    if hit is not None:
        log.debug("ground truth %s k=%d from cache", key, k)
        return hit
    ids, dists = exact_search(base, queries, metric, k)
    _store(cache, f"{key}-k{k}", ids, dists)
    return ids, dists


def _cached(cache: Path, key: str, k: int) -> tuple[np.ndarray, np.ndarray] | None:
    if not cache.is_dir():
        return None
    pattern = re.compile(re.escape(key) + r"-k(\d+)\.ids\.npy$")
    sizes = sorted(int(m.group(1)) for p in cache.iterdir() if (m := pattern.match(p.name)))
    for kk in (s for s in sizes if s >= k):
        try:
            ids = np.load(cache / f"{key}-k{kk}.ids.npy")
            dists = np.load(cache / f"{key}-k{kk}.dist.npy")
        except (OSError, ValueError):
            log.warning("ignoring unreadable ground-truth cache entry %s-k%d", key, kk)
            continue
        return ids[:, :k], dists[:, :k]
    return None


def _store(cache: Path, stem: str, ids: np.ndarray, dists: np.ndarray) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    for suffix, arr in ((".dist.npy", dists), (".ids.npy", ids)):  # ids last: its presence marks a full entry
        tmp = cache / f".{stem}{suffix}.tmp"
        with open(tmp, "wb") as f:
            np.save(f, arr)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, cache / f"{stem}{suffix}")


def distances_of(base: np.ndarray, queries: np.ndarray, ids: np.ndarray, metric: str) -> np.ndarray:
    """Exact distances (vdb's convention: squared l2, -dot, 1 - cos) from each query to the given ids
    [nq, k]; inf where the id is padding (< 0). Used to score results independently of the system's own
    (possibly quantized) distances."""
    ids = np.asarray(ids)
    out = np.empty(ids.shape, np.float32)
    for s in range(0, len(ids), QUERY_CHUNK):
        q = np.asarray(queries[s: s + QUERY_CHUNK], np.float32)
        x = np.asarray(base, np.float32)[np.maximum(ids[s: s + QUERY_CHUNK], 0)]
        out[s: s + QUERY_CHUNK] = _pair_distances(q, x, metric)
    return np.where(ids >= 0, out, np.inf).astype(np.float32)


def _pair_distances(q: np.ndarray, x: np.ndarray, metric: str) -> np.ndarray:
    if metric == "l2":
        return ((x - q[:, None, :]) ** 2).sum(axis=2)
    if metric == "ip":
        return -np.einsum("qkd,qd->qk", x, q)
    qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-30)
    xn = x / np.maximum(np.linalg.norm(x, axis=2, keepdims=True), 1e-30)
    return 1.0 - np.einsum("qkd,qd->qk", xn, qn)
