"""Hierarchical balanced k-means: choose the heads (centroids) whose postings SPANN stores.

Posting length drives both search latency and its variance, so the heads must split the data into cells of
even size. The tree is built top down: a node with a target of `t` heads is split into `branching` children
by k-means on a sample (upper levels), and child targets are apportioned to the children's sizes so dense
regions get more heads; a node with t <= leaf_split_max is clustered directly into t cells with a
capacity-constrained assignment (every cell holds at most slack * n / t points), which is what makes the
leaves even.

Each row also learns its nearest head within its leaf (`HeadClustering.owner`): with `BuildParams.leaf_assign`
the closure assignment starts there and looks only at that head's neighbourhood (index/assign.py).
"""
from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import faiss
import numpy as np

from index.kernels import balanced_assign, cluster_means, kmeans_pp_init, sq_dists
from index.types import BuildParams

log = logging.getLogger(__name__)
CHUNK = 65536
BALANCE_SAMPLE = 100_000
SMALL_PROBLEM = 4_000_000  # n * k below which leaves are clustered in numba
GATHER_ROWS = 262_144  # a node this small is gathered once and its children get slices, not gathers of their own
IN_FLIGHT = 8  # leaves per thread gathered and waiting for the pool: bounds the memory they hold


def _kmeans(x: np.ndarray, k: int, seed: int, spherical: bool, niter: int = 12) -> np.ndarray:
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, spherical=spherical, verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=1 << 20)
    km.train(np.ascontiguousarray(x, dtype=np.float32))
    return km.centroids


