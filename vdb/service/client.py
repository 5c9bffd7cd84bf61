"""`vdb.Client("host:port")`: the embedded API over gRPC, numpy in and numpy out, with the same typed errors.

Retries: only UNAVAILABLE (the server could not be reached or is restarting), with exponential backoff, and
only for calls that are safe to repeat: reads, and upsert/delete, which are idempotent by id (a repeated
upsert leaves the same state; only its LSN differs). Create/drop are never retried.
"""
from __future__ import annotations

import functools
import time

import grpc
import numpy as np

from vdb.service import convert
from vdb.api import Record
from vdb.api import SearchResult
from vdb.errors import BY_CODE, InternalError, InvalidArgumentError, VdbError
from vdb.text.options import check_options, query_texts
from vdb.v1 import vector_db_pb2 as pb
from vdb.v1 import vector_db_pb2_grpc as pb_grpc

DEFAULT_MAX_MESSAGE = 64 << 20


def _error(e: grpc.RpcError) -> VdbError:
    code = e.code()
    err = BY_CODE.get(code, InternalError)(e.details() or code.name)
    err.code = code
    return err


def _typed(fn):
    """Bad arguments become InvalidArgumentError here, as in the engine: never a raw TypeError / ValueError from
    building the request."""
    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except VdbError:
            raise
        except (TypeError, ValueError, OverflowError) as e:
            raise InvalidArgumentError(f"{fn.__name__}: {e}") from None
    return call


