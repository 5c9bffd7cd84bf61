"""Router: one VectorDB in front of several shard servers (scatter-gather); `vdbctl route` serves it over gRPC.

Sharding is by id hash: shard(id) = splitmix64(id) mod N. Writes, deletes and gets go to the owning shard only;
a search goes to every shard, each asked for ceil(top_k * overfetch) neighbours, and the router merges the
global top-k by distance. Why id hash rather than head partitions: routing needs no global state (no router-side
head index to keep in sync with splits), every shard holds a uniform share of the data and load, and an online
split never moves vectors between shards; the price is that every search touches every shard. See
docs/scaling.md. Ray is not in this path: shards are ordinary `vdbctl serve` processes, reached with vdb.Client.

A shard that does not answer makes a search UNAVAILABLE (naming the shard), unless the request sets
allow_partial: then the answer comes from the shards that are up and names the missing ones. Writes to a shard
that is down are UNAVAILABLE (the client may retry: upserts and deletes are idempotent by id).
"""
from __future__ import annotations

import logging
import math
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from vdb.api import Record, SearchResult
from vdb.config import BY_NAME
from vdb.errors import (AlreadyExistsError, DeadlineExceededError, InvalidArgumentError, NotFoundError,
                        ResourceExhaustedError, UnavailableError, VdbError)
from vdb.service.client import Client
from vdb.text.fusion import rrf as fusion_rrf, weighted as fusion_weighted
from vdb.text.options import check_options, query_texts

log = logging.getLogger(__name__)
_M = (1 << 64) - 1
SUMMED_EXPLAIN = ("postings_probed", "records_scanned", "bytes_read", "memtable_rows")


def shard_of(ids: np.ndarray, n_shards: int) -> np.ndarray:
    """splitmix64 finaliser, mod N: stable across processes and versions (documented; do not change)."""
    z = np.asarray(ids, dtype=np.uint64).copy()
    with np.errstate(over="ignore"):
        z = (z + np.uint64(0x9E3779B97F4A7C15)) & np.uint64(_M)
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & np.uint64(_M)
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & np.uint64(_M)
        z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(n_shards)).astype(np.int64)


@dataclass(frozen=True)
class ClusterConfig:
    shards: tuple[str, ...]
    host: str = "127.0.0.1"
    port: int = 50050
    overfetch: float = 1.5
    timeout_s: float = 30.0
    api_key: str = ""            # sent to the shards
    workers: int = 16
    # the shards' limits (the settings table's), so that a request gets the answer one node would give it: a
    # batch the router splits is still one batch, and an over-fetch is cut to what a shard accepts
    max_top_k: int = BY_NAME["max_top_k"].default
    max_batch: int = BY_NAME["max_batch"].default

    @classmethod
    def load(cls, path) -> "ClusterConfig":
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise InvalidArgumentError(f"cluster config {path}: {e}") from None
        shards = tuple(s["address"] for s in raw.get("shards", []))
        if not shards:
            raise InvalidArgumentError(f"cluster config {path}: no [[shards]] with an address")
        router = raw.get("router", {})
        unknown = set(router) - {"host", "port", "overfetch", "timeout_s", "api_key", "workers", "max_top_k",
                                 "max_batch"}
        if unknown:
            raise InvalidArgumentError(f"cluster config {path}: unknown router keys {sorted(unknown)}")
        return cls(shards=shards, **router)


