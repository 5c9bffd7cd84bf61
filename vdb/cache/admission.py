"""Admission: fill a cache entry only for a query that comes back (TinyLFU's doorkeeper, for vectors).

A first sighting leaves a *ghost* (the query, no candidates) with the radius within which a returning query
counts as the same one. A query that lands within a ghost's radius, and within the distance at which recent
fills could certify a hit at all, is admitted: the cache then searches wider once and keeps the candidates.
A stream with no repeats therefore pays no fills. Not thread-safe: the cache calls it under its lock.
"""
from __future__ import annotations

from collections import OrderedDict, deque

import numpy as np

from vdb.cache.buckets import BucketedKeys

MIN_MARGINS = 16  # fills observed before their median margin replaces the ghosts' own radii


class Doorkeeper:
    def __init__(self, dim: int, max_ghosts: int):
        self.max_ghosts = max_ghosts
        self._ghosts: OrderedDict[int, int] = OrderedDict()  # ghost slot -> bucket, oldest first
        self._keys = BucketedKeys(dim)
        self._next = 0
        # median of (radius - k-th distance) over recent fills: the bound at delta = 0, i.e. how far a returning
        # query may be for a fill to be able to certify it
        self._margins: deque[float] = deque(maxlen=256)
        self.certifiable = np.inf

    def __len__(self) -> int:
        return len(self._ghosts)

    def remember(self, q: np.ndarray, bucket: int, sig: int, radius: float) -> None:
        slot = self._next
        self._next += 1
        self._ghosts[slot] = bucket
        self._keys.add(bucket, slot, sig, q, radius)
        while len(self._ghosts) > self.max_ghosts:
            old, b = self._ghosts.popitem(last=False)
            self._keys.remove(b, old)

    def admit(self, q: np.ndarray, qnorm: float, bucket: int, sig: int) -> bool:
        """True (and the ghost is consumed) if q returns within a ghost's radius."""
        slot, delta, radius = self._keys.nearest(bucket, q, qnorm, sig)
        if slot < 0 or delta > min(radius, self.certifiable):
            return False
        self._keys.remove(bucket, slot)
        del self._ghosts[slot]
        return True

    def learn(self, margin: float) -> None:
        """A fill's certifiable margin (its radius minus its k-th distance, in units of delta)."""
        self._margins.append(margin)
        if len(self._margins) >= MIN_MARGINS:
            self.certifiable = float(np.median(self._margins))

    def clear(self) -> None:
        self._ghosts.clear()
        self._keys.clear()
