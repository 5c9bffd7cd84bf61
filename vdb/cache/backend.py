"""What the cache needs from the collection it serves: a narrow port, so the cache never sees the collection's
internals (and tests can run the cache against anything that answers these calls)."""
from __future__ import annotations

from typing import Protocol

import numpy as np

from index.types import Metric


class SearchBackend(Protocol):
    metric: Metric
    dim: int

    def unindexed(self):
        """A snapshot of the acknowledged writes not yet in postings. Taken *before* cached entries are read: a
        row that leaves it meanwhile has already evicted the entries it could change (see on_indexed)."""
        ...

    def row_state(self) -> np.ndarray:
        """The current state byte of every row (index/rowstate.py): deleted rows must never be served."""
        ...

    def filter_allow(self, node, state: np.ndarray) -> np.ndarray:
        """uint8 [rows]: 1 where the row is live and its payload matches the compiled filter `node`."""
        ...

    def merge_unindexed(self, view, q: np.ndarray, k: int, state: np.ndarray, allow, rows: np.ndarray,
                        dists: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Candidates (rows, kernel distances) [1, n] of one prepared query merged exactly with `view`: [1, k]."""
        ...

    def search_rows(self, qs: np.ndarray, k: int, p, node=None, ex=None) -> tuple[np.ndarray, np.ndarray]:
        """The uncached search of prepared queries: (rows, kernel distances) [nq, k], padded -1 / inf."""
        ...

    def to_ext(self, rows: np.ndarray, dists: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows and kernel distances as the API returns them: external ids and the metric's distances."""
        ...

    def vectors_of(self, rows: np.ndarray) -> np.ndarray:
        """Stored-form float32 vectors of rows (checksums verified)."""
        ...

    def head_vectors(self) -> np.ndarray | None:
        """The index's head vectors [heads, dim] (the cache buckets queries by them); None before the first."""
        ...

    def max_vector_norm(self) -> float:
        """The largest norm of any stored vector (the Cauchy-Schwarz factor of the ip certificate)."""
        ...
