"""Exact (brute-force) search: the oracle every approximate path is tested against."""
from __future__ import annotations

import faiss
import numpy as np

from index.distance import as_matrix, prepare_base
from index.types import Metric


class FlatIndex:
    """Exact top-k over float32 vectors with vdb's metric conventions and external ids."""

    def __init__(self, vectors, metric: str | Metric = "l2", ids=None, *, prepared: bool = False):
        self.metric = Metric.parse(metric)
        x = as_matrix(vectors)
        self.vectors = x if prepared else prepare_base(x, self.metric)
        self.dim = x.shape[1]
        self.ids = np.arange(len(x), dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
        kind = faiss.METRIC_L2 if self.metric is Metric.L2 else faiss.METRIC_INNER_PRODUCT
        self._index = faiss.IndexFlat(self.dim, kind)
        self._index.add(self.vectors)

    def __len__(self) -> int:
        return len(self.vectors)

    def search(self, queries, k: int = 10):
        """Exact top-k: (ids, distances), [nq, k] or [k] for one query, padded with -1 / inf."""
        single = np.ndim(queries) == 1
        q = prepare_base(as_matrix(queries, self.dim, name="queries"), self.metric)
        kk = min(k, len(self.vectors))
        d, rows = self._index.search(q, kk)
        if self.metric is Metric.IP:
            d = -d
        elif self.metric is Metric.COSINE:
            d = 1.0 - d
        ids = np.where(rows >= 0, self.ids[np.maximum(rows, 0)], -1)
        if kk < k:
            ids = np.pad(ids, ((0, 0), (0, k - kk)), constant_values=-1)
            d = np.pad(d, ((0, 0), (0, k - kk)), constant_values=np.inf)
        d = d.astype(np.float32)
        return (ids[0], d[0]) if single else (ids, d)


def recall_per_query(found: np.ndarray, truth: np.ndarray, k: int) -> np.ndarray:
    """Recall@k per query: the fraction of the exact top-k ids (-1 = none) found in the first k results."""
    f, t = np.atleast_2d(found)[:, :k], np.atleast_2d(truth)[:, :k]
    valid_t = t >= 0
    match = (f[:, :, None] == t[:, None, :]) & valid_t[:, None, :] & (f >= 0)[:, :, None]
    hits = match.any(axis=1).sum(axis=1)
    denom = valid_t.sum(axis=1)
    return np.where(denom > 0, hits / np.maximum(denom, 1), 1.0)


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean recall@k over the queries (see recall_per_query): the one definition every test and tool uses."""
    return float(recall_per_query(found, truth, k).mean())
