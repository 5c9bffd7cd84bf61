"""Semantic lookaside cache: near-duplicate queries answered from RAM, certified never wrong or stale.

An entry keeps, for a past query q' and one set of search knobs (top_k, nprobe, eps, rerank_k, filter), the K'
best candidates the index returned (rows, float32 vectors) and R, the distance of the K'-th. For a new query q
at distance d = |q - q'|, every indexed vector outside the cached set is at least R - d from q (triangle
inequality; for inner product, -score moves by at most d * max|x|, Cauchy-Schwarz). So if the k-th best cached
candidate, re-scored exactly against q with deleted rows dropped, is within that bound, the top-k is provably
among the cached candidates: a *certified* hit. The certificate is relative to the K' set, which is itself an
ANN answer: a vector within R of q' that the fill missed is not covered. So fills probe FILL_WIDEN times wider
than the request (nearly exact), and the sampled shadow check measures what remains (`false_hits`: a hit that
was farther than the index's own answer at some rank). With an error budget, an uncertified answer whose
doubtful positions are few enough is served as a *near hit*, counted apart.

Writes never touch the cache on the write path. A hit merges the memtable (acknowledged but unindexed writes)
exactly, as every search does, and when the maintenance thread moves rows into postings it first evicts every
entry whose ball the new vectors fall into (`on_indexed`), before those rows leave the memtable. Fills that
raced an eviction are not stored (epoch check). Deleted rows are dropped when an entry is used.

Lookup is a nearest-neighbour search over cached queries, restricted to the query's bucket (nearest of up to
256 head vectors) so it stays cheap as the cache grows. Eviction is LRU, bounded by bytes.
"""
from __future__ import annotations

import json
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass

import numpy as np

from index.distance import head_space
from index.kernels import nearest_key
from index.rowstate import DELETED
from index.types import Metric
from vdb.engine.collection import merge_topk
from vdb.engine.memtable import search_exact

N_BUCKETS = 256
FILL_WIDEN = 4  # a fill probes this many times the request's nprobe (and eps)


@dataclass
class _Entry:
    sig: str
    key: np.ndarray        # the query, as searched (normalised for cosine)
    bucket: int
    rows: np.ndarray       # K' candidate rows, nearest first
    vecs: np.ndarray       # their vectors (stored form)
    radius: float          # l2/cosine: plain distance of the K'-th candidate; ip: its kernel distance (-score)
    kth: float             # the same for the k-th candidate (the answer's last)
    nbytes: int


class _Bucket:
    """The cached queries of one bucket as one matrix, so a lookup is a single matrix-vector product."""

    def __init__(self, dim: int):
        self.keys = np.zeros((8, dim), np.float32)
        self.norms = np.zeros(8, np.float32)
        self.slots = np.full(8, -1, np.int64)
        self.sigs = np.zeros(8, np.int64)
        self.aux = np.zeros(8, np.float32)  # ghosts: the admission radius; entries: the k-th answer's distance
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


