"""Acknowledged vectors not yet in any posting: kept in RAM and searched exactly (read-your-writes).

The rows live in one append-only buffer. Writers append past the end, the maintenance thread drops chunks (one
per applied upsert) from the front once their rows are in postings, and a search works on an immutable view of
[front, end): no lock is held while scanning, and no copy is made (the buffer region a view covers is never
written again; growing allocates a new buffer). Searches read the memtable *before* the index snapshot: a row
leaving the memtable is already in the postings, so it is never missed (and a row seen twice is deduplicated).

Each row is filed under a head when it is written (its nearest live head, -1 before the index has heads), so
that a search scans only the unindexed rows of the heads it probes (plus those of heads retired since, those
filed before the query's nearest head existed, and the unfiled ones), as it scans only the probed postings: tens of thousands of rows waiting for indexing no longer
cost every search a full scan (issue 13). A small memtable is scanned whole.
"""
from __future__ import annotations

import threading
from collections import deque
from typing import NamedTuple

import numpy as np

from index.kernels import small_exact_topk
from index.rowstate import DELETED
from index.types import HeadProbe, Metric

SMALL = 4096  # rows x queries up to which the memtable is scanned by a compiled loop instead of numpy
# Queries up to which the compiled loop scans the memtable whatever its size: it runs without the GIL and
# without BLAS's threads, which on a busy machine cost a single search milliseconds (issue 13); BLAS's matrix
# product wins only for batches of queries.
KERNEL_QUERIES = 8
_NO_HEADS, _NO_PROBES, _NO_NEAREST = np.zeros((0, 2), np.int64), np.zeros((0, 0), np.int64), np.zeros(0, np.int64)
_NO_RETIRED = np.zeros(0, np.bool_)


class MemView(NamedTuple):
    """An immutable snapshot of the memtable."""
    rows: np.ndarray      # int64 [n]
    vectors: np.ndarray   # float32 [n, dim]
    sq_norms: np.ndarray  # float32 [n], for the L2 expansion
    chunks: int           # number of upsert chunks in the view
    heads: np.ndarray     # int64 [n, 2], where each row was filed (MutableSpannIndex.home_heads; -1: nowhere)

    def __len__(self) -> int:
        return len(self.rows)


_EMPTY = MemView(np.zeros(0, np.int64), np.zeros((0, 0), np.float32), np.zeros(0, np.float32), 0,
                 np.zeros((0, 2), np.int64))


class Memtable:
    def __init__(self):
        self._lock = threading.Lock()
        self._rows = self._vecs = self._norms = self._heads = None
        self._front = self._end = 0
        self._chunk_lens: deque[int] = deque()
        self._view = _EMPTY

    def add(self, rows: np.ndarray, vectors: np.ndarray, heads: np.ndarray | None = None) -> None:
        """Append rows (and where each is filed, [n, 2] as MutableSpannIndex.home_heads gives it; None:
        nowhere, scanned by every search)."""
        rows = np.asarray(rows, np.int64)
        vectors = np.ascontiguousarray(vectors, np.float32)
        n = len(rows)
        heads = np.full((n, 2), -1, np.int64) if heads is None else np.asarray(heads, np.int64).reshape(n, 2)
        norms = (vectors * vectors).sum(1, dtype=np.float32)
        with self._lock:
            if self._rows is None or self._end + n > len(self._rows):
                self._grow(n, vectors.shape[1])
            e = self._end
            self._rows[e: e + n], self._vecs[e: e + n], self._norms[e: e + n] = rows, vectors, norms
            self._heads[e: e + n] = heads
            self._end = e + n
            self._chunk_lens.append(n)
            self._publish()

    def _grow(self, n: int, dim: int) -> None:
        """A new buffer holding the live rows: views of the old one stay valid (it is never written again)."""
        live = self._end - self._front
        cap = max(1024, 2 * (live + n))
        rows, vecs, norms = np.empty(cap, np.int64), np.empty((cap, dim), np.float32), np.empty(cap, np.float32)
        heads = np.empty((cap, 2), np.int64)
        if live:
            f, e = self._front, self._end
            rows[:live], vecs[:live], norms[:live] = self._rows[f:e], self._vecs[f:e], self._norms[f:e]
            heads[:live] = self._heads[f:e]
        self._rows, self._vecs, self._norms, self._heads = rows, vecs, norms, heads
        self._front, self._end = 0, live

    def _publish(self) -> None:
        f, e = self._front, self._end
        self._view = (MemView(self._rows[f:e], self._vecs[f:e], self._norms[f:e], len(self._chunk_lens),
                              self._heads[f:e]) if e > f else _EMPTY)

    def snapshot(self) -> MemView:
        return self._view

    def oldest(self, max_rows: int) -> tuple[int, np.ndarray, np.ndarray]:
        """(number of chunks, their rows, their vectors) from the front: at least one chunk, about max_rows rows."""
        with self._lock:
            taken = total = 0
            for n in self._chunk_lens:
                if taken and total + n > max_rows:
                    break
                taken, total = taken + 1, total + n
            view = self._view
        return taken, view.rows[:total], view.vectors[:total]

    def drop_front(self, n_chunks: int) -> None:
        with self._lock:
            for _ in range(n_chunks):
                self._front += self._chunk_lens.popleft()
            self._publish()

    def rows(self) -> np.ndarray:
        return self._view.rows

    def __len__(self) -> int:
        return len(self._view)


