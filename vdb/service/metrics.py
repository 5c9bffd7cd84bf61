"""Prometheus metrics: request counts, latencies and errors by RPC, plus per-collection gauges.

Each server has its own registry (tests run several servers in one process). Served over HTTP on
`metrics_port` when it is set.
"""
from __future__ import annotations

import time

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10)


class _CollectionGauges:
    """Read at scrape time from each collection's stats (counts, backlog, WAL, cache counters)."""

    def __init__(self, db):
        self.db = db

    def collect(self):
        fams = {name: GaugeMetricFamily(f"vdb_{name}", help_, labels=["collection"]) for name, help_ in (
            ("vectors", "live vectors"), ("pending_rows", "acknowledged vectors not yet in postings"),
            ("wal_bytes", "bytes in the write-ahead log"), ("postings", "live postings"),
            ("cache_lookups", "semantic cache lookups"), ("cache_hits", "certified cache hits"),
            ("cache_near_hits", "uncertified cache hits within the error budget"),
            ("cache_misses", "cache misses"), ("cache_invalidations", "entries evicted by writes"),
            ("cache_false_hits", "hits found wrong by the shadow check"))}
        try:
            names = self.db.list_collections()
        except Exception:
            names = []
        for name in names:
            try:
                s = self.db.stats(name)
            except Exception:
                continue
            fams["vectors"].add_metric([name], s["count"])
            fams["pending_rows"].add_metric([name], s["pending_rows"])
            fams["wal_bytes"].add_metric([name], s["wal"].get("bytes", 0))
            fams["postings"].add_metric([name], s["maintenance"].get("postings", 0))
            cache = s.get("cache", {})
            for key in ("lookups", "hits", "near_hits", "misses", "invalidations", "false_hits"):
                fams[f"cache_{key}"].add_metric([name], cache.get(key, 0))
        yield from fams.values()


class Metrics:
    def __init__(self, db):
        self.registry = CollectorRegistry()
        self.requests = Counter("vdb_requests", "RPCs handled", ["method", "code"], registry=self.registry)
        self.latency = Histogram("vdb_request_seconds", "RPC latency", ["method"], buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self.registry.register(_CollectionGauges(db))
        self._http = None

    def interceptor(self) -> grpc.ServerInterceptor:
        return _MetricsInterceptor(self)

    def serve(self, host: str, port: int) -> None:
        self._http = start_http_server(port, addr=host, registry=self.registry)


class _MetricsInterceptor(grpc.ServerInterceptor):
    def __init__(self, metrics: Metrics):
        self.m = metrics

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or handler.request_streaming or handler.response_streaming:
            return handler
        method = details.method.rsplit("/", 1)[-1]
        inner = handler.unary_unary

        def timed(request, context):
            t = time.perf_counter()
            code = grpc.StatusCode.UNKNOWN
            try:
                response = inner(request, context)
                code = context.code() or grpc.StatusCode.OK
                return response
            except BaseException:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            finally:
                self.m.requests.labels(method, code.name).inc()
                self.m.latency.labels(method).observe(time.perf_counter() - t)

        return grpc.unary_unary_rpc_method_handler(timed, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)
