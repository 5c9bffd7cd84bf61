"""Semantic lookaside cache: near-duplicate queries answered from RAM, certified never wrong or stale.

An entry keeps, for a past query q' and one set of search knobs (top_k, nprobe, eps, rerank_k, filter), the K'
best candidates the index returned. A new query q near q' is answered from them when the certificate
(certificate.py) proves that nothing outside the set can enter the top-k: a *certified* hit. The certificate is
relative to the K' set, which is itself an ANN answer: a vector within R of q' that the fill missed is not
covered. So fills probe FILL_WIDEN times wider than the request (nearly exact), and the sampled shadow check
measures what remains (`false_hits`: a hit that was farther than the index's own answer at some rank). With an
error budget, an uncertified answer whose doubtful positions are few enough is served as a *near hit*, counted
apart.

Writes never touch the cache on the write path. A hit merges the acknowledged but unindexed writes exactly, as
every search does, and when the maintenance thread moves rows into postings it first evicts every entry whose
ball the new vectors fall into (`on_indexed`), before those rows leave the memtable. Fills that raced an
eviction are not stored (epoch check). Deleted rows are dropped when an entry is used.

The parts: buckets.py (where keys live), entries.py (the LRU entries), admission.py (fill only what returns),
certificate.py (the arithmetic), backend.py (what the cache asks of its collection).
"""
from __future__ import annotations

import dataclasses
import threading

import numpy as np

from index.rowstate import is_live
from index.types import Metric
from vdb.cache.admission import Doorkeeper
from vdb.cache.backend import SearchBackend
from vdb.cache.buckets import Bucketing
from vdb.cache.certificate import admission_radius, bound, doubtful_count, geometry, kernel_distances, signature
from vdb.cache.entries import Entry, EntryStore, inside_balls

FILL_WIDEN = 4             # a fill probes this many times the request's nprobe (and eps)
MAX_SIGNATURE_MEMO = 1024  # knobs come from requests: the memo of their signatures stays bounded
COUNTERS = ("lookups", "hits", "near_hits", "misses", "evictions", "invalidations", "shadow_checks",
            "false_hits", "not_stored", "admitted")


