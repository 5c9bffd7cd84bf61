"""The one translation boundary between protobuf messages and vdb's domain types (numpy arrays, dicts).

Nothing else in vdb knows both. Protos are never persisted and never used as cache keys.
"""
from __future__ import annotations

import json

import numpy as np

from vdb.api import Record
from vdb.errors import DataLossError, InvalidArgumentError
from vdb.v1 import vector_db_pb2 as pb

METRICS = {pb.METRIC_L2: "l2", pb.METRIC_IP: "ip", pb.METRIC_COSINE: "cosine"}
METRIC_ENUM = {v: k for k, v in METRICS.items()}
DURABILITY = {pb.DURABILITY_FSYNC: "fsync", pb.DURABILITY_BATCH: "batch", pb.DURABILITY_NONE: "none"}
DURABILITY_ENUM = {v: k for k, v in DURABILITY.items()}
MAX_ID = (1 << 63) - 1


# -- vectors and ids ----------------------------------------------------------------------------------------
def to_vectors(a: np.ndarray) -> pb.Vectors:
    a = np.ascontiguousarray(np.atleast_2d(a), dtype="<f4")
    return pb.Vectors(dim=a.shape[1], data=a.tobytes())


def from_vectors(v: pb.Vectors, *, what: str = "vectors") -> np.ndarray:
    if v.dim == 0:
        raise InvalidArgumentError(f"{what}: dim must be set (> 0)")
    if len(v.data) % (4 * v.dim):
        raise InvalidArgumentError(f"{what}: {len(v.data)} bytes is not a whole number of float32 rows of "
                                   f"dim {v.dim}")
    return np.frombuffer(v.data, dtype="<f4").reshape(-1, v.dim)


def from_ids(ids) -> np.ndarray:
    a = np.fromiter(ids, dtype=np.uint64, count=len(ids))
    if len(a) and int(a.max()) > MAX_ID:
        raise InvalidArgumentError("ids must be in [0, 2**63 - 1]")
    return a.astype(np.int64)


# -- JSON fields --------------------------------------------------------------------------------------------
def from_json(text: str | bytes, what: str, *, allow_null: bool = False):
    if text in ("", b""):
        return None
    try:
        value = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgumentError(f"{what} is not valid JSON: {e}") from None
    except RecursionError:
        raise InvalidArgumentError(f"{what} is nested too deeply to parse") from None
    if value is None and allow_null:
        return None
    if not isinstance(value, dict):
        raise InvalidArgumentError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def to_json(value) -> bytes:
    """JSON for the wire. numpy scalars and arrays become their values; anything else that is not JSON is an
    InvalidArgumentError (never its str(): a payload must come back as it was sent)."""
    try:
        return json.dumps(value, separators=(",", ":"), sort_keys=True, default=_np_default,
                          allow_nan=False).encode()
    except (TypeError, ValueError) as e:
        raise InvalidArgumentError(f"not JSON: {e}") from None
    except RecursionError:
        raise InvalidArgumentError("nested too deeply to encode as JSON") from None


