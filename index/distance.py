"""Metric conventions, input validation and exact distances (numpy)."""
from __future__ import annotations

import numpy as np

from index.errors import InvalidVectorsError
from index.types import Metric


def as_matrix(x, dim: int | None = None, *, name: str = "vectors") -> np.ndarray:
    """float32 C-contiguous [n, dim]; accepts one vector [dim]. Rejects bad shapes, NaN and Inf."""
    try:
        a = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise InvalidVectorsError(f"{name} must be numeric: {e}") from None
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise InvalidVectorsError(f"{name} must be a 2-D array [n, dim], got shape {a.shape}")
    if a.shape[0] == 0:
        raise InvalidVectorsError(f"{name} is empty")
    if dim is not None and a.shape[1] != dim:
        raise InvalidVectorsError(f"{name} have dimension {a.shape[1]}, the index has dimension {dim}")
    if a.shape[1] == 0:
        raise InvalidVectorsError(f"{name} have dimension 0")
    if not np.isfinite(a).all():
        bad = int(np.nonzero(~np.isfinite(a).all(axis=1))[0][0])
        raise InvalidVectorsError(f"{name} contain NaN or Inf (first at row {bad})")
    return np.ascontiguousarray(a)


def normalize(a: np.ndarray, *, allow_zero: bool = False, name: str = "vectors") -> np.ndarray:
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    zero = norms[:, 0] == 0
    if zero.any():
        if not allow_zero:
            raise InvalidVectorsError(f"{name} row {int(np.nonzero(zero)[0][0])} is all zeros: it has no "
                                      f"direction, so cosine similarity is undefined")
        norms[zero] = 1.0
    return (a / norms).astype(np.float32, copy=False)


def prepare_base(a: np.ndarray, metric: Metric) -> np.ndarray:
    """What is stored: cosine vectors are normalised once at ingest, so cosine search is IP search."""
    return normalize(a) if metric is Metric.COSINE else a


def head_space(a: np.ndarray, metric: Metric) -> np.ndarray:
    """Where heads live: raw vectors for l2, the unit sphere for ip/cosine."""
    return normalize(a, allow_zero=True) if metric.angular else a


def exact_distances(q: np.ndarray, x: np.ndarray, metric: Metric) -> np.ndarray:
    """Distances [nq, n] in the returned convention, for *prepared* (stored-form) q and x."""
    if metric is Metric.L2:
        d = (q * q).sum(1)[:, None] - 2 * (q @ x.T) + (x * x).sum(1)[None, :]
        return np.maximum(d, 0).astype(np.float32)
    ip = (q @ x.T).astype(np.float32)
    return (1.0 - ip) if metric is Metric.COSINE else -ip


def from_kernel(d: np.ndarray, metric: Metric) -> np.ndarray:
    """Kernels return squared L2 or negative IP; cosine reports 1 - cos."""
    return (d + 1.0).astype(np.float32) if metric is Metric.COSINE else d
