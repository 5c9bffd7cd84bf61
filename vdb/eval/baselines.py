"""In-memory faiss peers measured in the same run as vdb: Flat (exact), IVF-Flat and HNSW.

Metric conventions follow vdb's (smaller is nearer): l2 -> squared L2; ip -> -dot; cosine -> 1 - cos, with the
vectors normalised first (faiss has no cosine metric). Build-time knobs: IVF `nlist` (default 4 sqrt(n)),
`niter`; HNSW `M` (32), `efConstruction` (80). Query-time knobs: IVF `nprobe`, HNSW `efSearch`.
Timing runs single-threaded (`measure.single_thread`), so QPS compares like with like.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import faiss
import numpy as np

from index.distance import normalize
from vdb.eval.systems import BuildInfo

log = logging.getLogger(__name__)
FAMILIES = {"faiss-flat": "exact", "faiss-ivf": "partition", "faiss-hnsw": "graph"}
BUILD_KEYS = {"faiss-flat": set(), "faiss-ivf": {"nlist", "niter"}, "faiss-hnsw": {"M", "efConstruction"}}
SEARCH_KEYS = {"faiss-flat": set(), "faiss-ivf": {"nprobe"}, "faiss-hnsw": {"efSearch"}}
IVF_TRAIN_PER_LIST = 64


def default_nlist(n: int) -> int:
    return int(max(1, min(n // 39, round(4 * np.sqrt(n)))))


class FaissSystem:
    def __init__(self, kind: str, metric: str, build: dict | None = None, *, seed: int = 0):
        if kind not in FAMILIES:
            raise ValueError(f"unknown faiss system {kind!r}")
        self.kind, self.metric, self.family = kind, metric, FAMILIES[kind]
        self.build_params = dict(build or {})
        self.seed = seed
        self.index: faiss.Index | None = None

    def _prepare(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, np.float32)
        return normalize(x, allow_zero=True) if self.metric == "cosine" else x

    def _metric_type(self) -> int:
        return faiss.METRIC_L2 if self.metric == "l2" else faiss.METRIC_INNER_PRODUCT

    def build(self, base: np.ndarray, workdir: Path | None = None, progress=None) -> BuildInfo:
        t = time.perf_counter()
        x = self._prepare(base)
        self.index = getattr(self, f"_build_{self.kind.split('-')[1]}")(x)
        seconds = time.perf_counter() - t
        ram = int(faiss.serialize_index(self.index).nbytes)
        return BuildInfo(seconds=round(seconds, 3), ram_bytes=ram, disk_bytes=0, details=dict(self.build_params))

    def _build_flat(self, x: np.ndarray) -> faiss.Index:
        index = faiss.IndexFlat(x.shape[1], self._metric_type())
        index.add(x)
        return index

    def _build_ivf(self, x: np.ndarray) -> faiss.Index:
        nlist = int(self.build_params.get("nlist", default_nlist(len(x))))
        quantizer = faiss.IndexFlat(x.shape[1], self._metric_type())
        index = faiss.IndexIVFFlat(quantizer, x.shape[1], nlist, self._metric_type())
        index.cp.seed = self.seed
        index.cp.niter = int(self.build_params.get("niter", 20))
        rng = np.random.default_rng(self.seed)
        train = x[np.sort(rng.choice(len(x), min(len(x), IVF_TRAIN_PER_LIST * nlist), replace=False))]
        index.train(train)
        index.add(x)
        return index

    def _build_hnsw(self, x: np.ndarray) -> faiss.Index:
        index = faiss.IndexHNSWFlat(x.shape[1], int(self.build_params.get("M", 32)), self._metric_type())
        index.hnsw.efConstruction = int(self.build_params.get("efConstruction", 80))
        index.add(x)
        return index

    def search(self, queries: np.ndarray, k: int, params: dict,
               counters: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        if "nprobe" in params:
            self.index.nprobe = int(params["nprobe"])
        if "efSearch" in params:
            self.index.hnsw.efSearch = int(params["efSearch"])
        d, ids = self.index.search(self._prepare(queries), k)
        return ids.astype(np.int64), self._to_vdb_distance(d)

    def _to_vdb_distance(self, d: np.ndarray) -> np.ndarray:
        if self.metric == "ip":
            d = -d
        elif self.metric == "cosine":
            d = 1.0 - d
        return d.astype(np.float32)

    def close(self) -> None:
        self.index = None