def _sq_dists(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    d = (x * x).sum(1)[:, None] - 2.0 * (x @ c.T) + (c * c).sum(1)[None, :]
    return np.maximum(d, 0).astype(np.float32)


def _nearest(data, rows: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest centroid of each row of data[rows], gathered in chunks to bound memory."""
    out = np.empty(len(rows), np.int64)
    for s in range(0, len(rows), CHUNK):
        out[s: s + CHUNK] = _nearest_of(_take(data, rows[s: s + CHUNK]), centroids)
    return out


def _nearest_of(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest centroid of each row of x (already gathered)."""
    index = faiss.IndexFlatL2(centroids.shape[1])  # a node's few children: rebuilt per chunk at no cost
    index.add(np.ascontiguousarray(centroids))
    return index.search(x, 1)[1][:, 0]


def _take(data, rows: np.ndarray) -> np.ndarray:
    """Gather rows (ascending, so memmap reads stay sequential-ish) as a float32 copy."""
    return np.ascontiguousarray(data[rows], dtype=np.float32)


def _apportion(sizes: np.ndarray, total: int) -> np.ndarray:
    """Split `total` heads over children in proportion to their sizes (largest remainder), >= 1 if non-empty."""
    nonempty = sizes > 0
    share = sizes / sizes.sum() * total
    t = np.floor(share).astype(np.int64)
    t[nonempty] = np.maximum(t[nonempty], 1)
    t = np.minimum(t, sizes)
    rest = total - t.sum()
    order = np.argsort(-(share - np.floor(share)))
    i = 0
    while rest > 0 and i < 4 * len(order):
        c = order[i % len(order)]
        if t[c] < sizes[c]:
            t[c] += 1
            rest -= 1
        i += 1
    return t


def balanced_leaves(x: np.ndarray, t: int, params: BuildParams, seed: int, spherical: bool) -> np.ndarray:
    """Cluster x [n, dim] into exactly t centroids of near-equal population."""
    if len(x) > BALANCE_SAMPLE:  # the balance is enforced on a sample; all points are assigned later anyway
        pick = np.random.default_rng(seed + 7).choice(len(x), BALANCE_SAMPLE, replace=False)
        x = x[np.sort(pick)]
    n = len(x)
    if t >= n:
        return x.copy()
    if t == 1:
        c = x.mean(0, keepdims=True).astype(np.float32)
        return _unit(c) if spherical else c
    small = n * t <= SMALL_PROBLEM
    if small:  # many tiny leaves: numba beats faiss's per-call overhead by far
        c = kmeans_pp_init(x, t, seed % (2 ** 31))
        c = _lloyd(x, c, spherical, iters=4)
    else:
        sample = x if n <= params.train_samples else x[np.sort(
            np.random.default_rng(seed).choice(n, params.train_samples, replace=False))]
        c = _kmeans(sample, t, seed, spherical)
    capacity = int(np.ceil(params.balance_slack * n / t))
    for _ in range(3):  # alternate balanced assignment and centroid update
        d = sq_dists(x, c) if small else _sq_dists(x, c)
        c = cluster_means(x, balanced_assign(d, capacity), t, c)
        if spherical:
            c = _unit(c)
    return c


def _lloyd(x: np.ndarray, c: np.ndarray, spherical: bool, iters: int) -> np.ndarray:
    for _ in range(iters):
        c = cluster_means(x, sq_dists(x, c).argmin(1), len(c), c)
        if spherical:
            c = _unit(c)
    return c


def _unit(c: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(c, axis=1, keepdims=True)
    return (c / np.where(norms == 0, 1, norms)).astype(np.float32)


@dataclass
class HeadClustering:
    heads: np.ndarray   # float32 [H, dim]
    owner: np.ndarray   # int32 [n] the nearest head of each row among the heads of its leaf (-1: none)


def hierarchical_heads(data, n_heads: int, params: BuildParams, *, spherical: bool,
                       progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Return about `n_heads` head vectors [H, dim] for the rows of `data` (array-like, e.g. a memmap).

    `data` must already be in head space (unit vectors when `spherical`)."""
    return cluster_heads(data, n_heads, params, spherical=spherical, progress=progress, owners=False).heads


def cluster_heads(data, n_heads: int, params: BuildParams, *, spherical: bool,
                  progress: Callable[[int], None] | None = None, owners: bool = True) -> HeadClustering:
    """`hierarchical_heads`, and (with `owners`; else all -1, not computed) the nearest head of every row within
    its leaf.

    Leaves are clustered on a pool of threads (the kernels release the GIL) while the tree is walked; their
    heads are numbered in the order of the walk, so the result does not depend on which thread finished first."""
    n = len(data)
    n_heads = int(min(max(n_heads, 1), n))
    out: list[np.ndarray] = []
    owner = np.full(n, -1, np.int32)  # stays -1 only for a row no leaf took (none: every child with rows gets one)
    threads = max(1, faiss.omp_get_max_threads())
    pending: deque = deque()  # (rows, future of (heads, nearest head in the leaf)), in the order of the walk

    first_head = [0]  # the number the next collected leaf's first head gets

    def collect(limit: int) -> None:
        while len(pending) > limit:
            rows, job = pending.popleft()
            heads, nearest = job.result()
            if nearest is not None:
                owner[rows] = first_head[0] + nearest
            first_head[0] += len(heads)
            out.append(heads)
            if progress:
                progress(len(heads))

    with ThreadPoolExecutor(threads) as pool:
        stack = [(np.arange(n, dtype=np.int64), None, n_heads, params.seed)]
        while stack:
            rows, x, t, seed = stack.pop()
            if t <= params.leaf_split_max or len(rows) <= params.train_samples // 4:
                x = _take(data, rows) if x is None else x
                pending.append((rows, pool.submit(_leaf, x, min(t, len(rows)), params, seed, spherical, owners)))
                collect(IN_FLIGHT * threads)
                continue
            if x is None and len(rows) <= GATHER_ROWS:
                x = _take(data, rows)
            k = min(params.branching, t)
            rng = np.random.default_rng(seed)
            sample_rows = rows if len(rows) <= params.train_samples else np.sort(
                rng.choice(rows, params.train_samples, replace=False))
            sample = _take(data, sample_rows) if x is None else x[np.searchsorted(rows, sample_rows)]
            centroids = _kmeans(sample, k, seed, spherical)
            labels = _nearest(data, rows, centroids) if x is None else _nearest_of(x, centroids)
            sizes = np.bincount(labels, minlength=k)
            targets = _apportion(sizes, t)
            order = np.argsort(labels, kind="stable")  # stable: each child's rows stay ascending
            bounds = np.concatenate([[0], np.cumsum(sizes)])
            for child in range(k):
                if targets[child] == 0:
                    continue
                part = order[bounds[child]: bounds[child + 1]]
                stack.append((rows[part], None if x is None else x[part], int(targets[child]),
                              seed * 31 + child + 1))
            del x, sample
        collect(0)
    heads = np.concatenate(out).astype(np.float32)
    log.info("hierarchical balanced k-means: %d heads for %d vectors", len(heads), n)
    return HeadClustering(heads, owner)


def _leaf(x: np.ndarray, t: int, params: BuildParams, seed: int, spherical: bool, owners: bool):
    """(heads of one leaf, the nearest of them for each row or None when `owners` is off)."""
    heads = balanced_leaves(x, t, params, seed, spherical)
    return heads, _nearest_in_leaf(x, heads) if owners else None


def _nearest_in_leaf(x: np.ndarray, heads: np.ndarray) -> np.ndarray:
    nearest = np.empty(len(x), np.int64)
    for s in range(0, len(x), CHUNK):
        block = x[s: s + CHUNK]
        nearest[s: s + CHUNK] = (sq_dists(block, heads) if len(block) * len(heads) <= SMALL_PROBLEM
                                 else _sq_dists(block, heads)).argmin(1)
    return nearest
