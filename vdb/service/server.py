"""The gRPC server: `vdb.v1.VectorDB` over any VectorDB (vdb/api.py), plus health, reflection and metrics.

It serves an embedded Database (`vdbctl serve`) and a Router over shard servers (`vdbctl route`) alike.
Built by `create_server(db, settings) -> (server, port)` (tests bind port 0). Each concern is one small piece:
`rpc` (errors -> status codes, deadlines, bad bytes), `AuthInterceptor` (API keys, auth.py), the metrics
interceptor (Prometheus, metrics.py). Handlers only translate (convert.py) and call the VectorDB.
"""
from __future__ import annotations

import functools
import logging
import signal
import threading
import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from vdb.errors import DeadlineExceededError, InvalidArgumentError, translate
from vdb.service import convert
from vdb.service.auth import SERVICE, AuthInterceptor
from vdb.service.limits import ResponseBudget, search_answer_bytes
from vdb.service.metrics import Metrics
from vdb.v1 import vector_db_pb2 as pb

log = logging.getLogger(__name__)
METHODS = {  # name -> (request type, response type)
    "CreateCollection": (pb.CreateCollectionRequest, pb.CreateCollectionResponse),
    "ListCollections": (pb.ListCollectionsRequest, pb.ListCollectionsResponse),
    "DescribeCollection": (pb.DescribeCollectionRequest, pb.DescribeCollectionResponse),
    "DropCollection": (pb.DropCollectionRequest, pb.DropCollectionResponse),
    "Upsert": (pb.UpsertRequest, pb.UpsertResponse),
    "Delete": (pb.DeleteRequest, pb.DeleteResponse),
    "Get": (pb.GetRequest, pb.GetResponse),
    "Search": (pb.SearchRequest, pb.SearchResponse),
    "BatchSearch": (pb.BatchSearchRequest, pb.BatchSearchResponse),
    "Count": (pb.CountRequest, pb.CountResponse),
    "Flush": (pb.FlushRequest, pb.FlushResponse),
    "Stats": (pb.StatsRequest, pb.StatsResponse),
    "HybridSearch": (pb.HybridSearchRequest, pb.HybridSearchResponse),
}


class _Undecodable:
    """What a request that is not a valid message deserializes to, so the handler can answer precisely."""

    def __init__(self, error: Exception):
        self.error = error


def _safe_parser(message_type):
    def parse(data: bytes):
        try:
            return message_type.FromString(data)
        except Exception as e:  # protobuf raises DecodeError (and sometimes others) on garbage
            return _Undecodable(e)
    return parse


def rpc(fn):
    """Errors become status codes (vdb/errors.py table); deadlines and undecodable bytes are checked first."""
    @functools.wraps(fn)
    def handler(self, request, context):
        try:
            if isinstance(request, _Undecodable):
                raise InvalidArgumentError(f"request is not a valid {fn.__name__}Request message "
                                           f"({request.error})")
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:
                raise DeadlineExceededError("the deadline passed before the request was handled")
            response = fn(self, request, context)
            self.budget.charge_answer(response.ByteSize(), context)
            return response
        except Exception as e:
            self.budget.charge_answer(0, context)  # forget what was charged ahead (released as the RPC ends)
            err = translate(e)
            if err.code == grpc.StatusCode.INTERNAL:  # a bug: the traceback goes to the log, the client a line
                log.error("%s failed unexpectedly: %s", fn.__name__, err.message, exc_info=e)
            context.abort(err.code, _one_line(err.message))
    return handler


