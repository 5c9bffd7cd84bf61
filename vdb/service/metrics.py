"""Prometheus metrics: request counts, latencies and errors by RPC, plus per-collection gauges.

Each server has its own registry (tests run several servers in one process). Served over HTTP on `metrics_port`
when it is set, bound to `metrics_host` (loopback unless told otherwise: the page names every collection and its
size), and behind the server's API keys when they are set (`Authorization: Bearer <key>`; either key may read).
"""
from __future__ import annotations

import hmac
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from vdb.service.auth import bearer_token

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
            _disk_metrics(fams, name, s)
            _tier_metrics(fams, name, s)
        yield from fams.values()


DISK_GAUGES = (("disk_bytes", "bytes the device holds for each file of the collection (holes excluded)",
                ["collection", "file"]),
               ("dead_rows", "rows of deleted or replaced vectors (their blocks are reclaimed once checkpointed)",
                ["collection"]),
               ("posting_garbage_bytes", "posting-file bytes no live posting uses (until the next compaction)",
                ["collection"]),
               ("vector_garbage_bytes", "dead rows' bytes in vector-file blocks that also hold a live row (what "
                "moving live rows out of sparse blocks frees)", ["collection"]),
               ("uncheckpointed_lsns", "applied writes no checkpoint covers yet", ["collection"]),
               ("rows_relocated", "live rows moved out of sparse vector-file blocks since the collection opened",
                ["collection"]),
               ("reclaimed_bytes", "bytes reclaimed since the collection opened, by kind", ["collection", "kind"]),
               ("last_compaction_unixtime", "when the last compaction (postings or vector rows) ran",
                ["collection", "kind"]),
               ("last_compaction_bytes", "bytes the last compaction reclaimed", ["collection", "kind"]))


def _disk_metrics(fams: dict, name: str, s: dict) -> None:
    """Disk per file, garbage, backlog and the last compaction (issue 13): what shows whether disk is bounded."""
    for key, help_, labels in DISK_GAUGES:
        fams.setdefault(key, GaugeMetricFamily(f"vdb_{key}", help_, labels=labels))
    for file, nbytes in s.get("disk", {}).items():
        if file != "total":
            fams["disk_bytes"].add_metric([name, file], nbytes)
    garbage, backlog = s.get("garbage", {}), s.get("backlog", {})
    fams["dead_rows"].add_metric([name], garbage.get("dead_rows", 0))
    fams["posting_garbage_bytes"].add_metric([name], garbage.get("posting_bytes", 0))
    fams["vector_garbage_bytes"].add_metric([name], garbage.get("vector_row_bytes", 0))
    fams["uncheckpointed_lsns"].add_metric([name], backlog.get("uncheckpointed_lsns", 0))
    fams["rows_relocated"].add_metric([name], s.get("maintenance", {}).get("rows_relocated", 0))
    for kind, nbytes in s.get("bytes_reclaimed", {}).items():
        fams["reclaimed_bytes"].add_metric([name, kind], nbytes)
    last = s.get("last_compaction", {})
    if last:
        fams["last_compaction_unixtime"].add_metric([name, last["what"]], last["unix_time"])
        fams["last_compaction_bytes"].add_metric([name, last["what"]], last["bytes_reclaimed"])


TIER_GAUGES = (("scan_tier_serving", "1 while searches scan the PQ codes in RAM (scan.pq), else 0 (stats say why)"),
               ("scan_tier_bytes", "bytes of the scan-code file (0: none)"),
               ("scan_tier_stale_postings", "postings changed since they were encoded, read from the posting file"))


def _tier_metrics(fams: dict, name: str, s: dict) -> None:
    """The scan tier: whether it serves (an operator sizing memory_budget_mb watches this), its size, and how
    much of it writes have made stale."""
    for key, help_ in TIER_GAUGES:
        fams.setdefault(key, GaugeMetricFamily(f"vdb_{key}", help_, labels=["collection"]))
    tier = s.get("scan_tier", {})
    fams["scan_tier_serving"].add_metric([name], 1 if tier.get("serving") else 0)
    fams["scan_tier_bytes"].add_metric([name], tier.get("bytes", 0))
    fams["scan_tier_stale_postings"].add_metric([name], tier.get("stale_postings") or 0)


class _BudgetGauges:
    """Answers held for slow clients (vdb/service/limits.py)."""

    def __init__(self, budget):
        self.budget = budget

    def collect(self):
        s = self.budget.stats()
        for key, help_ in (("in_flight_bytes", "answer bytes held for clients that have not read them yet"),
                           ("peak_bytes", "the most answer bytes held at once"),
                           ("refused", "large answers refused because the budget was spent")):
            fam = GaugeMetricFamily(f"vdb_answers_{key}", help_)
            fam.add_metric([], s[key])
            yield fam


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

    def watch_budget(self, budget) -> None:
        self.registry.register(_BudgetGauges(budget))

    def serve(self, host: str, port: int, keys: tuple[str, ...] = ()) -> int:
        """Serve /metrics on host:port (0: a free port) in a daemon thread; returns the bound port. With keys,
        a request must carry one of them as a bearer token (401 otherwise)."""
        registry, secrets = self.registry, [k.encode() for k in keys if k]

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                token = bearer_token([("authorization", self.headers.get("Authorization", ""))])
                if secrets and not any(hmac.compare_digest(token, k) for k in secrets):
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", "Bearer")
                    self.end_headers()
                    return
                body = generate_latest(registry)
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # no request lines on stderr
                pass

        self._http = ThreadingHTTPServer((host, port), Handler)
        self.bound_host = host
        self._http.daemon_threads = True
        threading.Thread(target=self._http.serve_forever, name="vdb-metrics", daemon=True).start()
        return self._http.server_address[1]

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


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