class SemanticCache:
    def __init__(self, metric: Metric, dim: int, max_bytes: int, *, error_budget: float = 0.0,
                 shadow_rate: float = 0.01):
        self.metric, self.dim, self.max_bytes = metric, dim, max_bytes
        self.error_budget, self.shadow_rate = error_budget, shadow_rate
        self._lock = threading.Lock()  # guards everything below; no search runs while it is held
        self._entries = EntryStore(dim, max_bytes)
        self._door = Doorkeeper(dim, max_ghosts=max(64, max_bytes // (4 * dim * 8)))
        self._bucketing = Bucketing(metric)
        self._sig_ids: dict[str, int] = {}
        self._sig_memo: dict[tuple, str] = {}
        self._epoch = 0
        self._max_norm = 0.0
        self.counters = dict.fromkeys(COUNTERS, 0)

    @classmethod
    def for_backend(cls, backend: SearchBackend, settings) -> "SemanticCache":
        """A cache sized by the collection settings cache_mb, cache_error_budget and cache_shadow_rate."""
        cache = cls(backend.metric, backend.dim, int(float(settings["cache_mb"]) * (1 << 20)),
                    error_budget=float(settings["cache_error_budget"]),
                    shadow_rate=float(settings["cache_shadow_rate"]))
        cache.prepare(backend)
        return cache

    def prepare(self, backend: SearchBackend) -> None:
        """Buckets from the index heads (once there are heads); for ip, the largest stored norm."""
        heads = backend.head_vectors() if not self._bucketing.ready else None
        norm = backend.max_vector_norm() if self.metric is Metric.IP and self._max_norm == 0.0 else 0.0
        with self._lock:
            if heads is not None and not self._bucketing.ready:
                self._bucketing.train(heads)
                self._clear()
            self._max_norm = max(self._max_norm, norm)

    # -- the search path ----------------------------------------------------------------------------------
    def search(self, backend: SearchBackend, qs: np.ndarray, k: int, p, ex, node=None, filter_spec=None):
        """Cached search for prepared queries; returns (ext ids, distances) like the uncached search."""
        if not self._bucketing.ready:
            self.prepare(backend)
        sig = self._signature(k, p, filter_spec)
        view = backend.unindexed()  # before the entries are read: see the module docstring
        state = backend.row_state()
        allow = backend.filter_allow(node, state) if node is not None else None
        rows = np.full((len(qs), k), -1, np.int64)
        dists = np.full((len(qs), k), np.inf, np.float32)
        with self._lock:
            sig_id = self._sig_ids.setdefault(sig, len(self._sig_ids))
        plain, admitted = [], []
        buckets = self._bucketing.of(qs)
        for i, q in enumerate(qs):
            bucket = int(buckets[i])
            qnorm = float(q @ q)
            got = self._lookup(q, qnorm, bucket, sig_id, k, state)
            if got is None:
                (admitted if self._admit(q, qnorm, bucket, sig_id) else plain).append(i)
                continue
            r, d, kind = got
            rows[i], dists[i] = backend.merge_unindexed(view, q[None, :], k, state, allow, r[None, :], d[None, :])
            ex.cache = kind
            if self.shadow_rate and self._should_shadow():
                self._shadow(backend, q, k, p, dists[i], node)
        if plain or admitted:
            ex.cache = "miss" if len(plain) + len(admitted) == len(qs) else ex.cache
        if plain:  # first sighting: answer normally and leave a ghost behind
            everything = len(plain) == len(qs)
            r, d = backend.search_rows(qs if everything else qs[plain], k, p, node, ex)
            for j, i in enumerate(plain):
                self._add_ghost(qs[i], int(buckets[i]), sig_id, d[j])
            if everything:
                return backend.to_ext(r, d)
            rows[plain], dists[plain] = r, d
        if admitted:  # seen before: search wider once and keep the candidates
            self._fill(backend, qs[admitted], buckets[admitted], k, p, sig_id, rows, dists, admitted, ex, node)
        return backend.to_ext(rows, dists)

    def _signature(self, k: int, p, filter_spec) -> str:
        """`signature`, memoised on the plain knobs (it runs on every lookup; json.dumps costs microseconds)."""
        if filter_spec is not None:
            return signature(k, p, filter_spec)
        key = (k, p.nprobe, p.eps, p.rerank_k, p.ef_search)
        sig = self._sig_memo.get(key)
        if sig is None:
            if len(self._sig_memo) >= MAX_SIGNATURE_MEMO:
                self._sig_memo.clear()
            sig = self._sig_memo[key] = signature(k, p, None)
        return sig

    def _lookup(self, q: np.ndarray, qnorm: float, bucket: int, sig_id: int, k: int, state: np.ndarray):
        with self._lock:
            self.counters["lookups"] += 1
            slot, delta, kth = self._entries.nearest(bucket, q, qnorm, sig_id)
            if slot < 0:
                self.counters["misses"] += 1
                return None
            # Certifying needs q's k-th neighbour within bound(delta); if even q''s k-th was farther, that takes
            # q to sit nearer its neighbours than q' did, which a nearby query rarely does. Skipping the re-score
            # then turns a rare hit into a miss, never a wrong answer, and keeps misses cheap.
            e = self._entries.get(slot)
            limit = bound(e.radius, delta, self.metric, self._max_norm)
            if self.error_budget == 0 and limit < kth:
                self.counters["misses"] += 1
                return None
            self._entries.touch(slot)
        alive = is_live(state[e.rows])
        vecs, erows = e.vecs[alive], e.rows[alive]
        if len(erows) < k:
            return self._miss()
        kernel = kernel_distances(vecs, q, self.metric)
        order = np.argsort(kernel, kind="stable")[:k]
        doubtful = doubtful_count(geometry(kernel[order], self.metric), limit)
        if doubtful and doubtful > self.error_budget * k:
            return self._miss()
        with self._lock:
            self.counters["hits" if doubtful == 0 else "near_hits"] += 1
        return erows[order], kernel[order].astype(np.float32), ("hit" if doubtful == 0 else "near-hit")

    def _admit(self, q: np.ndarray, qnorm: float, bucket: int, sig_id: int) -> bool:
        with self._lock:
            if not self._door.admit(q, qnorm, bucket, sig_id):
                return False
            self.counters["admitted"] += 1
            return True

    def _add_ghost(self, q: np.ndarray, bucket: int, sig_id: int, kernel_d: np.ndarray) -> None:
        radius = admission_radius(kernel_d, self.metric)
        if radius is None:
            return
        with self._lock:
            self._door.remember(q, bucket, sig_id, radius)

    def _miss(self):
        with self._lock:
            self.counters["misses"] += 1
        return None

    def _fill(self, backend: SearchBackend, qm: np.ndarray, qbuckets: np.ndarray, k: int, p, sig_id: int, rows,
              dists, where, ex, node) -> None:
        k_prime = max(4 * k, 20)
        with self._lock:
            epoch = self._epoch
        # The certificate is only as good as the K' set: a vector within R of q' that the fill missed could be
        # nearer to a later q than every cached candidate. So the fill probes much wider than a normal search
        # (it runs once per admitted query; every hit after it is free).
        nprobe = FILL_WIDEN * p.nprobe
        fill = dataclasses.replace(p, nprobe=nprobe, eps=FILL_WIDEN * p.eps,
                                   rerank_k=max(p.rerank_k, 4 * k_prime, 64), ef_search=max(p.ef_search, 2 * nprobe))
        r, d = backend.search_rows(qm, k_prime, fill, node, ex)
        rows[where], dists[where] = r[:, :k], d[:, :k]
        state = backend.row_state()
        for j, q in enumerate(qm):
            valid = r[j] >= 0
            rr = r[j][valid]
            if len(rr) < k_prime and node is None:  # too few candidates to bound the ball: not cacheable
                continue
            if len(rr) < k or not is_live(state[rr]).all():
                continue
            vecs = backend.vectors_of(rr)
            # fewer than K' filtered matches means the filter's exact path returned all of them: complete
            radius = float(geometry(d[j][valid][-1:], self.metric)[0]) if len(rr) == k_prime else np.inf
            kth = float(geometry(d[j][k - 1: k], self.metric)[0])
            self._store(Entry(sig_id, q.copy(), int(qbuckets[j]), rr, vecs, radius, kth), epoch)

    def _shadow(self, backend: SearchBackend, q, k, p, served_dists, node) -> None:
        """Run the hit again without the cache: served must be as near as the index's own answer, rank by rank."""
        _, d = backend.search_rows(q[None, :], k, p, node)
        with self._lock:
            self.counters["shadow_checks"] += 1
            valid = np.isfinite(d[0])
            tol = 1e-4 * (1.0 + np.abs(d[0][valid]))
            if (np.asarray(served_dists)[valid] > d[0][valid] + tol).any():
                self.counters["false_hits"] += 1

    def _should_shadow(self) -> bool:
        with self._lock:
            n = self.counters["hits"] + self.counters["near_hits"]
        return n % max(1, int(round(1 / self.shadow_rate))) == 0

    def _store(self, e: Entry, epoch: int) -> None:
        if e.nbytes > self.max_bytes:
            return
        with self._lock:
            if np.isfinite(e.radius):  # learn how far from a cached query a hit can be certified
                scale = self._max_norm if self.metric is Metric.IP else 1.0  # ip: bound shrinks by delta*max|x|
                self._door.learn((e.radius - e.kth) / max(scale, 1e-12))
            if epoch != self._epoch:  # an eviction ran while this fill searched: it may predate new vectors
                self.counters["not_stored"] += 1
                return
            self.counters["evictions"] += self._entries.add(e)

    def _clear(self) -> None:
        self._entries.clear()
        self._door.clear()
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
            slots, keys, radius = self._entries.balls()
        if not slots:
            return
        inside = inside_balls(vectors, keys, radius, self.metric)  # outside the lock: searches go on
        with self._lock:
            self.counters["invalidations"] += self._entries.discard(np.asarray(slots)[inside].tolist())

    def clear(self) -> None:
        with self._lock:
            self._clear()

    def stats(self) -> dict:
        with self._lock:
            out = dict(self.counters)
            served = out["hits"] + out["near_hits"]
            out.update({"enabled": True, "entries": len(self._entries), "bytes": self._entries.bytes,
                        "max_bytes": self.max_bytes, "hit_rate": served / out["lookups"] if out["lookups"] else 0.0,
                        "false_hit_rate": out["false_hits"] / out["shadow_checks"] if out["shadow_checks"] else 0.0,
                        "error_budget": self.error_budget})
        return out
