"""Acknowledged vectors not yet in any posting: kept in RAM and searched exactly (read-your-writes).

The table is a tuple of immutable chunks (one per applied upsert). Writers append a chunk, the maintenance
thread drops chunks from the front once their rows are in postings; a search works on the tuple it read, so
no lock is held while scanning. Searches read the memtable *before* the index snapshot: a row leaving the
memtable is already in the postings, so it is never missed (and a row seen twice is deduplicated).
"""
from __future__ import annotations

import threading

import numpy as np

from index.types import Metric

DELETED = 0x80


class Memtable:
    def __init__(self):
        self._chunks: tuple[tuple[np.ndarray, np.ndarray], ...] = ()
        self._lock = threading.Lock()

    def add(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        with self._lock:
            self._chunks = self._chunks + ((rows, vectors),)

    def snapshot(self) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
        return self._chunks

    def oldest(self, max_rows: int) -> tuple[int, np.ndarray, np.ndarray]:
        """(number of chunks, their rows, their vectors) from the front: at least one chunk, about max_rows rows."""
        chunks = self._chunks
        taken, rows, vecs = 0, [], []
        for r, v in chunks:
            if taken and sum(len(x) for x in rows) + len(r) > max_rows:
                break
            rows.append(r)
            vecs.append(v)
            taken += 1
        if not rows:
            return 0, np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        return taken, np.concatenate(rows), np.concatenate(vecs)

    def drop_front(self, n_chunks: int) -> None:
        with self._lock:
            self._chunks = self._chunks[n_chunks:]

    def rows(self) -> np.ndarray:
        chunks = self._chunks
        return np.concatenate([r for r, _ in chunks]) if chunks else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return sum(len(r) for r, _ in self._chunks)


def search_exact(chunks, qs: np.ndarray, k: int, metric: Metric, state: np.ndarray,
                 allow: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k over the memtable rows, in kernel distances (squared L2 or -IP). Padded with -1 / inf."""
    nq = len(qs)
    if not chunks:
        return np.full((nq, 0), -1, np.int64), np.full((nq, 0), np.inf, np.float32)
    rows = np.concatenate([r for r, _ in chunks])
    vecs = np.concatenate([v for _, v in chunks]) if len(chunks) > 1 else chunks[0][1]
    ok = (state[rows] & DELETED) == 0
    if allow is not None:
        ok &= allow[rows] != 0
    if not ok.all():
        rows, vecs = rows[ok], vecs[ok]
    if len(rows) == 0:
        return np.full((nq, 0), -1, np.int64), np.full((nq, 0), np.inf, np.float32)
    ip = qs @ vecs.T
    d = ((qs * qs).sum(1)[:, None] - 2 * ip + (vecs * vecs).sum(1)[None, :]) if metric is Metric.L2 else -ip
    kk = min(k, len(rows))
    part = np.argpartition(d, kk - 1, axis=1)[:, :kk] if kk < len(rows) else np.tile(np.arange(len(rows)), (nq, 1))
    if metric is Metric.L2:  # the expansion above loses precision; recompute the winners directly
        pd = ((vecs[part] - qs[:, None, :]) ** 2).sum(-1)
    else:
        pd = np.take_along_axis(d, part, 1)
    order = np.argsort(pd, axis=1, kind="stable")
    return rows[np.take_along_axis(part, order, 1)], np.take_along_axis(pd, order, 1).astype(np.float32)
