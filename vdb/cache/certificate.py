"""The arithmetic that makes a cache hit provably right (or counts how doubtful it is).

An entry keeps, for a past query q', the K' best candidates the index returned and R, the distance of the
K'-th. For a new query q at distance delta = |q - q'|, every indexed vector outside the cached set is at least
R - delta from q (triangle inequality). For inner product, -q.x moves by at most delta * max|x| between q' and q
(Cauchy-Schwarz), so the bound is R - delta * max|x| on -q.x itself. A cached candidate re-scored exactly against
q whose distance is within that bound cannot be beaten by anything outside the set: if the k best are all
within it, the top-k is certified.

Distances here are "geometry" units: plain Euclidean for l2 and cosine (unit vectors: |a - b| = sqrt(2 - 2 a.b)),
-dot for ip. The kernels work in squared L2 / -dot ("kernel" units).
"""
from __future__ import annotations

import json

import numpy as np

from index.types import Metric


def kernel_distances(vecs: np.ndarray, q: np.ndarray, metric: Metric) -> np.ndarray:
    """Kernel distances (squared l2, or -dot for ip and cosine) of vecs [n, dim] to q [dim]."""
    if metric is Metric.L2:
        return ((vecs - q) ** 2).sum(1)
    return -(vecs @ q)


def geometry(kernel: np.ndarray, metric: Metric) -> np.ndarray:
    """Kernel distances in the units of the certificate (see the module docstring)."""
    if metric is Metric.L2:
        return np.sqrt(np.maximum(kernel, 0))
    if metric is Metric.COSINE:
        return np.sqrt(np.maximum(2.0 + 2.0 * kernel, 0))
    return kernel


def bound(radius: float, delta: float, metric: Metric, max_norm: float) -> float:
    """How far (in geometry units) a cached candidate may be from q for nothing outside the set to beat it."""
    if metric is Metric.IP:
        return radius - delta * max_norm
    return radius - delta


def doubtful_count(sorted_geometry: np.ndarray, limit: float) -> int:
    """How many of the k best re-scored candidates lie beyond the bound (0: a certified answer)."""
    return int((sorted_geometry > limit).sum())


def admission_radius(kernel_d: np.ndarray, metric: Metric) -> float | None:
    """About the distance at which a later query could be certified by a fill at this query: half the spread of
    its answer (None if the answer had fewer than two results)."""
    geo = geometry(kernel_d[np.isfinite(kernel_d)], metric)
    if len(geo) < 2:
        return None
    return float(geo[-1] - geo[0]) / 2


def signature(k: int, p, filter_spec) -> str:
    """Everything besides the query that changes the answer (protos are never keys: plain JSON is)."""
    return json.dumps([k, p.nprobe, round(p.eps, 6), p.rerank_k, p.ef_search, filter_spec], sort_keys=True)
