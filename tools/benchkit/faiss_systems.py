"""In-memory faiss peers: IVF-Flat, IVF-SQ8 and HNSW(M=32), built on both cores, searched on one pinned thread.

IVF-Flat and IVF-SQ8 share one coarse quantizer (nlist = 4 sqrt(n), k-means on 64 x nlist samples, 10
iterations): it is trained once and its time is counted in both build times. RAM is the RSS delta of reading
the serialized index back into this process (`faiss.read_index`), next to the serialized size.
"""
from __future__ import annotations

import gc
import time
from pathlib import Path

import faiss
import numpy as np

from benchkit import measure
from benchkit.datasets import Dataset
from peers.procstats import rss_delta, status, trim_heap

IVF_NPROBES = (1, 2, 4, 8, 16, 32, 64, 128)
HNSW_EFS = (10, 16, 24, 32, 48, 64, 96, 128, 256)
HNSW_M, HNSW_EF_CONSTRUCTION = 32, 40


def nlist_for(n: int) -> int:
    return int(max(1, min(n // 39, round(4 * np.sqrt(n)))))


def _metric(ds: Dataset) -> int:
    return faiss.METRIC_L2 if ds.metric == "l2" else faiss.METRIC_INNER_PRODUCT  # cosine data is unit-norm


def train_coarse(ds: Dataset, threads: int) -> tuple[faiss.Index, float, int]:
    faiss.omp_set_num_threads(threads)
    nlist = nlist_for(ds.n)
    t = time.perf_counter()
    rng = np.random.default_rng(0)
    sample = ds.base[np.sort(rng.choice(ds.n, min(ds.n, 64 * nlist), replace=False))]
    km = faiss.Clustering(ds.base.shape[1], nlist)
    km.niter, km.seed, km.max_points_per_centroid = 10, 0, 64
    if ds.metric != "l2":
        km.spherical = True
    quantizer = faiss.IndexFlat(ds.base.shape[1], _metric(ds))
    km.train(np.ascontiguousarray(sample), quantizer)
    return quantizer, time.perf_counter() - t, nlist


def build_ivf(ds: Dataset, coarse: faiss.Index, nlist: int, kind: str, threads: int) -> tuple[faiss.Index, float]:
    faiss.omp_set_num_threads(threads)
    t = time.perf_counter()
    q = faiss.clone_index(coarse)
    d = ds.base.shape[1]
    if kind == "ivf-flat":
        index = faiss.IndexIVFFlat(q, d, nlist, _metric(ds))
    else:
        index = faiss.IndexIVFScalarQuantizer(q, d, nlist, faiss.ScalarQuantizer.QT_8bit, _metric(ds))
        rng = np.random.default_rng(1)
        index.train(np.ascontiguousarray(ds.base[np.sort(rng.choice(ds.n, min(ds.n, 100_000), replace=False))]))
    index.is_trained = True
    index.own_fields = True
    q.this.disown()
    for s in range(0, ds.n, 200_000):
        index.add(np.ascontiguousarray(ds.base[s: s + 200_000]))
    return index, time.perf_counter() - t


def build_hnsw(ds: Dataset, threads: int) -> tuple[faiss.Index, float]:
    faiss.omp_set_num_threads(threads)
    t = time.perf_counter()
    index = faiss.IndexHNSWFlat(ds.base.shape[1], HNSW_M, _metric(ds))
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index.add(np.ascontiguousarray(ds.base))
    return index, time.perf_counter() - t


def reload_measured(index: faiss.Index, path: Path) -> tuple[faiss.Index, dict]:
    """Write the index, free it, read it back: the RSS delta of the read is the index's resident RAM."""
    faiss.write_index(index, str(path))
    del index
    gc.collect()
    trim_heap()
    s0 = status()
    index = faiss.read_index(str(path))
    s1 = status()
    size = path.stat().st_size
    path.unlink()
    return index, {"serialized_bytes": size, "status_before": s0, "status_after_load": s1,
                   "rss_after_load": rss_delta(s0, s1)}


def sweep(index: faiss.Index, ds: Dataset, knob: str, values, cfg, name: str) -> list[dict]:
    points = []
    for v in values:
        if knob == "nprobe":
            index.nprobe = v
        else:
            index.hnsw.efSearch = v

        def batch(qs):
            return index.search(qs, cfg.k)[1]

        def one(q):
            return index.search(q[None, :], cfg.k)

        with measure.pinned(cfg.cpu):
            ids, w = measure.warm(batch, one, ds.queries, cfg.n_single)
        points.append({"params": {knob: v}, "ids": ids, "warm": w, "cold": None})
        measure.progress(f"[{name}] {ds.name} {knob}={v} qps={w['qps']} p50={w['p50_ms']} ms")
    return points


def run_all(ds: Dataset, workdir: Path, cfg, kinds=("ivf-flat", "ivf-sq8", "hnsw"), full: bool = True) -> list[dict]:
    out = []
    coarse = None
    for kind in kinds:
        sysname = f"faiss-{kind}"
        try:
            if kind.startswith("ivf"):
                if coarse is None:
                    coarse, coarse_s, nlist = train_coarse(ds, cfg.build_threads)
                index, add_s = build_ivf(ds, coarse, nlist, kind, cfg.build_threads)
                build = {"build_s": round(coarse_s + add_s, 3), "coarse_train_s": round(coarse_s, 3),
                         "train_sq_and_add_s": round(add_s, 3), "nlist": nlist, "threads": cfg.build_threads}
                knob, values = "nprobe", IVF_NPROBES
            else:
                index, seconds = build_hnsw(ds, cfg.build_threads)
                build = {"build_s": round(seconds, 3), "M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION,
                         "threads": cfg.build_threads}
                knob, values = "efSearch", HNSW_EFS
            index, ram = reload_measured(index, workdir / f"{sysname}-{ds.name}.faissindex")
            c = cfg if full else cfg.replace(n_single=min(cfg.n_single, 200))
            out.append({"system": sysname, "kind": "in memory", "build": build, "ram": ram,
                        "disk": None, "points": sweep(index, ds, knob, values, c, sysname)})
            del index
            gc.collect()
        except Exception as e:  # keep going: a failed peer is reported, not fatal
            out.append({"system": sysname, "error": f"{type(e).__name__}: {e}"})
    return out
