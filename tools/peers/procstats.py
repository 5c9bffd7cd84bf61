"""Process counters and timing helpers shared by the benchmark and the out-of-process peer runners.

Standard library + numpy only: the runners import this file from their own virtualenvs.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np


def status() -> dict:
    """Resident memory of this process in bytes: VmRSS, RssAnon (heap), RssFile (mapped file pages), VmHWM."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def trim_heap() -> None:
    """Return freed heap to the OS (glibc malloc_trim) so that an RSS delta measures new allocations only."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rss_delta(before: dict, after: dict) -> dict:
    return {f"{k}_delta": after[k] - before[k] for k in ("VmRSS", "RssAnon", "RssFile") if k in before}


def io_read_bytes() -> int:
    """Bytes this process caused to be fetched from storage (/proc/self/io read_bytes), all threads."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    return 0


def drop_files(paths) -> int:
    """posix_fadvise(DONTNEED) every file (recursively for directories); returns the bytes covered.

    Pages mapped into a process (mmap) are *not* evicted by this; callers that mmap must unmap or
    madvise(MADV_DONTNEED) their own mappings first."""
    total = 0
    for p in paths:
        p = Path(p)
        files = [f for f in p.rglob("*") if f.is_file()] if p.is_dir() else [p]
        for f in files:
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                total += os.fstat(fd).st_size
            finally:
                os.close(fd)
    return total


def percentiles(seconds: np.ndarray) -> dict:
    s = np.asarray(seconds, dtype=np.float64) * 1e3
    return {"p50_ms": round(float(np.percentile(s, 50)), 4), "p99_ms": round(float(np.percentile(s, 99)), 4),
            "mean_ms": round(float(s.mean()), 4), "n": int(len(s))}


def time_singles(search_one, queries: np.ndarray, before_each=None) -> tuple[np.ndarray, int]:
    """Latency of each single query (seconds) and the read_bytes delta over the loop.
    `before_each` (e.g. dropping the page cache) runs outside the timed region."""
    out = np.empty(len(queries))
    io0 = io_read_bytes()
    for i in range(len(queries)):
        if before_each is not None:
            before_each()
        t = time.perf_counter()
        search_one(queries[i])
        out[i] = time.perf_counter() - t
    return out, io_read_bytes() - io0


def time_batch(search_batch, queries: np.ndarray):
    """(seconds, result, read_bytes delta) of one batch call."""
    io0 = io_read_bytes()
    t = time.perf_counter()
    result = search_batch(queries)
    return time.perf_counter() - t, result, io_read_bytes() - io0


def time_chunks(search_batch, queries: np.ndarray, chunk: int = 1000) -> tuple[dict, np.ndarray, int]:
    """Batch QPS robust to a noisy machine: the queries go in calls of `chunk`; QPS = chunk / median call time.
    Returns ({qps, qps_chunks, batch_n, chunk}, ids of all queries in order, read_bytes delta)."""
    times, ids = [], []
    io0 = io_read_bytes()
    for s in range(0, len(queries), chunk):
        part = queries[s: s + chunk]
        t = time.perf_counter()
        ids.append(np.asarray(search_batch(part)))
        times.append((time.perf_counter() - t) / len(part))
    io = io_read_bytes() - io0
    per_query = np.asarray(times)
    return ({"qps": round(float(1.0 / np.median(per_query)), 2),
             "qps_all": round(float(len(queries) / (per_query.sum() * chunk)), 2) if len(per_query) else None,
             "qps_chunks": [round(float(1.0 / t), 1) for t in per_query], "batch_n": len(queries), "chunk": chunk},
            np.concatenate(ids), io)


def cold_point(search_one, search_batch, queries: np.ndarray, paths, n_cold: int, n_cold_batch: int) -> dict:
    """One operating point with a cold page cache: `paths` are dropped before each of n_cold single queries
    (percentiles, bytes read per query), then once before a batch of n_cold_batch (QPS of a cold start)."""
    cold, io_cold = time_singles(search_one, queries[:n_cold], before_each=lambda: drop_files(paths))
    drop_files(paths)
    cold_seconds, _, io_cold_batch = time_batch(search_batch, queries[:n_cold_batch])
    return {**percentiles(cold), "read_bytes_per_query": io_cold / max(1, n_cold),
            "qps": round(n_cold_batch / cold_seconds, 2), "batch_n": n_cold_batch,
            "batch_read_bytes_per_query": io_cold_batch / n_cold_batch}
