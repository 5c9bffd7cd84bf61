"""`vdbctl route`: one `vdb.v1.VectorDB` endpoint in front of several shard servers (scatter-gather).

Sharding is by id hash: shard(id) = splitmix64(id) mod N. Writes, deletes and gets go to the owning shard only;
a search goes to every shard, each asked for ceil(top_k * overfetch) neighbours, and the router merges the
global top-k by distance. Why id hash rather than head partitions: routing needs no global state (no router-side
head index to keep in sync with splits), every shard holds a uniform share of the data and load, and an online
split never moves vectors between shards; the price is that every search touches every shard. See
docs/scaling.md. Ray is not in this path: shards are ordinary `vdbctl serve` processes.

A shard that does not answer makes a search UNAVAILABLE (naming the shard), unless the request sets
allow_partial: then the answer comes from the shards that are up and is flagged partial. Writes to a shard that
is down are UNAVAILABLE (the client may retry: upserts and deletes are idempotent by id).
"""
from __future__ import annotations

import json
import logging
import math
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import numpy as np

from vdb.service import convert
from vdb.errors import InvalidArgumentError, UnavailableError, VdbError
from vdb.service.server import SERVICE, rpc
from vdb.v1 import vector_db_pb2 as pb
from vdb.v1 import vector_db_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
_M = (1 << 64) - 1


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
        unknown = set(router) - {"host", "port", "overfetch", "timeout_s", "api_key", "workers"}
        if unknown:
            raise InvalidArgumentError(f"cluster config {path}: unknown router keys {sorted(unknown)}")
        return cls(shards=shards, **router)


