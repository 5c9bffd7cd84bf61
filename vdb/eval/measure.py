"""Timing one operating point of one system: a batch pass (QPS, and the results every metric is computed from)
and single-query passes (latency percentiles). Everything runs on one thread (faiss's OpenMP pool is pinned
to 1 while measuring), after one warm-up query.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import faiss
import numpy as np


@dataclass(frozen=True)
class Measurement:
    ids: np.ndarray                # [nq, k] from the batch pass
    dists: np.ndarray
    latency_s: np.ndarray          # single-query latencies (the first `latency_queries` queries)
    batch_seconds: float
    counters: dict                 # per-query averages of the system's I/O counters (vdb), else {}

    @property
    def qps(self) -> float:
        return len(self.ids) / self.batch_seconds if self.batch_seconds > 0 else float("inf")


@contextlib.contextmanager
def single_thread():
    """Pin faiss to one thread for the duration (restored afterwards)."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def measure_point(system, queries: np.ndarray, k: int, params: dict, *, latency_queries: int) -> Measurement:
    with single_thread():
        system.search(queries[:1], k, params)                      # warm-up: JIT, first pages
        if hasattr(system, "prepare"):                             # e.g. prime the semantic cache
            system.prepare(queries, k, params)
        counters: dict = {}
        t = time.perf_counter()
        ids, dists = system.search(queries, k, params, counters)
        batch = time.perf_counter() - t
        latency = single_query_latencies(system, queries[:latency_queries], k, params)
    per_query = {f"{key}_per_query": value / len(queries) for key, value in counters.items()}
    return Measurement(ids, dists, latency, batch, per_query)


def single_query_latencies(system, queries: np.ndarray, k: int, params: dict) -> np.ndarray:
    out = np.empty(len(queries))
    for i in range(len(queries)):
        t = time.perf_counter()
        system.search(queries[i: i + 1], k, params)
        out[i] = time.perf_counter() - t
    return out
