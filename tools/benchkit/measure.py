"""One operating point, measured the same way for every in-process system (vdb, faiss).

warm: all queries in batch calls of 1,000 (QPS = 1,000 / median call time; the ids give recall), then
`n_single` single-query calls (p50/p99).
cold: before each of `n_cold` single queries the index files are evicted from the page cache (read_bytes delta
from /proc/self/io gives bytes read per query); then the cache is evicted once and `n_cold_batch` queries run
as one batch (cold-start batch QPS). Searches run on one thread pinned to one CPU (`pinned`).
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from peers.procstats import percentiles, time_batch, time_chunks, time_singles  # noqa: E402


@contextlib.contextmanager
def pinned(cpu: int | None):
    """Pin the calling thread to `cpu` and faiss to one OpenMP thread; restore both afterwards."""
    before_cpus = os.sched_getaffinity(0)
    before_omp = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before_cpus)
        faiss.omp_set_num_threads(before_omp)


def warm(search_batch, search_one, queries: np.ndarray, n_single: int) -> tuple[np.ndarray, dict]:
    search_one(queries[0])
    batch, ids, io = time_chunks(search_batch, queries)
    lat, _ = time_singles(search_one, queries[:n_single])
    return ids, {**batch, "read_bytes_per_query": io / len(queries), **percentiles(lat)}


def cold(search_batch, search_one, queries: np.ndarray, n_cold: int, n_cold_batch: int, evict) -> dict:
    lat, io = time_singles(search_one, queries[:n_cold], before_each=evict)
    evict()
    seconds, _, io_batch = time_batch(search_batch, queries[:n_cold_batch])
    return {**percentiles(lat), "read_bytes_per_query": io / max(1, n_cold),
            "qps": round(n_cold_batch / seconds, 2), "batch_n": n_cold_batch,
            "batch_read_bytes_per_query": io_batch / max(1, n_cold_batch)}


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