def report_json(value) -> str:
    """JSON of a server-made report (stats): values with no JSON form (paths, ...) are written as text."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=lambda o: o.item() if isinstance(
        o, np.generic) else o.tolist() if isinstance(o, np.ndarray) else str(o))


def _np_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"a {type(o).__name__} is not a JSON value")


def payloads_from(items) -> list | None:
    if len(items) == 0:
        return None
    return [from_json(p, f"payload {i}", allow_null=True) for i, p in enumerate(items)]


# -- collections --------------------------------------------------------------------------------------------
def collection_info(d: dict) -> pb.CollectionInfo:
    return pb.CollectionInfo(name=d["name"], dim=d["dim"], metric=METRIC_ENUM[d["metric"]], count=d["count"],
                             durability=DURABILITY_ENUM.get(d["durability"], pb.DURABILITY_UNSPECIFIED),
                             build_params_json=to_json(d.get("build_params", {})).decode(), heads=d["heads"])


def info_dict(info: pb.CollectionInfo) -> dict:
    return {"name": info.name, "dim": info.dim, "metric": METRICS.get(info.metric, "unspecified"),
            "count": info.count, "durability": DURABILITY.get(info.durability, "unspecified"),
            "build_params": json.loads(info.build_params_json or "{}"), "heads": info.heads}


def create_args(req: pb.CreateCollectionRequest) -> dict:
    if req.metric not in METRICS:
        raise InvalidArgumentError("metric must be METRIC_L2, METRIC_IP or METRIC_COSINE")
    options = from_json(req.options_json, "options_json") or {}
    if req.durability != pb.DURABILITY_UNSPECIFIED:
        options["durability"] = DURABILITY[req.durability]
    return {"name": req.name, "dim": req.dim, "metric": METRICS[req.metric], "exist_ok": req.exist_ok, **options}


# -- search -------------------------------------------------------------------------------------------------
def search_kwargs(p: pb.SearchParams) -> dict:
    return {"top_k": p.top_k, "nprobe": p.nprobe or None, "rerank_k": p.rerank_k or None,
            "eps": p.eps if p.HasField("eps") else None,
            "filter": from_json(p.filter_json, "filter_json"),
            "use_cache": p.use_cache if p.HasField("use_cache") else True, "explain": p.explain,
            "allow_partial": p.allow_partial}


def search_params(top_k, nprobe=None, rerank_k=None, eps=None, filter=None, use_cache=True,
                  explain=False, allow_partial=False) -> pb.SearchParams:
    """The request's knobs, type-checked as the engine checks them (a bool is not a count, 2.5 is not an int):
    nothing is converted on the way."""
    for name, v in (("top_k", top_k), ("nprobe", nprobe), ("rerank_k", rerank_k)):
        if v is not None and (isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer))):
            raise InvalidArgumentError(f"{name} must be an integer, got {v!r}")
        low = 0 if name in ("rerank_k", "nprobe") else 1  # 0 is "automatic" in the engine and on the wire alike
        if v is not None and not low <= int(v) < (1 << 32):
            raise InvalidArgumentError(f"{name} must be an integer in [{low}, 2**32), got {v!r}")
    if eps is not None and (isinstance(eps, (bool, np.bool_)) or not isinstance(eps, (int, float, np.number))):
        raise InvalidArgumentError(f"eps must be a number, got {eps!r}")
    p = pb.SearchParams(top_k=int(top_k), nprobe=int(nprobe or 0), rerank_k=int(rerank_k or 0),
                        filter_json=to_json(filter).decode() if filter is not None else "",
                        use_cache=bool(use_cache), explain=bool(explain), allow_partial=bool(allow_partial))
    if eps is not None:
        p.eps = float(eps)
    return p


def search_result(ids: np.ndarray, dists: np.ndarray, explain: dict | None, *, missing_shards=()) -> pb.SearchResult:
    """One query's answer (padding dropped); `missing_shards` (a router's) makes it partial."""
    keep = ids >= 0
    r = pb.SearchResult(ids=ids[keep].tolist(), distances=dists[keep].tolist(), partial=bool(missing_shards),
                        missing_shards=list(missing_shards))
    if explain is not None:
        r.explain.CopyFrom(explain_message(explain))
    return r


def explain_message(explain: dict) -> pb.Explain:
    return pb.Explain(**{k: v for k, v in explain.items()
                         if k in pb.Explain.DESCRIPTOR.fields_by_name and v is not None})


def from_search_results(results, k: int) -> tuple[np.ndarray, np.ndarray, list]:
    """Back to vdb's padded arrays [nq, k] (-1 / inf) plus per-query explain dicts (with `partial` and
    `missing_shards` when a router answered from some shards only)."""
    ids = np.full((len(results), k), -1, np.int64)
    dists = np.full((len(results), k), np.inf, np.float32)
    explains = []
    for i, r in enumerate(results):
        n = len(r.ids)
        ids[i, :n] = np.fromiter(r.ids, np.uint64, n).astype(np.int64)
        dists[i, :n] = np.fromiter(r.distances, np.float32, n)
        ex = explain_dict(r.explain) if r.HasField("explain") else None
        if r.partial:
            ex = {**(ex or {}), "partial": True, "missing_shards": list(r.missing_shards)}
        explains.append(ex)
    return ids, dists, explains


def packed_results(ids: np.ndarray, dists: np.ndarray, explain: dict | None, *, missing_shards=()) -> pb.PackedResults:
    """A batch's answers as two little-endian arrays ([nq, k] int64 ids with -1 pads, float32 distances)."""
    ids = np.ascontiguousarray(np.where(np.asarray(ids) >= 0, ids, -1), dtype="<i8")
    r = pb.PackedResults(top_k=ids.shape[1], ids=ids.tobytes(),
                         distances=np.ascontiguousarray(dists, dtype="<f4").tobytes(), partial=bool(missing_shards),
                         missing_shards=list(missing_shards))
    if explain is not None:
        r.explain.CopyFrom(explain_message(explain))
    return r