class SemanticCache:
    def __init__(self, metric: Metric, dim: int, max_bytes: int, *, error_budget: float = 0.0,
                 shadow_rate: float = 0.01):
        self.metric, self.dim, self.max_bytes = metric, dim, max_bytes
        self.error_budget, self.shadow_rate = error_budget, shadow_rate
        self._lock = threading.Lock()
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._buckets: dict[int, _Bucket] = {}
        self._ghosts: OrderedDict[int, int] = OrderedDict()  # ghost slot -> bucket (admission doorkeeper)
        self._ghost_buckets: dict[int, _Bucket] = {}
        self._sig_ids: dict[str, int] = {}
        self._sig_memo: dict[tuple, str] = {}
        # The doorkeeper admits a returning query only within the distance at which recent fills could certify
        # a hit (median of radius - k-th distance, i.e. the bound at delta = 0); until 16 fills, its own radius.
        self._margins: deque[float] = deque(maxlen=256)
        self._certifiable = np.inf
        self._centroids: np.ndarray | None = None
        self._centroid_norms: np.ndarray | None = None
        self._next = 0
        self._bytes = 0
        self._epoch = 0
        self._max_norm = 0.0
        self.counters = dict.fromkeys(("lookups", "hits", "near_hits", "misses", "evictions", "invalidations",
                                       "shadow_checks", "false_hits", "not_stored", "admitted"), 0)
        self.max_ghosts = max(64, max_bytes // (4 * dim * 8))

    @classmethod
    def for_collection(cls, collection) -> "SemanticCache":
        s = collection.settings
        cache = cls(collection.metric, collection.dim, int(float(s["cache_mb"]) * (1 << 20)),
                    error_budget=float(s["cache_error_budget"]), shadow_rate=float(s["cache_shadow_rate"]))
        cache.prepare(collection)
        return cache

    def prepare(self, collection) -> None:
        """Buckets from the index heads; for ip, the largest stored norm (the Cauchy-Schwarz factor)."""
        idx = collection.index
        with self._lock:
            if self._centroids is None and idx.bootstrapped:
                heads = idx.files.heads.matrix()[:, : self.dim]
                pick = np.random.default_rng(0).choice(len(heads), min(N_BUCKETS, len(heads)), replace=False)
                self._centroids = np.ascontiguousarray(heads[np.sort(pick)], dtype=np.float32)
                self._centroid_norms = (self._centroids * self._centroids).sum(1)
                self._clear()
            if self.metric is Metric.IP and self._max_norm == 0.0 and idx.n_rows:
                m = idx.files.vectors.matrix()
                for s in range(0, len(m), 1 << 16):
                    block = np.asarray(m[s: s + (1 << 16), : self.dim])
                    self._max_norm = max(self._max_norm, float(np.sqrt((block * block).sum(1).max())))

    # -- the search path ----------------------------------------------------------------------------------
    def search(self, c, qs: np.ndarray, k: int, p, ex, node=None, filter_spec=None):
        """Cached search for prepared queries; returns (ext ids, distances) like Collection.search."""
        if self._centroids is None and c.index.bootstrapped:
            self.prepare(c)
        sig = self._signature(k, p, filter_spec)
        mem = c.memtable.snapshot()  # before the entries are read: see the module docstring
        state = c.index.state
        allow = None
        if node is not None:
            allow = (c._filter_mask(node, len(state)) & ((state & DELETED) == 0)).astype(np.uint8)
        rows = np.full((len(qs), k), -1, np.int64)
        dists = np.full((len(qs), k), np.inf, np.float32)
        with self._lock:
            sig_id = self._sig_ids.setdefault(sig, len(self._sig_ids))
        plain, admitted = [], []
        buckets = self._buckets_of(qs)
        for i, q in enumerate(qs):
            bucket = int(buckets[i])
            qnorm = float(q @ q)
            got = self._lookup(q, qnorm, bucket, sig_id, k, state)
            if got is None:
                (admitted if self._admit(q, qnorm, bucket, sig_id) else plain).append(i)
                continue
            r, d, kind = got
            mr, md = search_exact(mem, q[None, :], k, self.metric, state, allow)
            rows[i], dists[i] = merge_topk(r[None, :], d[None, :], mr, md, k)
            ex.cache = kind
            if self.shadow_rate and self._should_shadow():
                self._shadow(c, q, k, p, rows[i], dists[i], node)
        if plain or admitted:
            ex.cache = "miss" if len(plain) + len(admitted) == len(qs) else ex.cache
        if plain:  # first sighting: answer normally and leave a ghost behind
            everything = len(plain) == len(qs)
            r, d = c.search_rows(qs if everything else qs[plain], k, p, node, ex)
            for j, i in enumerate(plain):
                self._add_ghost(qs[i], int(buckets[i]), sig_id, d[j])
            if everything:
                return c.to_ext(r, d)
            rows[plain], dists[plain] = r, d
        if admitted:  # seen before: search wider once and keep the candidates
            self._fill(c, qs[admitted], buckets[admitted], k, p, sig, rows, dists, admitted, ex, node)
        return c.to_ext(rows, dists)

    def _signature(self, k: int, p, filter_spec) -> str:
        """`_signature`, memoised on the plain knobs (it runs on every lookup; json.dumps costs microseconds)."""
        if filter_spec is not None:
            return _signature(k, p, filter_spec)
        key = (k, p.nprobe, p.eps, p.rerank_k, p.ef_search)
        sig = self._sig_memo.get(key)
        if sig is None:
            if len(self._sig_memo) >= 1024:  # knobs come from requests: keep the memo bounded
                self._sig_memo.clear()
            sig = self._sig_memo[key] = _signature(k, p, None)
        return sig

    def _lookup(self, q: np.ndarray, qnorm: float, bucket: int, sig_id: int, k: int, state: np.ndarray):
        with self._lock:
            self.counters["lookups"] += 1
            b = self._buckets.get(bucket)
            slot, delta, kth = (-1, np.inf, 0.0) if b is None else b.nearest(q, qnorm, sig_id)
            if slot < 0:
                self.counters["misses"] += 1
                return None
            e = self._entries[slot]
            # Certifying needs q's k-th neighbour within bound(delta); if even q''s k-th was farther, that takes
            # q to sit nearer its neighbours than q' did, which a nearby query rarely does. Skipping the re-score
            # then turns a rare hit into a miss, never a wrong answer, and keeps misses cheap.
            if self.error_budget == 0 and self._bound(e, delta) < kth:
                self.counters["misses"] += 1
                return None
            self._entries.move_to_end(slot)
        alive = (state[e.rows] & DELETED) == 0
        vecs, erows = e.vecs[alive], e.rows[alive]
        if len(erows) < k:
            return self._miss()
        kernel = _kernel(vecs, q, self.metric)
        order = np.argsort(kernel, kind="stable")[:k]
        bound = self._bound(e, delta)
        doubtful = int((_geometry(kernel[order], q, self.metric) > bound).sum())
        if doubtful and doubtful > self.error_budget * k:
            return self._miss()
        with self._lock:
            self.counters["hits" if doubtful == 0 else "near_hits"] += 1
        return erows[order], kernel[order].astype(np.float32), ("hit" if doubtful == 0 else "near-hit")

    def _admit(self, q: np.ndarray, qnorm: float, bucket: int, sig_id: int) -> bool:
        """TinyLFU's doorkeeper for vectors: fill an entry only when a query comes back (within the radius its
        first sighting left), so a stream with no repeats pays no fills."""
        with self._lock:
            g = self._ghost_buckets.get(bucket)
            if g is None:
                return False
            slot, delta, radius = g.nearest(q, qnorm, sig_id)
            if slot < 0 or delta > min(radius, self._certifiable):
                return False
            g.remove(slot)
            self._ghosts.pop(slot, None)
            self.counters["admitted"] += 1
            return True

    def _add_ghost(self, q: np.ndarray, bucket: int, sig_id: int, kernel_d: np.ndarray) -> None:
        geo = _geometry(kernel_d[np.isfinite(kernel_d)], q, self.metric)
        if len(geo) < 2:
            return
        radius = float(geo[-1] - geo[0]) / 2  # about the scale at which a later query could be certified
        with self._lock:
            slot = self._next
            self._next += 1
            self._ghosts[slot] = bucket
            g = self._ghost_buckets.get(bucket)
            if g is None:
                g = self._ghost_buckets[bucket] = _Bucket(self.dim)
            g.add(slot, sig_id, q, radius)
            while len(self._ghosts) > self.max_ghosts:
                old, b = self._ghosts.popitem(last=False)
                self._ghost_buckets[b].remove(old)

    def _miss(self):
        with self._lock:
            self.counters["misses"] += 1
        return None

    def _bound(self, e: _Entry, delta: float) -> float:
        """How far (in the metric's geometry) the k-th cached answer may be for the set to be complete."""
        if self.metric is Metric.IP:
            return e.radius - delta * self._max_norm
        return e.radius - delta

    def _fill(self, c, qm: np.ndarray, qbuckets: np.ndarray, k: int, p, sig: str, rows, dists, where, ex,
              node) -> None:
        k_prime = max(4 * k, 20)
        with self._lock:
            epoch = self._epoch
        from index import SearchParams
        # The certificate is only as good as the K' set: a vector within R of q' that the fill missed could be
        # nearer to a later q than every cached candidate. So the fill probes much wider than a normal search
        # (it runs once per admitted query; every hit after it is free).
        nprobe = FILL_WIDEN * p.nprobe
        fill = SearchParams(nprobe, FILL_WIDEN * p.eps, max(p.rerank_k, 4 * k_prime, 64),
                            max(p.ef_search, 2 * nprobe), p.prefetch)
        r, d = c.search_rows(qm, k_prime, fill, node, ex)
        rows[where], dists[where] = r[:, :k], d[:, :k]
        state = c.index.state
        for j, q in enumerate(qm):
            valid = r[j] >= 0
            rr = r[j][valid]
            if len(rr) < k_prime and node is None:  # too few candidates to bound the ball: not cacheable
                continue
            if len(rr) < k:
                continue
            live = (state[rr] & DELETED) == 0
            if not live.all():
                continue
            vecs = c.index.vectors_of(rr)
            # fewer than K' filtered matches means the filter's exact path returned all of them: complete
            radius = float(_geometry(d[j][valid][-1:], q, self.metric)[0]) if len(rr) == k_prime else np.inf
            kth = float(_geometry(d[j][k - 1: k], q, self.metric)[0])
            self._store(_Entry(sig, q.copy(), int(qbuckets[j]), rr, vecs, radius, kth,
                               q.nbytes + vecs.nbytes + rr.nbytes + 200), epoch)

    def _shadow(self, c, q, k, p, rows, dists, node) -> None:
        """Run the hit again without the cache: served must be as near as the index's own answer, rank by rank."""
        r, d = c.search_rows(q[None, :], k, p, node)
        with self._lock:
            self.counters["shadow_checks"] += 1
            valid = np.isfinite(d[0])
            tol = 1e-4 * (1.0 + np.abs(d[0][valid]))
            if (np.asarray(dists)[valid] > d[0][valid] + tol).any():
                self.counters["false_hits"] += 1

    def _should_shadow(self) -> bool:
        with self._lock:
            n = self.counters["hits"] + self.counters["near_hits"]
        return n % max(1, int(round(1 / self.shadow_rate))) == 0

    # -- entries -----------------------------------------------------------------------------------------
    def _buckets_of(self, qs: np.ndarray) -> np.ndarray:
        """The bucket of each query: its nearest of the sampled head vectors (one matrix product per batch)."""
        if self._centroids is None:
            return np.zeros(len(qs), np.int64)
        h = head_space(qs, self.metric) if self.metric is Metric.IP else qs
        return (self._centroid_norms[None, :] - 2.0 * (h @ self._centroids.T)).argmin(1)

    def _store(self, e: _Entry, epoch: int) -> None:
        if e.nbytes > self.max_bytes:
            return
        with self._lock:
            if np.isfinite(e.radius):  # learn how far from a cached query a hit can be certified
                scale = self._max_norm if self.metric is Metric.IP else 1.0  # ip: bound shrinks by delta*max|x|
                self._margins.append((e.radius - e.kth) / max(scale, 1e-12))
                if len(self._margins) >= 16:
                    self._certifiable = float(np.median(self._margins))
            if epoch != self._epoch:  # an eviction ran while this fill searched: it may predate new vectors
                self.counters["not_stored"] += 1
                return
            slot = self._next
            self._next += 1
            self._entries[slot] = e
            sig_id = self._sig_ids[e.sig]
            b = self._buckets.get(e.bucket)
            if b is None:
                b = self._buckets[e.bucket] = _Bucket(self.dim)
            b.add(slot, sig_id, e.key, e.kth)
            self._bytes += e.nbytes
            while self._bytes > self.max_bytes and self._entries:
                old, _ = next(iter(self._entries.items()))
                self._remove(old)
                self.counters["evictions"] += 1

    def _remove(self, slot: int) -> None:
        e = self._entries.pop(slot)
        self._buckets[e.bucket].remove(slot)
        self._bytes -= e.nbytes

    def _clear(self) -> None:
        self._entries.clear()
        self._buckets.clear()
        self._ghosts.clear()
        self._ghost_buckets.clear()
        self._bytes = 0
        self._epoch += 1

    # -- invalidation ------------------------------------------------------------------------------------
    def on_indexed(self, vectors: np.ndarray) -> None:
        """Rows with these (stored-form) vectors are about to leave the memtable for the postings: evict every
        entry whose cached ball they fall into. Called before the rows leave the memtable."""
        if len(vectors) == 0:
            return
        with self._lock:
            self._epoch += 1
            if self.metric is Metric.IP:
                self._max_norm = max(self._max_norm, float(np.sqrt((vectors * vectors).sum(1).max())))
            if not self._entries:
                return
            slots = list(self._entries)
            keys = np.stack([self._entries[s].key for s in slots])
            radius = np.array([self._entries[s].radius for s in slots], np.float32)
        if self.metric is Metric.IP:
            inside = (-(vectors @ keys.T) <= radius[None, :]).any(0)
        else:
            sq = (vectors * vectors).sum(1)[:, None] - 2 * vectors @ keys.T + (keys * keys).sum(1)[None, :]
            inside = (np.sqrt(np.maximum(sq, 0)) <= radius[None, :] * (1 + 1e-5) + 1e-6).any(0)
        with self._lock:
            for slot in np.asarray(slots)[inside]:
                if int(slot) in self._entries:
                    self._remove(int(slot))
                    self.counters["invalidations"] += 1

    def clear(self) -> None:
        with self._lock:
            self._clear()

    def stats(self) -> dict:
        with self._lock:
            out = dict(self.counters)
            served = out["hits"] + out["near_hits"]
            out.update({"enabled": True, "entries": len(self._entries), "bytes": self._bytes,
                        "max_bytes": self.max_bytes, "hit_rate": served / out["lookups"] if out["lookups"] else 0.0,
                        "false_hit_rate": out["false_hits"] / out["shadow_checks"] if out["shadow_checks"] else 0.0,
                        "error_budget": self.error_budget})
        return out


def _signature(k: int, p, filter_spec) -> str:
    """Everything besides the query that changes the answer (protos are never keys: plain JSON is)."""
    return json.dumps([k, p.nprobe, round(p.eps, 6), p.rerank_k, p.ef_search, filter_spec], sort_keys=True)


def _kernel(vecs: np.ndarray, q: np.ndarray, metric: Metric) -> np.ndarray:
    """Kernel distances (squared l2 or -dot) of vecs to q."""
    if metric is Metric.L2:
        return ((vecs - q) ** 2).sum(1)
    return -(vecs @ q)


def _geometry(kernel: np.ndarray, q: np.ndarray, metric: Metric) -> np.ndarray:
    """Kernel distances in the units the certificate uses: plain Euclidean for l2 and cosine (unit vectors:
    |a - b| = sqrt(2 - 2 a.b)); -dot itself for ip."""
    if metric is Metric.L2:
        return np.sqrt(np.maximum(kernel, 0))
    if metric is Metric.COSINE:
        return np.sqrt(np.maximum(2.0 + 2.0 * kernel, 0))
    return kernel