class Router:
    """The VectorDB interface over shard servers. Stateless: any number of routers may front the same shards.

    `shards`: one object per shard with the VectorDB methods, instead of a Client per address in the config
    (vdb/cluster/routing.py passes replica groups that fail over; config.shards then only names them)."""

    def __init__(self, config: ClusterConfig, shards: list | None = None):
        self.config = config
        # No client-side retries: a shard that is down is reported at once (and searched around if allowed).
        self._shards = shards if shards is not None else [
            Client(a, api_key=config.api_key or None, timeout=config.timeout_s, retries=0) for a in config.shards]
        self._pool = ThreadPoolExecutor(max_workers=max(4, 2 * len(config.shards)), thread_name_prefix="vdb-route")

    # -- plumbing ---------------------------------------------------------------------------------------
    def _fanout(self, calls, *, allow_partial: bool = False):
        """Run (shard, method, args, kwargs) in parallel; returns {shard: result} and the missing shards."""
        futures = {s: self._pool.submit(getattr(self._shards[s], m), *a, **kw) for s, m, a, kw in calls}
        out, missing = {}, []
        for shard, fut in futures.items():
            try:
                out[shard] = fut.result()
            except (UnavailableError, DeadlineExceededError) as e:
                if allow_partial:
                    missing.append(self.config.shards[shard])
                    continue
                raise UnavailableError(f"shard {shard} ({self.config.shards[shard]}) is unavailable: "
                                       f"{e.message}") from None
        return out, missing

    def _all(self, method: str, *args, **kwargs) -> dict:
        return self._fanout([(s, method, args, kwargs) for s in range(len(self._shards))])[0]

    def _settle(self, method: str, *args, **kwargs) -> tuple[dict, dict]:
        """`method` on every shard, every call waited for: ({shard: result}, {shard: the error it raised}) (a
        collection change must know where it took effect, not stop at the first refusal)."""
        futures = [(s, self._pool.submit(getattr(self._shards[s], method), *args, **kwargs))
                   for s in range(len(self._shards))]
        done, failed = {}, {}
        for shard, fut in futures:
            try:
                done[shard] = fut.result()
            except (UnavailableError, DeadlineExceededError) as e:
                failed[shard] = UnavailableError(f"shard {shard} ({self.config.shards[shard]}) is unavailable: "
                                                 f"{e.message}")
            except VdbError as e:
                failed[shard] = e
        return done, failed

    def _gather(self, method: str, args: tuple, kwargs: dict, top_k: int, explain: bool, allow_partial: bool):
        """A search `method` on every shard, merged: (ids, distances, summed explain, missing shards)."""
        out, missing = self._fanout([(s, method, args, kwargs) for s in range(len(self._shards))],
                                    allow_partial=allow_partial)
        if not out:
            raise UnavailableError(f"no shard answered ({', '.join(missing)})")
        parts = [out[s] for s in sorted(out)]
        ids, dists = _merge(parts, top_k)
        return ids, dists, _sum_explain([p.explain for p in parts]) if explain else None, missing

    def _split(self, ids: np.ndarray) -> dict[int, np.ndarray]:
        """{shard: positions in `ids`} of the shards that own them. No ids: shard 0 gets the empty request, and
        answers it as one node would (its refusal, or its empty answer)."""
        if len(ids) > self.config.max_batch:
            raise ResourceExhaustedError(f"batch of {len(ids)} exceeds max_batch={self.config.max_batch}; split it")
        if len(ids) == 0:
            return {0: np.zeros(0, np.int64)}
        owner = shard_of(ids, len(self._shards))
        return {int(s): np.nonzero(owner == s)[0] for s in np.unique(owner)}

    # -- collections ------------------------------------------------------------------------------------
    def create_collection(self, name: str, dim: int, metric: str = "l2", *, exist_ok: bool = False,
                          **options) -> dict:
        """Create the collection on every shard. Where some shards refuse it (or are down) and others take it,
        nothing is undone: a router cannot tell a shard's collection this call made from one that predates it
        (a replicated shard retries a create as exist_ok=True) or that a concurrent create with exist_ok=True
        has just joined, and dropping either loses data. The error names the shards on each side and how to
        finish: create it again with exist_ok=True, or drop it (drop passes over shards without it)."""
        out, failed = self._settle("create_collection", name, dim, metric, exist_ok=exist_ok, **options)
        if not failed:
            return {**out[0], "count": sum(i["count"] for i in out.values())}
        first = failed[min(failed)]
        if not out:
            raise first
        raise type(first)(f"{first.message} (shard(s) {sorted(failed)}; the collection is on shard(s) "
                          f"{sorted(out)}: create it again with exist_ok=True to complete it, or drop it, which "
                          f"deletes whatever those shards hold of it)")

    def list_collections(self) -> list[str]:
        """Collections present on every shard."""
        return sorted(set.intersection(*(set(n) for n in self._all("list_collections").values())))

    def describe_collection(self, name: str) -> dict:
        """Shard 0's description with counts and heads summed over the shards."""
        out = self._all("describe_collection", name)
        return {**out[0], "count": sum(i["count"] for i in out.values()),
                "heads": sum(i["heads"] for i in out.values())}

    def drop_collection(self, name: str) -> None:
        """Drop the collection on every shard. Shards without it are passed over (an interrupted create or drop
        left it on some only); NotFoundError only if no shard had it."""
        out, failed = self._settle("drop_collection", name)
        missing = {s for s, e in failed.items() if isinstance(e, NotFoundError)}
        if len(missing) == len(self._shards):
            raise failed[0]
        errors = [failed[s] for s in sorted(failed) if s not in missing]
        if errors:
            raise errors[0]

    # -- data -------------------------------------------------------------------------------------------
    def upsert(self, name: str, ids, vectors, payloads=None, *, timeout: float | None = None) -> int:
        """Each id goes to its shard; returns the highest LSN of the shards written (each shard has its own)."""
        ids = np.atleast_1d(np.asarray(ids))
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if len(vectors) != len(ids):
            raise InvalidArgumentError(f"{len(ids)} ids but {len(vectors)} vectors")
        if payloads is not None and len(payloads) != len(ids):
            raise InvalidArgumentError(f"payloads must be a list of {len(ids)} objects, one per id")
        calls = [(s, "upsert", (name, ids[rows], vectors[rows],
                                [payloads[int(i)] for i in rows] if payloads is not None else None),
                  {"timeout": timeout}) for s, rows in self._split(ids).items()]
        out, _ = self._fanout(calls)
        return max(out.values())

    def delete(self, name: str, ids, *, timeout: float | None = None) -> int:
        """Each id is deleted on its shard; returns the highest LSN of the shards written."""
        ids = np.atleast_1d(np.asarray(ids))
        out, _ = self._fanout([(s, "delete", (name, ids[rows]), {"timeout": timeout})
                               for s, rows in self._split(ids).items()])
        return max(out.values())

    def get(self, name: str, ids) -> list[Record]:
        """Each id is read from its shard; records come back in the order asked."""
        ids = np.atleast_1d(np.asarray(ids))
        out, _ = self._fanout([(s, "get", (name, ids[rows]), {}) for s, rows in self._split(ids).items()])
        found = {r.id: r for records in out.values() for r in records}
        return [found[int(i)] for i in ids if int(i) in found]

    def search(self, name: str, queries, top_k: int = 10, *, filter=None, nprobe=None, rerank_k=None, eps=None,
               use_cache: bool = True, explain: bool = False, allow_partial: bool = False) -> SearchResult:
        """Every shard's over-fetched top-k, merged by distance (shards hold disjoint ids)."""
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
            raise InvalidArgumentError(f"top_k must be an integer >= 1, got {top_k!r}")
        q = np.asarray(queries, dtype=np.float32)
        qm = np.atleast_2d(q)
        shard_k = self._shard_k(top_k)
        kwargs = dict(filter=filter, nprobe=nprobe, rerank_k=rerank_k, eps=eps, use_cache=use_cache,
                      explain=explain)
        ids, dists, ex, missing = self._gather("search", (name, qm, shard_k), kwargs, top_k, explain, allow_partial)
        if q.ndim == 1:
            return SearchResult(ids[0], dists[0], ex, missing)
        return SearchResult(ids, dists, ex, missing)

    def hybrid_search(self, name: str, text=None, vector=None, top_k: int = 10, *, fusion: str = "rrf",
                      alpha: float = 0.5, rrf_k: int = 60, candidates: int | None = None, filter=None, nprobe=None,
                      rerank_k=None, eps=None, use_cache: bool = True, explain: bool = False,
                      allow_partial: bool = False) -> SearchResult:
        """Each list is gathered from every shard (over-fetched, merged by score) and the router fuses them, so
        RRF ranks are global ranks. BM25 statistics are each shard's own (as Elasticsearch's default
        query-then-fetch): with hash sharding the shards' statistics agree closely."""
        texts = query_texts(text)
        if texts is None and vector is None:
            raise InvalidArgumentError("hybrid_search needs text, a vector, or both")
        depth = check_options(fusion, alpha, rrf_k, candidates, top_k, self.config.max_top_k)  # as one node does
        if texts is None:
            return self.search(name, vector, top_k, filter=filter, nprobe=nprobe, rerank_k=rerank_k, eps=eps,
                               use_cache=use_cache, explain=explain, allow_partial=allow_partial)
        want = int(top_k) if vector is None else depth
        shard_k = self._shard_k(want)
        t_ids, t_dists, ex, missing = self._gather("hybrid_search", (name, texts, None, shard_k),
                                                   {"filter": filter, "explain": explain}, want, explain, allow_partial)
        if vector is not None:
            dense = self.search(name, np.atleast_2d(np.asarray(vector, np.float32)), depth, filter=filter,
                                nprobe=nprobe, rerank_k=rerank_k, eps=eps, use_cache=use_cache, explain=explain,
                                allow_partial=allow_partial)
            lists = [(dense.ids, np.where(dense.ids >= 0, -dense.distances.astype(np.float64), -np.inf)),
                     (t_ids, np.where(t_ids >= 0, -t_dists.astype(np.float64), -np.inf))]
            t_ids, fused = (fusion_rrf(lists, int(top_k), int(rrf_k)) if fusion == "rrf" else
                            fusion_weighted(lists, [float(alpha), 1.0 - float(alpha)], int(top_k)))
            t_dists = (-fused).astype(np.float32)
            missing = sorted(set(missing) | set(dense.missing_shards))
        if (text is None or isinstance(text, str)) and (vector is None or np.ndim(vector) == 1):
            return SearchResult(t_ids[0], t_dists[0], ex, missing)
        return SearchResult(t_ids, t_dists, ex, missing)

    def _shard_k(self, k: int) -> int:
        """What each shard is asked for: k over-fetched, but never past the shards' max_top_k (a k one node
        accepts must not be refused because of the over-fetch)."""
        return max(int(k), min(int(math.ceil(k * self.config.overfetch)), self.config.max_top_k))

    def count(self, name: str) -> int:
        """Live vectors summed over the shards."""
        return sum(self._all("count", name).values())

    def stats(self, name: str) -> dict:
        """Every shard's stats, with count and backlog summed."""
        out = self._all("stats", name)
        shards = [out[s] for s in sorted(out)]
        return {"shards": shards, "count": sum(s["count"] for s in shards),
                "pending_rows": sum(s["pending_rows"] for s in shards)}

    def flush(self, name: str) -> int:
        """Flush every shard; returns the highest checkpoint LSN."""
        return max(self._all("flush", name).values())

    def close(self) -> None:
        """Close the shard channels."""
        self._pool.shutdown(wait=False)
        for c in self._shards:
            c.close()