def _one_line(message: str, limit: int = 2000) -> str:
    """What a client sees of an error: one line, bounded (the log keeps the whole story)."""
    line = " ".join(str(message).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _timeout(context) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else max(0.0, remaining)


class VectorDBServicer:
    def __init__(self, db, budget: ResponseBudget, max_top_k: int):
        self.db, self.budget = db, budget
        self.max_top_k = max_top_k  # no answer is wider: a larger top_k is the engine's INVALID_ARGUMENT to give

    def _charge_search(self, n_queries: int, top_k: int, packed: bool, context) -> None:
        self.budget.charge_ahead(search_answer_bytes(n_queries, min(top_k, self.max_top_k), packed), context)

    @rpc
    def CreateCollection(self, req, context):
        info = self.db.create_collection(**convert.create_args(req))
        return pb.CreateCollectionResponse(collection=convert.collection_info(info))

    @rpc
    def ListCollections(self, req, context):
        return pb.ListCollectionsResponse(names=self.db.list_collections())

    @rpc
    def DescribeCollection(self, req, context):
        return pb.DescribeCollectionResponse(collection=convert.collection_info(self.db.describe_collection(req.name)))

    @rpc
    def DropCollection(self, req, context):
        self.db.drop_collection(req.name)
        return pb.DropCollectionResponse()

    @rpc
    def Upsert(self, req, context):
        vectors = convert.from_vectors(req.vectors)
        lsn = self.db.upsert(req.collection, convert.from_ids(req.ids), vectors,
                             convert.payloads_from(req.payloads_json), timeout=_timeout(context))
        return pb.UpsertResponse(lsn=lsn, upserted=len(req.ids))

    @rpc
    def Delete(self, req, context):
        return pb.DeleteResponse(lsn=self.db.delete(req.collection, convert.from_ids(req.ids),
                                                    timeout=_timeout(context)))

    @rpc
    def Get(self, req, context):
        records = self.db.get(req.collection, convert.from_ids(req.ids))
        dim = len(records[0].vector) if records else self.db.describe_collection(req.collection)["dim"]
        return convert.get_response(records, req.omit_vectors, dim)

    @rpc
    def Search(self, req, context):
        q = convert.from_vectors(req.query, what="query")
        if len(q) != 1:
            raise InvalidArgumentError(f"Search takes exactly one query vector, got {len(q)}; use BatchSearch")
        self._charge_search(1, req.params.top_k, False, context)
        res = self.db.search(req.collection, q, **convert.search_kwargs(req.params))
        return pb.SearchResponse(result=convert.search_result(res.ids[0], res.distances[0], res.explain,
                                                              missing_shards=res.missing_shards))

    @rpc
    def BatchSearch(self, req, context):
        q = convert.from_vectors(req.queries, what="queries")
        self._charge_search(len(q), req.params.top_k, req.packed, context)
        res = self.db.search(req.collection, q, **convert.search_kwargs(req.params))
        if req.packed:
            return pb.BatchSearchResponse(packed=convert.packed_results(res.ids, res.distances, res.explain,
                                                                        missing_shards=res.missing_shards))
        return pb.BatchSearchResponse(results=[convert.search_result(i, d, res.explain,
                                                                     missing_shards=res.missing_shards)
                                               for i, d in zip(res.ids, res.distances)])

    @rpc
    def HybridSearch(self, req, context):
        kwargs = convert.hybrid_kwargs(req)
        n_queries = max(len(kwargs["text"] or ()), 0 if kwargs["vector"] is None else len(kwargs["vector"]))
        self._charge_search(n_queries, req.params.top_k, True, context)  # before the work, as BatchSearch
        res = self.db.hybrid_search(req.collection, **kwargs)
        return pb.HybridSearchResponse(packed=convert.packed_results(res.ids, res.distances, res.explain,
                                                                     missing_shards=res.missing_shards))

    @rpc
    def Count(self, req, context):
        return pb.CountResponse(count=self.db.count(req.collection))

    @rpc
    def Flush(self, req, context):
        return pb.FlushResponse(checkpoint_lsn=self.db.flush(req.collection))

    @rpc
    def Stats(self, req, context):
        return pb.StatsResponse(stats_json=convert.report_json(self.db.stats(req.collection)))


def _handlers(servicer) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(SERVICE, {
        name: grpc.unary_unary_rpc_method_handler(getattr(servicer, name), request_deserializer=_safe_parser(req),
                                                  response_serializer=resp.SerializeToString)
        for name, (req, resp) in METHODS.items()})


def create_server(db, settings, *, port: int | None = None) -> tuple[grpc.Server, int]:
    """A ready (not yet started) server over `db`, any VectorDB; returns it and the bound port. `settings`: the
    server settings of vdb/config.py (host, port, workers, max_message_mb, api keys, TLS, metrics_port)."""
    from concurrent.futures import ThreadPoolExecutor
    max_bytes = int(settings["max_message_mb"]) << 20
    metrics = Metrics(db)
    server = grpc.server(
        ThreadPoolExecutor(max_workers=int(settings["workers"]), thread_name_prefix="vdb-rpc"),
        interceptors=[metrics.interceptor(),  # outermost: counts refused calls too
                      AuthInterceptor(settings["api_key"], settings["read_only_api_key"])],
        options=[("grpc.max_receive_message_length", max_bytes), ("grpc.max_send_message_length", max_bytes),
                 ("grpc.max_concurrent_streams", int(settings["max_streams_per_connection"])),
                 ("grpc.max_connection_idle_ms", int(float(settings["idle_connection_s"]) * 1000))])
    budget = ResponseBudget(int(float(settings["max_inflight_answers_mb"]) * (1 << 20)))
    server.add_generic_rpc_handlers((_handlers(VectorDBServicer(db, budget, int(settings["max_top_k"]))),))
    health_servicer = health.HealthServicer()
    for name in ("", SERVICE):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (pb.DESCRIPTOR.services_by_name["VectorDB"].full_name, health.SERVICE_NAME, reflection.SERVICE_NAME),
        server)
    address = f"{settings['host']}:{settings['port'] if port is None else port}"
    if settings["tls_cert"] or settings["tls_key"]:
        with open(settings["tls_cert"], "rb") as c, open(settings["tls_key"], "rb") as k:
            creds = grpc.ssl_server_credentials([(k.read(), c.read())])
        bound = server.add_secure_port(address, creds)
    else:
        bound = server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"cannot bind {address}")
    server.health = health_servicer
    server.metrics = metrics
    server.budget = budget
    server.db = db
    metrics.watch_budget(budget)
    if settings["metrics_port"]:
        server.metrics_port = metrics.serve(settings["metrics_host"], int(settings["metrics_port"]),
                                            (settings["api_key"], settings["read_only_api_key"]))
    return server, bound


def serve(db, settings, *, ready=None, what: str = "") -> None:
    """Serve `db` (any VectorDB) until SIGTERM/SIGINT; then stop accepting, drain for grace_s and close it (a
    Database checkpoints every collection as it closes). `ready(port)` is called once the port is bound."""
    server, port = create_server(db, settings)
    server.start()
    log.warning("vdb serving %s on %s:%d (%s)", what or getattr(db, "path", db), settings["host"], port,
                "TLS" if settings["tls_cert"] else "plaintext")
    if ready is not None:
        ready(port)
    wait_for_signal()
    log.warning("shutting down: draining RPCs for up to %.0f s", settings["grace_s"])
    for name in ("", SERVICE):
        server.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    t = time.monotonic()
    server.stop(settings["grace_s"]).wait()
    db.close()
    log.warning("stopped after %.1f s", time.monotonic() - t)


def wait_for_signal() -> None:
    """Block the main thread until SIGTERM or SIGINT."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