class RouterServicer:
    def __init__(self, config: ClusterConfig):
        self.config = config
        opts = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
        self._channels = [grpc.insecure_channel(a, options=opts) for a in config.shards]
        self._stubs = [pb_grpc.VectorDBStub(c) for c in self._channels]
        self._pool = ThreadPoolExecutor(max_workers=max(4, 2 * len(config.shards)), thread_name_prefix="vdb-route")
        self._metadata = (("authorization", f"Bearer {config.api_key}"),) if config.api_key else ()

    # -- plumbing ---------------------------------------------------------------------------------------
    def _call(self, shard: int, method: str, request, context):
        timeout = context.time_remaining() if context is not None else None
        timeout = min(timeout, self.config.timeout_s) if timeout is not None else self.config.timeout_s
        return getattr(self._stubs[shard], method)(request, timeout=timeout, metadata=self._metadata)

    def _fanout(self, calls, context, *, allow_partial: bool = False):
        """Run (shard, method, request) calls in parallel; returns {shard: response} and the missing shards."""
        futures = {shard: self._pool.submit(self._call, shard, method, req, context) for shard, method, req in calls}
        out, missing = {}, []
        for shard, fut in futures.items():
            try:
                out[shard] = fut.result()
            except grpc.RpcError as e:
                if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    if allow_partial:
                        missing.append(self.config.shards[shard])
                        continue
                    raise UnavailableError(f"shard {shard} ({self.config.shards[shard]}) is unavailable: "
                                           f"{e.details()}") from None
                err = convert_error(e)
                raise err from None
        return out, missing

    def _all(self, method: str, request, context):
        return self._fanout([(s, method, request) for s in range(len(self._stubs))], context)[0]

    # -- collections ------------------------------------------------------------------------------------
    @rpc
    def CreateCollection(self, req, context):
        out = self._all("CreateCollection", req, context)
        info = out[0].collection
        info.count = sum(r.collection.count for r in out.values())
        return pb.CreateCollectionResponse(collection=info)

    @rpc
    def ListCollections(self, req, context):
        out = self._all("ListCollections", req, context)
        names = set.intersection(*(set(r.names) for r in out.values()))
        return pb.ListCollectionsResponse(names=sorted(names))

    @rpc
    def DescribeCollection(self, req, context):
        out = self._all("DescribeCollection", req, context)
        info = out[0].collection
        info.count = sum(r.collection.count for r in out.values())
        info.heads = sum(r.collection.heads for r in out.values())
        return pb.DescribeCollectionResponse(collection=info)

    @rpc
    def DropCollection(self, req, context):
        self._all("DropCollection", req, context)
        return pb.DropCollectionResponse()

    @rpc
    def Count(self, req, context):
        return pb.CountResponse(count=sum(r.count for r in self._all("Count", req, context).values()))

    @rpc
    def Flush(self, req, context):
        return pb.FlushResponse(checkpoint_lsn=max(r.checkpoint_lsn for r in self._all("Flush", req, context).values()))

    @rpc
    def Stats(self, req, context):
        out = self._all("Stats", req, context)
        shards = [json.loads(out[s].stats_json) for s in sorted(out)]
        merged = {"shards": shards, "count": sum(s["count"] for s in shards),
                  "pending_rows": sum(s["pending_rows"] for s in shards)}
        return pb.StatsResponse(stats_json=convert.to_json(merged).decode())

    # -- data -------------------------------------------------------------------------------------------
    def _split(self, ids: np.ndarray) -> dict[int, np.ndarray]:
        owner = shard_of(ids, len(self._stubs))
        return {s: np.nonzero(owner == s)[0] for s in np.unique(owner)}

    @rpc
    def Upsert(self, req, context):
        ids = convert.from_ids(req.ids)
        vectors = convert.from_vectors(req.vectors)
        if len(vectors) != len(ids):
            raise InvalidArgumentError(f"{len(ids)} ids but {len(vectors)} vectors")
        if req.payloads_json and len(req.payloads_json) != len(ids):
            raise InvalidArgumentError(f"payloads must be a list of {len(ids)} objects, one per id")
        calls = []
        for shard, rows in self._split(ids).items():
            sub = pb.UpsertRequest(collection=req.collection, ids=ids[rows].tolist(),
                                   vectors=convert.to_vectors(vectors[rows]))
            if req.payloads_json:
                sub.payloads_json.extend(req.payloads_json[int(i)] for i in rows)
            calls.append((int(shard), "Upsert", sub))
        out, _ = self._fanout(calls, context)
        return pb.UpsertResponse(lsn=max(r.lsn for r in out.values()), upserted=len(ids))

    @rpc
    def Delete(self, req, context):
        ids = convert.from_ids(req.ids)
        calls = [(int(s), "Delete", pb.DeleteRequest(collection=req.collection, ids=ids[rows].tolist()))
                 for s, rows in self._split(ids).items()]
        out, _ = self._fanout(calls, context)
        return pb.DeleteResponse(lsn=max(r.lsn for r in out.values()))

    @rpc
    def Get(self, req, context):
        ids = convert.from_ids(req.ids)
        calls = [(int(s), "Get", pb.GetRequest(collection=req.collection, ids=ids[rows].tolist(),
                                               omit_vectors=req.omit_vectors))
                 for s, rows in self._split(ids).items()]
        out, _ = self._fanout(calls, context)
        found: dict[int, tuple] = {}
        dim = 0
        for resp in out.values():
            vecs = convert.from_vectors(resp.vectors) if resp.HasField("vectors") and resp.vectors.dim else None
            dim = resp.vectors.dim or dim
            for j, (i, p) in enumerate(zip(resp.ids, resp.payloads_json)):
                found[int(i)] = (vecs[j] if vecs is not None else None, p)
        order = [int(i) for i in ids if int(i) in found]
        resp = pb.GetResponse(ids=order, payloads_json=[found[i][1] for i in order])
        if not req.omit_vectors:
            vecs = np.stack([found[i][0] for i in order]) if order else np.zeros((0, dim), np.float32)
            resp.vectors.CopyFrom(convert.to_vectors(vecs) if order else pb.Vectors(dim=dim))
        return resp

    @rpc
    def Search(self, req, context):
        ids, dists, explain, missing = self._search(req.collection, req.query, req.params, context)
        return pb.SearchResponse(result=_result(ids[0], dists[0], explain, missing))

    @rpc
    def BatchSearch(self, req, context):
        ids, dists, explain, missing = self._search(req.collection, req.queries, req.params, context)
        if not req.packed:
            return pb.BatchSearchResponse(results=[_result(i, d, explain, missing) for i, d in zip(ids, dists)])
        packed = convert.packed_results(ids, dists, None, partial=bool(missing), missing_shards=missing)
        if explain is not None:
            packed.explain.CopyFrom(explain)
        return pb.BatchSearchResponse(packed=packed)

    def _search(self, collection: str, queries: pb.Vectors, params: pb.SearchParams, context):
        """Every shard's over-fetched top-k, merged: (ids, distances) [nq, top_k] padded with -1 / inf, the summed
        explain (when asked for) and the shards that did not answer."""
        if params.top_k == 0:
            raise InvalidArgumentError("top_k must be an integer >= 1")
        k = params.top_k
        shard_params = pb.SearchParams()
        shard_params.CopyFrom(params)
        shard_params.top_k = int(math.ceil(k * self.config.overfetch))
        shard_params.allow_partial = False
        req = pb.BatchSearchRequest(collection=collection, queries=queries, params=shard_params, packed=True)
        out, missing = self._fanout([(s, "BatchSearch", req) for s in range(len(self._stubs))], context,
                                    allow_partial=params.allow_partial)
        if not out:
            raise UnavailableError(f"no shard answered ({', '.join(missing)})")
        parts = [_shard_arrays(out[s], shard_params.top_k) for s in sorted(out)]
        ids = np.concatenate([p[0] for p in parts], axis=1)  # shards hold disjoint ids: nothing to deduplicate
        dists = np.concatenate([p[1] for p in parts], axis=1)
        order = np.argsort(dists, axis=1, kind="stable")[:, :k]
        ids, dists = np.take_along_axis(ids, order, 1), np.take_along_axis(dists, order, 1)
        ids[~np.isfinite(dists)] = -1
        explain = _sum_explain([p[2] for p in parts]) if params.explain else None
        return ids, dists, explain, missing

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        for c in self._channels:
            c.close()