def _merge(parts, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """The global top_k of the shards' answers (disjoint ids), by distance, -1 / inf padded."""
    ids = np.concatenate([p.ids for p in parts], axis=1)
    dists = np.concatenate([p.distances for p in parts], axis=1)
    order = np.argsort(dists, axis=1, kind="stable")[:, :top_k]
    ids, dists = np.take_along_axis(ids, order, 1), np.take_along_axis(dists, order, 1)
    ids[~np.isfinite(dists)] = -1
    if ids.shape[1] < top_k:  # fewer than top_k vectors in the whole cluster
        pad = top_k - ids.shape[1]
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        dists = np.pad(dists, ((0, 0), (0, pad)), constant_values=np.inf)
    return ids, dists


def _sum_explain(parts: list[dict | None]) -> dict:
    parts = [p for p in parts if p]
    out = {"path": "router", "cache": ",".join(sorted({p.get("cache", "") for p in parts}))}
    for key in SUMMED_EXPLAIN:
        out[key] = sum(int(p.get(key) or 0) for p in parts)
    return out


def create_router(config: ClusterConfig, *, port: int | None = None, api_key: str = ""):
    """A gRPC server (not yet started) over a Router; returns (server, bound port). `server.db` is the Router."""
    from vdb.config import load_settings
    from vdb.service.server import create_server
    settings = load_settings({"host": config.host, "port": config.port if port is None else port,
                              "workers": config.workers, "api_key": api_key})
    return create_server(Router(config), settings)
