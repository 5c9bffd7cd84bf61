"""The in-RAM index over the heads: faiss HNSW (or a flat scan when there are few heads).

Distances it returns are plain (not squared) Euclidean distances in head space, the quantity the query-aware
pruning rule `d(q, c_i) <= (1 + eps) d(q, c_1)` is defined on. For ip/cosine the heads are unit vectors and the
index is searched by inner product; for unit vectors |q - c| = sqrt(2 - 2 q.c).
"""
from __future__ import annotations

import faiss
import numpy as np

FLAT_MAX = 4096  # below this many heads an exact scan is as fast as HNSW and exact


class HeadIndex:
    def __init__(self, index: faiss.Index, angular: bool):
        self.index, self.angular = index, angular
        self._hnsw = isinstance(index, faiss.IndexHNSW)

    @classmethod
    def build(cls, heads: np.ndarray, *, angular: bool, kind: str = "auto", m: int = 32,
              ef_construction: int = 80) -> "HeadIndex":
        dim = heads.shape[1]
        metric = faiss.METRIC_INNER_PRODUCT if angular else faiss.METRIC_L2
        if kind == "flat" or (kind == "auto" and len(heads) <= FLAT_MAX):
            index = faiss.IndexFlat(dim, metric)
        else:
            index = faiss.IndexHNSWFlat(dim, m, metric)
            index.hnsw.efConstruction = ef_construction
        index.add(np.ascontiguousarray(heads, dtype=np.float32))
        return cls(index, angular)

    @property
    def size(self) -> int:
        return self.index.ntotal

    @property
    def kind(self) -> str:
        return "hnsw" if self._hnsw else "flat"

    def search(self, hq: np.ndarray, n: int, ef_search: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """(plain distances float32 [nq, n], head ids int64 [nq, n]); missing entries are (inf, -1)."""
        n = min(n, self.size)
        if self._hnsw:
            params = faiss.SearchParametersHNSW(efSearch=max(ef_search, n))
            d, ids = self.index.search(hq, n, params=params)
        else:
            d, ids = self.index.search(hq, n)
        d = np.sqrt(np.maximum(2.0 - 2.0 * d, 0.0)) if self.angular else np.sqrt(np.maximum(d, 0.0))
        d = np.where(ids < 0, np.inf, d).astype(np.float32)
        return d, ids

    def add(self, heads: np.ndarray) -> None:
        self.index.add(np.ascontiguousarray(heads, dtype=np.float32))

    def to_bytes(self) -> np.ndarray:
        return faiss.serialize_index(self.index)

    @classmethod
    def from_bytes(cls, blob: np.ndarray, angular: bool) -> "HeadIndex":
        return cls(faiss.deserialize_index(np.ascontiguousarray(blob, dtype=np.uint8)), angular)

    def resident_bytes(self) -> int:
        """Bytes the head index keeps in RAM (its serialized size is a tight estimate)."""
        return int(self.to_bytes().nbytes)