def _shard_arrays(resp: pb.BatchSearchResponse, k: int) -> tuple[np.ndarray, np.ndarray, pb.Explain]:
    """A shard's answer as arrays [nq, k] plus its explain (packed, or one message per query from an older shard)."""
    if resp.HasField("packed"):
        nq = len(resp.packed.ids) // (8 * k)
        ids, dists, _ = convert.from_packed(resp.packed, nq, k)
        return ids, dists, resp.packed.explain
    ids, dists, _ = convert.from_search_results(resp.results, k)
    return ids, dists, resp.results[0].explain if resp.results else pb.Explain()


def _result(ids: np.ndarray, dists: np.ndarray, explain: pb.Explain | None, missing: list) -> pb.SearchResult:
    r = convert.search_result(ids, dists, None)
    if explain is not None:
        r.explain.CopyFrom(explain)
    r.partial, r.missing_shards[:] = bool(missing), missing
    return r


def _sum_explain(parts) -> pb.Explain:
    e = pb.Explain(path="router", cache=",".join(sorted({p.cache for p in parts})))
    for p in parts:
        e.postings_probed += p.postings_probed
        e.records_scanned += p.records_scanned
        e.bytes_read += p.bytes_read
        e.memtable_rows += p.memtable_rows
    return e


def convert_error(e: grpc.RpcError) -> VdbError:
    from vdb.service.client import _error
    return _error(e)


def create_router(config: ClusterConfig, *, port: int | None = None, api_key: str = "") -> tuple[grpc.Server, int]:
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from vdb.service.server import AuthInterceptor, METHODS, _safe_parser
    servicer = RouterServicer(config)
    server = grpc.server(ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="vdb-router"),
                         interceptors=[AuthInterceptor(api_key)],
                         options=[("grpc.max_receive_message_length", 64 << 20),
                                  ("grpc.max_send_message_length", 64 << 20)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
        name: grpc.unary_unary_rpc_method_handler(getattr(servicer, name), request_deserializer=_safe_parser(req),
                                                  response_serializer=resp.SerializeToString)
        for name, (req, resp) in METHODS.items()}),))
    hs = health.HealthServicer()
    for name in ("", SERVICE):
        hs.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    bound = server.add_insecure_port(f"{config.host}:{config.port if port is None else port}")
    if bound == 0:
        raise OSError(f"cannot bind {config.host}:{config.port}")
    server.router = servicer
    return server, bound