def from_packed(p: pb.PackedResults, nq: int, k: int) -> tuple[np.ndarray, np.ndarray, dict | None]:
    """Back to vdb's padded arrays [nq, k]; the sizes are checked, a malformed answer is a DataLossError."""
    if p.top_k != k or len(p.ids) != 8 * nq * k or len(p.distances) != 4 * nq * k:
        raise DataLossError(f"packed batch answer has top_k={p.top_k}, {len(p.ids)} id bytes and "
                            f"{len(p.distances)} distance bytes; expected top_k={k} for {nq} queries")
    ids = np.frombuffer(p.ids, dtype="<i8").reshape(nq, k).astype(np.int64)
    dists = np.frombuffer(p.distances, dtype="<f4").reshape(nq, k).astype(np.float32)
    ex = explain_dict(p.explain) if p.HasField("explain") else None
    if p.partial:
        ex = {**(ex or {}), "partial": True, "missing_shards": list(p.missing_shards)}
    return ids, dists, ex


def explain_dict(e: pb.Explain) -> dict:
    out = {f.name: getattr(e, f.name) for f in pb.Explain.DESCRIPTOR.fields}
    if not e.HasField("filter_matches"):
        out["filter_matches"] = None
    return out


# -- hybrid search (the HybridSearch RPC) ----------------------------------------------------------------
FUSION = {pb.FUSION_UNSPECIFIED: "rrf", pb.FUSION_RRF: "rrf", pb.FUSION_WEIGHTED: "weighted"}
FUSION_ENUM = {"rrf": pb.FUSION_RRF, "weighted": pb.FUSION_WEIGHTED}


def hybrid_request(name: str, texts, vectors, params: pb.SearchParams, fusion: str, alpha: float, rrf_k: int,
                   candidates) -> pb.HybridSearchRequest:
    """The request of VectorDB.hybrid_search (its options already validated by vdb.text.options)."""
    req = pb.HybridSearchRequest(collection=name, texts=texts or [], params=params, fusion=FUSION_ENUM[fusion],
                                 alpha=float(alpha), rrf_k=int(rrf_k), candidates=int(candidates or 0))
    if vectors is not None:
        req.queries.CopyFrom(to_vectors(vectors))
    return req


def hybrid_kwargs(req: pb.HybridSearchRequest) -> dict:
    """Back to VectorDB.hybrid_search's arguments (batch form: a list of texts, a [nq, dim] matrix)."""
    if req.fusion not in FUSION:
        raise InvalidArgumentError(f"unknown fusion {req.fusion}; use FUSION_RRF or FUSION_WEIGHTED")
    vectors = from_vectors(req.queries, what="queries") if req.HasField("queries") and req.queries.dim else None
    return {"text": list(req.texts) or None, "vector": vectors, "fusion": FUSION[req.fusion],
            "alpha": req.alpha if req.HasField("alpha") else 0.5, "rrf_k": req.rrf_k or 60,
            "candidates": req.candidates or None, **search_kwargs(req.params)}


# -- get ----------------------------------------------------------------------------------------------------
def get_response(records: list[Record], omit_vectors: bool, dim: int) -> pb.GetResponse:
    resp = pb.GetResponse(ids=[r.id for r in records],
                          payloads_json=[to_json(r.payload) for r in records])
    if not omit_vectors:
        vecs = np.stack([r.vector for r in records]) if records else np.zeros((0, dim), np.float32)
        resp.vectors.CopyFrom(to_vectors(vecs) if records else pb.Vectors(dim=dim))
    return resp


def records_from(resp: pb.GetResponse) -> list[Record]:
    vecs = from_vectors(resp.vectors) if resp.HasField("vectors") and resp.vectors.dim else None
    return [Record(int(i), vecs[j] if vecs is not None else None, json.loads(p) if p else None)
            for j, (i, p) in enumerate(zip(resp.ids, resp.payloads_json))]
