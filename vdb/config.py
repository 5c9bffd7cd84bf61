"""One settings table: defaults, config file (TOML), environment (VDB_<NAME>) and overrides, validated at load.

Precedence, lowest first: defaults < config file < environment < explicit overrides (CLI flags, kwargs).
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable

from vdb.errors import InvalidArgumentError


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    help: str
    check: Callable[[Any], bool] = lambda v: True
    secret: bool = False  # never printed, logged, returned or put in an error message


def _positive(v) -> bool:
    return v > 0


SETTINGS: tuple[Setting, ...] = (
    # durability and background work (per collection)
    Setting("durability", "fsync", "WAL policy: fsync (ack after fsync), batch (fsync every batch_delay_ms), "
            "none (unsafe: a process crash may lose acknowledged writes)", lambda v: v in ("fsync", "batch", "none")),
    Setting("batch_delay_ms", 10.0, "loss window of the batch policy on an OS crash", _positive),
    Setting("wal_segment_mb", 64, "WAL segment size before rotation", _positive),
    Setting("wal_repair", False, "operator option: truncate a corrupted WAL at the damage (loudly, losing the "
            "records after it) instead of refusing to open"),
    Setting("checkpoint_interval_s", 30.0, "checkpoint at least this often while there are changes", _positive),
    Setting("checkpoint_wal_mb", 64, "checkpoint when the WAL grew this much since the last one", _positive),
    Setting("max_pending_rows", 50_000, "writers wait while this many acknowledged vectors are not yet in "
            "postings (throttling instead of unbounded RAM)", _positive),
    Setting("maintenance_batch", 4096, "vectors moved from RAM into postings per maintenance step", _positive),
    Setting("sweep_deleted_fraction", 0.05, "garbage-collect / merge postings after this fraction of rows was "
            "deleted or replaced", _positive),
    Setting("sweep_jobs_per_step", 64, "posting merges and rewrites a sweep does per maintenance step; the rest "
            "waits for later steps, so a sweep after many deletes never stops the indexing of new rows",
            _positive),
    Setting("sweep_max_deferred_steps", 3, "a pending sweep gives way to indexing while the backlog is over half "
            "of max_pending_rows, but for at most this many maintenance steps in a row", lambda v: v >= 0),
    Setting("compact_min_mb", 1.0, "posting-file garbage (old extents) below this never triggers a compaction, "
            "whatever its fraction (a floor, so that small collections do not rewrite their postings over and "
            "over)", _positive),
    Setting("compact_garbage_fraction", 0.3, "rewrite the posting file once its garbage is this fraction of the "
            "file (and over compact_min_mb): the file stays within about 1 / (1 - fraction) of its live bytes",
            lambda v: 0 < v < 1),
    Setting("write_timeout_s", 60.0, "how long a throttled writer waits before RESOURCE_EXHAUSTED", _positive),
    Setting("faiss_threads", 1, "OpenMP threads faiss may use for head search (process-wide: tune_process). 1: "
            "concurrency comes from parallel requests; OpenMP spin-waiting on a busy machine costs milliseconds per query",
            _positive),
    Setting("gil_switch_ms", 1.0, "Python's GIL switch interval in ms (process-wide). A search waiting for the GIL "
            "behind the maintenance thread waits up to this long per hand-over; CPython's 5 ms default shows up "
            "as milliseconds of tail latency while writes are being indexed", _positive),
    # full-text index (vdb/text): hybrid search over one payload text field
    Setting("text_field", "", "payload field (dotted path) whose string values get a BM25 full-text index for "
            "hybrid_search; empty: no text index", lambda v: v == "" or all(p for p in v.split("."))),
    Setting("text_commit_interval_s", 1.0, "how often new texts move from RAM into the on-disk text index "
            "(they are searchable at once either way)", _positive),
    Setting("memory_budget_mb", 0.0, "RAM an index served from disk may use, per collection (vdb.connect / vdbctl "
            "serve, vdbctl search --memory-budget-mb, SpannIndex.open(memory_budget_mb=...)): its resident "
            "structures plus a cache of the postings read most; the postings and re-rank rows a search needs are "
            "read with O_DIRECT, in one batch per query, so the page cache holds none of them. An index built with "
            "scan codes (--set scan_code_bytes=-1: scan.pq) whose codes fit the budget scans its postings from them "
            "in RAM (mlock'ed) and reads only re-rank rows (and the postings changed since the codes were written). "
            "A collection's unindexed writes (its memtable, at most max_pending_rows vectors) are searched exactly "
            "on top of it. 0: read through mmap and the kernel's page cache", lambda v: v >= 0),
    # request limits
    Setting("max_top_k", 10_000, "largest top_k a search may ask for", _positive),
    Setting("max_batch", 10_000, "most vectors per upsert / queries per batch search / ids per get", _positive),
    Setting("max_query_text_kb", 64, "longest query text of hybrid_search, in KiB of UTF-8 (a passage is a few KiB; "
            "a 4 MB text of 500,000 distinct words took 6.5 s and 0.9 GB to answer)", _positive),
    Setting("max_query_terms", 1024, "most distinct terms in one query text of hybrid_search, after analysis "
            "(Lucene's default limit of boolean clauses)", _positive),
    Setting("exact_filter_rows", 4_000, "filtered searches matching at most this many rows run exactly (above: "
            "the index with a widened probe, finished exactly when it comes up short)",
            _positive),
    Setting("relocate_rows", True, "free the vector file's blocks that deletes left sparse by moving their live "
            "rows to its end (a logged maintenance write; off on every node of a cluster, whose logs copy their "
            "primary's)", lambda v: isinstance(v, bool)),
    Setting("memtable_scan_all_rows", 1024, "a search scans every acknowledged row not yet in postings while "
            "there are at most this many; above, only the rows filed under the heads it probes (each row is filed "
            "under its nearest head as it is written), as it scans only the probed postings",
            lambda v: v >= 0),
    # semantic cache
    Setting("cache_mb", 0.0, "semantic cache size per collection in MiB (0 disables)", lambda v: v >= 0),
    Setting("cache_error_budget", 0.0, "uncertified near hits allowed (fraction of k that may differ); 0 = "
            "serve certified hits only", lambda v: 0 <= v <= 1),
    Setting("cache_shadow_rate", 0.01, "fraction of cache hits re-run uncached to measure false hits",
            lambda v: 0 <= v <= 1),
    # server
    Setting("host", "127.0.0.1", "address to bind (loopback unless told otherwise)"),
    Setting("port", 50051, "gRPC port (0 picks a free one)", lambda v: 0 <= v < 65536),
    Setting("max_message_mb", 64, "largest gRPC message accepted or sent", _positive),
    Setting("workers", 16, "gRPC worker threads", _positive),
    Setting("max_inflight_answers_mb", 64.0, "large answers being computed or waiting for slow clients, at most "
            "(MiB); beyond it a large answer is RESOURCE_EXHAUSTED. The server's memory for them is about 4x this "
            "(gRPC's copies and the search's own arrays; docs/reliability.md)", _positive),
    Setting("max_streams_per_connection", 32, "concurrent calls one connection may have open", _positive),
    Setting("idle_connection_s", 600.0, "close a connection idle this long", _positive),
    Setting("api_key", "", "if set, every RPC but health needs `authorization: Bearer <key>`", secret=True),
    Setting("read_only_api_key", "", "a key that may only read (search, get, count, stats, list, describe)",
            secret=True),
    Setting("tls_cert", "", "PEM certificate file; with tls_key, serve TLS"),
    Setting("tls_key", "", "PEM private key file"),
    Setting("metrics_port", 0, "Prometheus /metrics port (0 = off)", lambda v: 0 <= v < 65536),
    Setting("metrics_host", "127.0.0.1", "address /metrics binds (loopback: the page names every collection); it "
            "takes the API keys when they are set"),
    Setting("grace_s", 10.0, "graceful shutdown: seconds to drain in-flight RPCs", _positive),
)
BY_NAME = {s.name: s for s in SETTINGS}
# Stored with each collection (its manifest) and changeable per collection at creation:
COLLECTION_SETTINGS = ("durability", "batch_delay_ms", "wal_segment_mb", "checkpoint_interval_s",
                       "checkpoint_wal_mb", "max_pending_rows", "maintenance_batch", "sweep_deleted_fraction",
                       "sweep_jobs_per_step", "sweep_max_deferred_steps",
                       "compact_min_mb", "compact_garbage_fraction", "write_timeout_s", "cache_mb",
                       "cache_error_budget", "cache_shadow_rate",
                       "text_field", "text_commit_interval_s")
# Everything a collection reads: its own settings plus the database-wide request limits and operator options.
# A collection never sees the server's settings (keys, TLS, ports), so nothing it reports can leak them.
ENGINE_SETTINGS = COLLECTION_SETTINGS + ("wal_repair", "max_top_k", "max_batch", "exact_filter_rows",
                                         "memtable_scan_all_rows", "relocate_rows", "max_query_text_kb",
                                         "max_query_terms",
                                         "memory_budget_mb")
SECRETS = frozenset(s.name for s in SETTINGS if s.secret)


def redacted(settings) -> dict:
    """The settings with every secret replaced by "<redacted>" (for logs and reports)."""
    return {k: ("<redacted>" if k in SECRETS and v else v) for k, v in dict(settings).items()}


PROCESS_SETTINGS = ("faiss_threads", "gil_switch_ms")  # process-wide: applied by entry points, never by connect()


def tune_process(settings=None) -> None:
    """Apply the process-wide settings (faiss_threads, gil_switch_ms) to this process. `vdbctl serve`, `route`,
    `eval` and the benchmarks call it at start; an application embedding vdb calls it once if it wants them
    (connect() never changes process-wide state)."""
    import sys
    from index.centroids import set_search_threads
    s = settings if settings is not None else load_settings()
    set_search_threads(int(s["faiss_threads"]))
    sys.setswitchinterval(float(s["gil_switch_ms"]) / 1000.0)


def _coerce(setting: Setting, value: Any) -> Any:
    kind = type(setting.default)
    try:
        if kind is bool:
            value = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
        elif kind is int and not isinstance(value, bool):
            value = int(value)
        elif kind is float:
            value = float(value)
        elif kind is str:
            value = str(value)
    except (TypeError, ValueError, OverflowError):
        shown = "the value" if setting.secret else repr(value)
        raise InvalidArgumentError(f"setting {setting.name}: {shown} is not a {kind.__name__}") from None
    if kind is float and value != value:  # NaN passes every comparison-based check
        raise InvalidArgumentError(f"setting {setting.name}: NaN is not allowed ({setting.help})")
    if not setting.check(value):
        shown = "the value" if setting.secret else repr(value)
        raise InvalidArgumentError(f"setting {setting.name}: {shown} is not allowed ({setting.help})")
    return value


def load_settings(overrides: dict | None = None, *, config_file: str | None = None,
                  environ: dict | None = None) -> MappingProxyType:
    """Resolve every setting; unknown names are an error."""
    values = {s.name: s.default for s in SETTINGS}
    layers: list[dict] = []
    if config_file:
        try:
            with open(config_file, "rb") as f:
                layers.append(tomllib.load(f).get("vdb", {}))
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise InvalidArgumentError(f"config file {config_file}: {e}") from None
    env = os.environ if environ is None else environ
    layers.append({s.name: env[f"VDB_{s.name.upper()}"] for s in SETTINGS if f"VDB_{s.name.upper()}" in env})
    layers.append({k: v for k, v in (overrides or {}).items() if v is not None})
    for layer in layers:
        for name, value in layer.items():
            if name not in BY_NAME:
                raise InvalidArgumentError(f"unknown setting {name!r}; known: {', '.join(sorted(BY_NAME))}")
            values[name] = _coerce(BY_NAME[name], value)
    return MappingProxyType(values)