class Client:
    """The VectorDB interface (vdb/api.py) over gRPC: `vdb.Client("host:port", api_key=...)`.

    `timeout` is the default deadline of every call (upsert and delete take their own); `retries` applies to
    UNAVAILABLE on calls that are safe to repeat (see the module docstring); TLS with `tls=True` or
    `root_certificates`."""

    def __init__(self, target: str, api_key: str | None = None, *, tls: bool = False,
                 root_certificates: bytes | None = None, timeout: float | None = 60.0, retries: int = 3,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE):
        options = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes)]
        if tls or root_certificates:
            self._channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates),
                                                options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._stub = pb_grpc.VectorDBStub(self._channel)
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self.timeout, self.retries, self.max_message_bytes = timeout, retries, max_message_bytes

    def _call(self, method: str, request, *, retry: bool, timeout: float | None = None):
        attempt = 0
        timeout = self.timeout if timeout is None else timeout
        while True:
            try:
                return getattr(self._stub, method)(request, timeout=timeout, metadata=self._metadata)
            except grpc.RpcError as e:
                if retry and e.code() == grpc.StatusCode.UNAVAILABLE and attempt < self.retries:
                    time.sleep(0.1 * 2 ** attempt)
                    attempt += 1
                    continue
                raise _error(e) from None

    # -- collections ------------------------------------------------------------------------------------
    @_typed
    def create_collection(self, name: str, dim: int, metric: str = "l2", *, exist_ok: bool = False,
                          **options) -> dict:
        """As VectorDB.create_collection (never retried: a retry could race a drop)."""
        durability = options.pop("durability", None)
        if durability is not None and durability not in convert.DURABILITY_ENUM:
            options["durability"] = durability  # the server rejects it with the embedded message
            durability = None
        req = pb.CreateCollectionRequest(
            name=name, dim=int(dim), metric=convert.METRIC_ENUM.get(str(metric).lower(), pb.METRIC_UNSPECIFIED),
            durability=convert.DURABILITY_ENUM[durability] if durability else pb.DURABILITY_UNSPECIFIED,
            exist_ok=exist_ok, options_json=convert.to_json(options).decode() if options else "")
        return convert.info_dict(self._call("CreateCollection", req, retry=False).collection)

    @_typed
    def list_collections(self) -> list[str]:
        """As VectorDB.list_collections."""
        return list(self._call("ListCollections", pb.ListCollectionsRequest(), retry=True).names)

    @_typed
    def describe_collection(self, name: str) -> dict:
        """As VectorDB.describe_collection."""
        return convert.info_dict(self._call("DescribeCollection", pb.DescribeCollectionRequest(name=name),
                                            retry=True).collection)

    @_typed
    def drop_collection(self, name: str) -> None:
        """As VectorDB.drop_collection (never retried)."""
        self._call("DropCollection", pb.DropCollectionRequest(name=name), retry=False)

    # -- data -------------------------------------------------------------------------------------------
    @_typed
    def upsert(self, name: str, ids, vectors, payloads=None, *, timeout: float | None = None) -> int:
        """As VectorDB.upsert; `timeout` replaces the client's default deadline for this call."""
        ids = np.atleast_1d(np.asarray(ids))
        req = pb.UpsertRequest(collection=name, ids=_ids(ids), vectors=convert.to_vectors(_floats(vectors)))
        if payloads is not None:
            req.payloads_json.extend(convert.to_json(p) for p in payloads)
        return self._call("Upsert", req, retry=True, timeout=timeout).lsn

    @_typed
    def upsert_batched(self, name: str, ids, vectors, payloads=None, batch_size: int | None = None) -> int:
        """Upsert any number of vectors in messages that fit the size limit; returns the last LSN."""
        ids, vectors = np.asarray(ids), _floats(vectors)
        row_bytes = 4 * vectors.shape[1] + 16
        batch = batch_size or max(1, min(10_000, self.max_message_bytes // 2 // row_bytes))
        lsn = 0
        for s in range(0, len(ids), batch):
            lsn = self.upsert(name, ids[s: s + batch], vectors[s: s + batch],
                              payloads[s: s + batch] if payloads is not None else None)
        return lsn

    @_typed
    def delete(self, name: str, ids, *, timeout: float | None = None) -> int:
        """As VectorDB.delete; `timeout` replaces the client's default deadline for this call."""
        ids = np.atleast_1d(np.asarray(ids))
        return self._call("Delete", pb.DeleteRequest(collection=name, ids=_ids(ids)), retry=True,
                          timeout=timeout).lsn

    @_typed
    def get(self, name: str, ids) -> list[Record]:
        """As VectorDB.get."""
        ids = np.atleast_1d(np.asarray(ids))
        return convert.records_from(self._call("Get", pb.GetRequest(collection=name, ids=_ids(ids)), retry=True))

    @_typed
    def search(self, name: str, queries, top_k: int = 10, *, filter=None, nprobe=None, rerank_k=None, eps=None,
               use_cache: bool = True, explain: bool = False, allow_partial: bool = False) -> SearchResult:
        """As VectorDB.search. One query goes as a Search call, several as one packed BatchSearch. Through a
        router (`vdbctl route`), allow_partial=True answers from the shards that are up (`.missing_shards`)."""
        q = _floats(queries)
        params = convert.search_params(top_k, nprobe, rerank_k, eps, filter, use_cache, explain, allow_partial)
        if len(q) == 1:
            resp = self._call("Search", pb.SearchRequest(collection=name, query=convert.to_vectors(q), params=params),
                              retry=True)
            ids, dists, explains = convert.from_search_results([resp.result], int(top_k))
            ex, missing = explains[0], list(resp.result.missing_shards)
        else:  # packed: two arrays instead of one message per query
            resp = self._call("BatchSearch", pb.BatchSearchRequest(collection=name, queries=convert.to_vectors(q),
                                                                   params=params, packed=True), retry=True)
            if resp.HasField("packed"):
                ids, dists, ex = convert.from_packed(resp.packed, len(q), int(top_k))
                missing = list(resp.packed.missing_shards)
            else:  # a server that predates packed answers
                ids, dists, explains = convert.from_search_results(resp.results, int(top_k))
                ex = explains[0] if explains else None
                missing = sorted({s for r in resp.results for s in r.missing_shards})
        if np.ndim(queries) == 1:
            return SearchResult(ids[0], dists[0], ex, missing)
        return SearchResult(ids, dists, ex, missing)

    @_typed
    def hybrid_search(self, name: str, text=None, vector=None, top_k: int = 10, *, fusion: str = "rrf",
                      alpha: float = 0.5, rrf_k: int = 60, candidates: int | None = None, filter=None, nprobe=None,
                      rerank_k=None, eps=None, use_cache: bool = True, explain: bool = False,
                      allow_partial: bool = False) -> SearchResult:
        """As VectorDB.hybrid_search: one HybridSearch call (a server older than it answers UNIMPLEMENTED)."""
        texts = query_texts(text)
        if texts is None and vector is None:
            raise InvalidArgumentError("hybrid_search needs text, a vector, or both")
        check_options(fusion, alpha, rrf_k, candidates, top_k, 1 << 31)
        q = _floats(vector) if vector is not None else None
        params = convert.search_params(top_k, nprobe, rerank_k, eps, filter, use_cache, explain, allow_partial)
        req = convert.hybrid_request(name, texts, q, params, fusion, alpha, rrf_k, candidates)
        resp = self._call("HybridSearch", req, retry=True)
        nq = len(texts) if texts is not None else len(q)
        ids, dists, ex = convert.from_packed(resp.packed, nq, int(top_k))
        missing = list(resp.packed.missing_shards)
        if (text is None or isinstance(text, str)) and (vector is None or np.ndim(vector) == 1):
            return SearchResult(ids[0], dists[0], ex, missing)
        return SearchResult(ids, dists, ex, missing)

    @_typed
    def count(self, name: str) -> int:
        """As VectorDB.count."""
        return self._call("Count", pb.CountRequest(collection=name), retry=True).count

    @_typed
    def stats(self, name: str) -> dict:
        """As VectorDB.stats."""
        import json
        return json.loads(self._call("Stats", pb.StatsRequest(collection=name), retry=True).stats_json)

    @_typed
    def flush(self, name: str) -> int:
        """As VectorDB.flush."""
        return self._call("Flush", pb.FlushRequest(collection=name), retry=True).checkpoint_lsn

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _floats(x) -> np.ndarray:
    """Client-side shape only; the server validates dimension, NaN and Inf (same messages as embedded)."""
    try:
        a = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise InvalidArgumentError(f"vectors must be numeric: {e}") from None
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise InvalidArgumentError(f"vectors must be a 2-D array [n, dim], got shape {a.shape}")
    return a


def _ids(ids: np.ndarray) -> list[int]:
    if ids.dtype.kind not in "iu":
        raise InvalidArgumentError(f"ids must be integers, got {ids.dtype}")
    if ids.dtype.kind == "i" and len(ids) and ids.min() < 0:
        raise InvalidArgumentError("ids must be in [0, 2**63 - 1]")
    return ids.astype(np.uint64).tolist()
