"""Where cached queries are kept so that finding the nearest one is cheap.

Queries are bucketed by their nearest of up to N_BUCKETS head vectors (`Bucketing`), and the keys of one
bucket form one matrix (`KeyMatrix`), so a lookup is one compiled pass over a few hundred rows.
"""
from __future__ import annotations

import numpy as np

from index.distance import head_space
from index.kernels import nearest_key
from index.types import Metric

N_BUCKETS = 256


class Bucketing:
    """The bucket of a query: its nearest of a fixed sample of head vectors (one matrix product per batch)."""

    def __init__(self, metric: Metric):
        self.metric = metric
        self.centroids: np.ndarray | None = None
        self._norms: np.ndarray | None = None

    @property
    def ready(self) -> bool:
        return self.centroids is not None

    def train(self, heads: np.ndarray) -> None:
        pick = np.random.default_rng(0).choice(len(heads), min(N_BUCKETS, len(heads)), replace=False)
        self.centroids = np.ascontiguousarray(heads[np.sort(pick)], dtype=np.float32)
        self._norms = (self.centroids * self.centroids).sum(1)

    def of(self, qs: np.ndarray) -> np.ndarray:
        if self.centroids is None:
            return np.zeros(len(qs), np.int64)
        h = head_space(qs, self.metric) if self.metric is Metric.IP else qs
        return (self._norms[None, :] - 2.0 * (h @ self.centroids.T)).argmin(1)


class KeyMatrix:
    """The keys of one bucket as one matrix: slot, signature id and one float of auxiliary data per key.
    Removal marks a row dead; dead rows are compacted away once they are the majority."""

    def __init__(self, dim: int):
        self.keys = np.zeros((8, dim), np.float32)
        self.norms = np.zeros(8, np.float32)
        self.slots = np.full(8, -1, np.int64)
        self.sigs = np.zeros(8, np.int64)
        self.aux = np.zeros(8, np.float32)
        self.n = 0
        self.dead = 0

    def add(self, slot: int, sig: int, key: np.ndarray, aux: float = 0.0) -> None:
        if self.n == len(self.slots):
            grow = len(self.slots)
            self.keys = np.concatenate([self.keys, np.zeros_like(self.keys)])
            self.norms = np.concatenate([self.norms, np.zeros(grow, np.float32)])
            self.slots = np.concatenate([self.slots, np.full(grow, -1, np.int64)])
            self.sigs = np.concatenate([self.sigs, np.zeros(grow, np.int64)])
            self.aux = np.concatenate([self.aux, np.zeros(grow, np.float32)])
        self.keys[self.n], self.norms[self.n] = key, float(key @ key)
        self.slots[self.n], self.sigs[self.n], self.aux[self.n] = slot, sig, aux
        self.n += 1

    def remove(self, slot: int) -> None:
        hit = np.nonzero(self.slots[: self.n] == slot)[0]
        if len(hit):
            self.slots[hit[0]] = -1
            self.dead += 1
        if self.dead > 16 and self.dead * 2 > self.n:
            keep = np.nonzero(self.slots[: self.n] >= 0)[0]
            m = len(keep)
            self.keys[:m], self.norms[:m] = self.keys[keep], self.norms[keep]
            self.slots[:m], self.sigs[:m], self.aux[:m] = self.slots[keep], self.sigs[keep], self.aux[keep]
            self.slots[m: self.n] = -1
            self.n, self.dead = m, 0

    def nearest(self, q: np.ndarray, qnorm: float, sig: int) -> tuple[int, float, float]:
        """(slot, distance, aux) of the nearest live key with this signature, or (-1, inf, 0)."""
        if self.n == 0:
            return -1, np.inf, 0.0
        i, d2 = nearest_key(self.keys, self.norms, self.slots, self.sigs, self.n, q, qnorm, sig)
        if i < 0:
            return -1, np.inf, 0.0
        return int(self.slots[i]), float(np.sqrt(max(d2, 0.0))), float(self.aux[i])


class BucketedKeys:
    """Keys spread over buckets: add / remove by slot, nearest within one bucket."""

    def __init__(self, dim: int):
        self.dim = dim
        self._buckets: dict[int, KeyMatrix] = {}

    def add(self, bucket: int, slot: int, sig: int, key: np.ndarray, aux: float) -> None:
        b = self._buckets.get(bucket)
        if b is None:
            b = self._buckets[bucket] = KeyMatrix(self.dim)
        b.add(slot, sig, key, aux)

    def remove(self, bucket: int, slot: int) -> None:
        self._buckets[bucket].remove(slot)

    def nearest(self, bucket: int, q: np.ndarray, qnorm: float, sig: int) -> tuple[int, float, float]:
        b = self._buckets.get(bucket)
        return (-1, np.inf, 0.0) if b is None else b.nearest(q, qnorm, sig)

    def clear(self) -> None:
        self._buckets.clear()
