"""The cached entries: candidates of past queries, bounded by bytes, evicted least recently used first.

Not thread-safe: the cache calls it under its lock.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from index.types import Metric
from vdb.cache.buckets import BucketedKeys

ENTRY_OVERHEAD_BYTES = 200  # Python objects around the arrays, counted against the size bound


@dataclass
class Entry:
    sig: int               # signature id: everything besides the query that changes the answer
    key: np.ndarray        # the query, as searched (normalised for cosine)
    bucket: int
    rows: np.ndarray       # K' candidate rows, nearest first
    vecs: np.ndarray       # their vectors (stored form)
    radius: float          # l2/cosine: plain distance of the K'-th candidate; ip: its kernel distance (-score)
    kth: float             # the same for the k-th candidate (the answer's last)

    @property
    def nbytes(self) -> int:
        return self.key.nbytes + self.vecs.nbytes + self.rows.nbytes + ENTRY_OVERHEAD_BYTES


class EntryStore:
    def __init__(self, dim: int, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[int, Entry] = OrderedDict()
        self._keys = BucketedKeys(dim)
        self._next = 0
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def nearest(self, bucket: int, q: np.ndarray, qnorm: float, sig: int) -> tuple[int, float, float]:
        """(slot, distance of its key to q, its k-th distance) of the nearest entry, or (-1, inf, 0)."""
        return self._keys.nearest(bucket, q, qnorm, sig)

    def get(self, slot: int) -> Entry:
        return self._entries[slot]

    def touch(self, slot: int) -> None:
        """Mark the entry in `slot` as the most recently used."""
        self._entries.move_to_end(slot)

    def add(self, e: Entry) -> int:
        """Store an entry; returns how many older entries were evicted to stay within max_bytes."""
        slot = self._next
        self._next += 1
        self._entries[slot] = e
        self._keys.add(e.bucket, slot, e.sig, e.key, e.kth)
        self.bytes += e.nbytes
        evicted = 0
        while self.bytes > self.max_bytes and self._entries:
            self._remove(next(iter(self._entries)))
            evicted += 1
        return evicted

    def balls(self) -> tuple[list[int], np.ndarray, np.ndarray]:
        """(slots, keys [n, dim], radii [n]) of every entry: a snapshot to test new vectors against."""
        slots = list(self._entries)
        if not slots:
            return [], np.zeros((0, 0), np.float32), np.zeros(0, np.float32)
        keys = np.stack([self._entries[s].key for s in slots])
        return slots, keys, np.array([self._entries[s].radius for s in slots], np.float32)

    def discard(self, slots) -> int:
        """Remove the entries of these slots that still exist; returns how many."""
        gone = 0
        for s in slots:
            if s in self._entries:
                self._remove(s)
                gone += 1
        return gone

    def _remove(self, slot: int) -> None:
        e = self._entries.pop(slot)
        self._keys.remove(e.bucket, slot)
        self.bytes -= e.nbytes

    def clear(self) -> None:
        self._entries.clear()
        self._keys.clear()
        self.bytes = 0


def inside_balls(vectors: np.ndarray, keys: np.ndarray, radius: np.ndarray, metric: Metric) -> np.ndarray:
    """Which balls (key, radius) hold at least one of `vectors` (stored form); kernel units for ip."""
    if metric is Metric.IP:
        return (-(vectors @ keys.T) <= radius[None, :]).any(0)
    sq = (vectors * vectors).sum(1)[:, None] - 2 * vectors @ keys.T + (keys * keys).sum(1)[None, :]
    return (np.sqrt(np.maximum(sq, 0)) <= radius[None, :] * (1 + 1e-5) + 1e-6).any(0)
