"""The in-RAM index over the heads: faiss HNSW (or a flat scan when there are few heads).

Labels are posting ids (faiss IndexIDMap2), so heads added by splits keep their posting id and a rebuild can
drop retired heads without renumbering. Distances returned are plain (not squared) Euclidean distances in head
space, the quantity the query-aware pruning rule `d(q, c_i) <= (1 + eps) d(q, c_1)` is defined on. For ip and
cosine the heads are unit vectors and the index is searched by inner product; for unit vectors
|q - c| = sqrt(2 - 2 q.c).
"""
from __future__ import annotations

import threading
from contextlib import contextmanager, nullcontext

import faiss
import numpy as np

FLAT_MAX = 4096  # below this many heads an exact scan is as fast as HNSW and exact
READ_CHUNK = 1 << 20  # bytes faiss asks for at a time while it reads a stored head index (from_reader)
_threads: int | None = None


def set_search_threads(n: int | None) -> None:
    """OpenMP threads for head-index calls, in *every* thread that makes them (OpenMP keeps the setting per
    thread, so setting it once in the main thread does not reach server or maintenance threads). None: leave
    faiss's default."""
    global _threads
    _threads = n


def _apply_threads() -> None:
    if _threads is not None:
        faiss.omp_set_num_threads(_threads)


class _OneThread:
    """OpenMP on one thread for the calls inside, then the calling thread's setting back. For one query, where
    faiss has nothing to split across threads but still starts a team: with one of 2 cores busy elsewhere, a
    10M index's head search had p99 7.8 ms on the team against 0.25 ms on one thread (quiet: 0.23 either way;
    tools/benchkit/head_threads.py). Used when no process-wide setting was made (set_search_threads): an
    embedded caller's own faiss calls keep theirs."""

    def __enter__(self):
        self._before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)

    def __exit__(self, *exc):
        faiss.omp_set_num_threads(self._before)


class _ReadWriteLock:
    """Many concurrent searches or one add: faiss indexes are not safe for add during search."""

    def __init__(self):
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextmanager
    def read(self):
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def write(self):
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class HeadIndex:
    def __init__(self, index: faiss.Index, angular: bool, kind: str):
        self.index, self.angular, self.kind = index, angular, kind
        self.changes = 0  # add / remove calls since it was built or read: a checkpoint rewrites it only if > 0
        self._rw = _ReadWriteLock()
        self._inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
        ids = faiss.vector_to_array(index.id_map) if isinstance(index, faiss.IndexIDMap2) else np.arange(index.ntotal)
        # every head added after a search started has an id >= the next_id read before it (ids only grow)
        self.next_id = int(ids.max()) + 1 if len(ids) else 0

    @classmethod
    def build(cls, heads: np.ndarray, *, angular: bool, kind: str = "auto", m: int = 32,
              ef_construction: int = 80, ids: np.ndarray | None = None) -> "HeadIndex":
        dim = heads.shape[1]
        metric = faiss.METRIC_INNER_PRODUCT if angular else faiss.METRIC_L2
        if kind == "flat" or (kind == "auto" and len(heads) <= FLAT_MAX):
            inner, kind = faiss.IndexFlat(dim, metric), "flat"
        elif kind == "hnsw":
            inner = faiss.IndexHNSWFlat(dim, m, metric)
            inner.hnsw.efConstruction = ef_construction
        else:  # auto above FLAT_MAX: the graph over SQ8 head codes, a quarter of the float32 heads' RAM
            inner, kind = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, m, metric), "hnsw_sq8"
            inner.hnsw.efConstruction = ef_construction
            inner.train(np.ascontiguousarray(heads, dtype=np.float32))
        index = faiss.IndexIDMap2(inner)
        ids = np.arange(len(heads), dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
        if len(heads):
            index.add_with_ids(np.ascontiguousarray(heads, dtype=np.float32), ids)
        return cls(index, angular, kind)

    @property
    def size(self) -> int:
        return self.index.ntotal

    def search(self, hq: np.ndarray, n: int, ef_search: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """(plain distances float32 [nq, n], posting ids int64 [nq, n]); missing entries are (inf, -1)."""
        n = max(1, min(n, self.size))
        if self.size == 0:
            return np.full((len(hq), 1), np.inf, np.float32), np.full((len(hq), 1), -1, np.int64)
        _apply_threads()
        with self._rw.read(), _OneThread() if _threads is None and len(hq) == 1 else nullcontext():
            if self.kind != "flat":  # a beam wider than the graph finds nothing more (and faiss takes an int32)
                ef = max(n, min(ef_search, self.size))
                d, ids = self.index.search(hq, n, params=faiss.SearchParametersHNSW(efSearch=ef))
            else:
                d, ids = self.index.search(hq, n)
        d = np.sqrt(np.maximum(2.0 - 2.0 * d, 0.0)) if self.angular else np.sqrt(np.maximum(d, 0.0))
        return np.where(ids < 0, np.inf, d).astype(np.float32), ids

    def add(self, heads: np.ndarray, ids: np.ndarray) -> None:
        _apply_threads()
        with self._rw.write():
            self.index.add_with_ids(np.ascontiguousarray(heads, dtype=np.float32),
                                    np.asarray(ids, dtype=np.int64))
            self.changes += 1
            if len(ids):
                self.next_id = max(self.next_id, int(np.max(ids)) + 1)

    def remove(self, ids: np.ndarray) -> bool:
        """Drop heads by posting id; True if this index kind supports it (flat does, faiss HNSW does not)."""
        if self.kind != "flat":
            return False
        _apply_threads()
        with self._rw.write():
            self.index.remove_ids(faiss.IDSelectorBatch(np.asarray(ids, dtype=np.int64)))
            self.changes += 1
        return True

    def to_bytes(self) -> np.ndarray:
        with self._rw.read():
            return faiss.serialize_index(self.index)

    @classmethod
    def from_bytes(cls, blob: np.ndarray, angular: bool) -> "HeadIndex":
        return cls._of(faiss.deserialize_index(np.ascontiguousarray(blob, dtype=np.uint8)), angular)

    @classmethod
    def from_reader(cls, read, angular: bool) -> "HeadIndex":
        """From `read(n) -> bytes` over to_bytes()'s image (storage.meta read_array_stream): faiss copies it
        into the index as it reads, so the image is never held whole beside the index."""
        return cls._of(faiss.read_index(faiss.PyCallbackIOReader(read, READ_CHUNK)), angular)

    @classmethod
    def _of(cls, index, angular: bool) -> "HeadIndex":
        inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
        kind = "flat" if not isinstance(inner, faiss.IndexHNSW) else \
            "hnsw_sq8" if isinstance(inner, faiss.IndexHNSWSQ) else "hnsw"
        return cls(index, angular, kind)

    def resident_bytes(self) -> int:
        """Bytes the head index keeps in RAM: codes, graph and id map, counted from the structures' sizes (the
        serialized size agrees within bytes; serializing to count it would hold a second copy while opening)."""
        inner = self._inner
        if isinstance(inner, faiss.IndexHNSW):
            hnsw = inner.hnsw
            storage = faiss.downcast_index(inner.storage)
            graph = hnsw.neighbors.size() * 4 + hnsw.offsets.size() * 8 + hnsw.levels.size() * 4
            return int(storage.codes.size() + graph + 8 * self.size)
        return int(inner.codes.size() + 8 * self.size)
