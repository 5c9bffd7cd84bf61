"""A budgeted cache of posting bytes in RAM: what the memory budget leaves after the index's resident
structures goes to the postings read most, instead of to whatever the kernel's page cache happened to keep.

The cache is one preallocated ring of `budget` bytes, written like a log: a posting read from disk is copied in
at the head, and the oldest entries the head runs over are dropped (first in, first out). One buffer, allocated
once, is what makes the budget hold: caching each posting in its own small numpy array went through malloc, and
with several threads the allocator's per-thread arenas kept freed entries around until a 1 GiB cgroup killed
the process (measured: docs/benchmarks.md). Keys are (posting id, directory offset, record count): a posting moved
by copy on write, or grown in place by an append, is a different entry (the bytes under a key never change).

Thread-safe: `gather` copies the hits out under the same short lock `put` writes under, so a reader never sees
bytes that an admission is overwriting.
"""
from __future__ import annotations

import threading
from collections import deque

import numpy as np


class PostingCache:
    def __init__(self, budget_bytes: int):
        self.budget = max(0, int(budget_bytes))
        self.hits = self.misses = self.evictions = 0
        self._ring = np.empty(self.budget, np.uint8)   # pages become resident as they are first written
        self._head = 0
        self._entries: dict[tuple, tuple[int, int]] = {}   # key -> (start, length)
        self._order: deque[tuple[tuple, int, int]] = deque()  # (key, start, length), oldest first
        self._lock = threading.Lock()

    @property
    def bytes(self) -> int:
        """Bytes held by live entries."""
        return sum(n for _, n in self._entries.values())

    def gather(self, keys: list[tuple]) -> tuple[np.ndarray, np.ndarray]:
        """The cached bytes of `keys`, concatenated: (buffer, start of each key in it, -1 where absent)."""
        starts = np.full(len(keys), -1, np.int64)
        with self._lock:
            found = [(i, self._entries.get(key)) for i, key in enumerate(keys)]
            found = [(i, e) for i, e in found if e is not None]
            out = np.empty(sum(n for _, (_, n) in found), np.uint8)
            pos = 0
            for i, (s, n) in found:
                out[pos: pos + n] = self._ring[s: s + n]
                starts[i] = pos
                pos += n
            self.hits += len(found)
            self.misses += len(keys) - len(found)
        return out, starts

    def put(self, key: tuple, data: np.ndarray) -> None:
        """Copy `data` in at the head, dropping the oldest entries it overwrites; ignored if it alone exceeds
        the budget (or is empty) or the key is already cached."""
        n = int(data.nbytes)
        if n == 0 or n > self.budget:
            return
        with self._lock:
            if key in self._entries:
                return
            if self._head + n > self.budget:   # wrap: the tail of the ring is dropped with what it held
                self._evict_until(self.budget)
                self._head = 0
            self._evict_until(self._head + n)
            self._ring[self._head: self._head + n] = np.asarray(data, np.uint8).reshape(-1)
            self._entries[key] = (self._head, n)
            self._order.append((key, self._head, n))
            self._head += n

    def _evict_until(self, end: int) -> None:
        """Drop the oldest entries that overlap [head, end) (they are always at the front of the order)."""
        while self._order:
            key, s, n = self._order[0]
            if s >= end or s + n <= self._head:
                break
            self._order.popleft()
            if self._entries.get(key) == (s, n):
                del self._entries[key]
                self.evictions += 1

    def __len__(self) -> int:
        return len(self._entries)

    def as_dict(self) -> dict:
        with self._lock:
            return {"budget_bytes": self.budget, "bytes": self.bytes, "entries": len(self._entries),
                    "hits": self.hits, "misses": self.misses, "evictions": self.evictions}