def search_exact(view: MemView, qs: np.ndarray, k: int, metric: Metric, state: np.ndarray,
                 allow: np.ndarray | None, probe: HeadProbe | None = None, retired: np.ndarray | None = None,
                 scan_all_rows: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k over the memtable rows, in kernel distances (squared L2 or -IP). Padded with -1 / inf.

    With `probe` (what the index's head search chose per query) and `retired` (bool per posting, read after
    the probe), a memtable of more than `scan_all_rows` rows searched by a few queries is scanned only where
    its rows were filed under a probed, retired or unknown head, or before the query's nearest head existed
    (see the module docstring); otherwise every row."""
    nq = len(qs)
    rows, vecs = view.rows, view.vectors
    if len(rows) == 0:
        return np.full((nq, 0), -1, np.int64), np.full((nq, 0), np.inf, np.float32)
    dead = (state[rows] & DELETED) != 0
    if allow is not None:
        dead |= allow[rows] == 0
    n_ok = len(rows) - int(dead.sum())
    if n_ok == 0:
        return np.full((nq, 0), -1, np.int64), np.full((nq, 0), np.inf, np.float32)
    if len(rows) * nq <= SMALL or nq <= KERNEL_QUERIES:  # one compiled loop beats a dozen numpy calls
        kk = min(k, n_ok)
        out_r, out_d = np.empty((nq, kk), np.int64), np.empty((nq, kk), np.float32)
        by_head = probe is not None and retired is not None and len(rows) > scan_all_rows
        small_exact_topk(vecs, rows, dead, np.ascontiguousarray(qs, np.float32), kk, metric is Metric.L2,
                         out_r, out_d, view.heads if by_head else _NO_HEADS,
                         np.asarray(probe.postings, np.int64) if by_head else _NO_PROBES,
                         np.asarray(probe.nearest, np.int64) if by_head else _NO_NEAREST,
                         np.asarray(retired, np.bool_) if by_head else _NO_RETIRED)
        return out_r, out_d
    ip = qs @ vecs.T
    d = ((qs * qs).sum(1)[:, None] - 2 * ip + view.sq_norms[None, :]) if metric is Metric.L2 else -ip
    d[:, dead] = np.inf  # masked, not copied out: the view may hold tens of MB
    kk = min(k, n_ok)
    part = np.argpartition(d, kk - 1, axis=1)[:, :kk] if kk < len(rows) else np.tile(np.arange(len(rows)), (nq, 1))
    if metric is Metric.L2:  # the expansion above loses precision; recompute the winners directly
        pd = ((vecs[part] - qs[:, None, :]) ** 2).sum(-1)
    else:
        pd = np.take_along_axis(d, part, 1)
    order = np.argsort(pd, axis=1, kind="stable")
    return rows[np.take_along_axis(part, order, 1)], np.take_along_axis(pd, order, 1).astype(np.float32)
