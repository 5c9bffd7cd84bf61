"""vdb's SPANN disk index: build, RAM, disk, and the nprobe sweep warm and cold.

Cold cache: `SpannIndex.drop_cache()` alone evicts nothing the index has already touched, because
posix_fadvise(DONTNEED) skips pages that are mapped into a process and the index reads its files through mmap.
`evict` therefore first drops this process's own mappings of the posting and vector files
(madvise(MADV_DONTNEED), reaching into `MappedFile._map`), then calls `drop_cache()`. The run records the
read_bytes of a few queries after `drop_cache()` alone as evidence (`drop_cache_alone`).
"""
from __future__ import annotations

import gc
import mmap
import time
from pathlib import Path

import faiss
import numpy as np

from benchkit import measure
from benchkit.datasets import Dataset
from index import BuildParams, SearchStats, SpannIndex, build_index
from peers.procstats import io_read_bytes, rss_delta, status, trim_heap


def evict(idx: SpannIndex) -> None:
    for store in (idx.files.postings, idx.files.vectors):
        m = getattr(store._file, "_map", None)
        if m is not None:
            m.madvise(mmap.MADV_DONTNEED)
    idx.drop_cache()


def build(ds: Dataset, path: Path, threads: int = 2) -> dict:
    faiss.omp_set_num_threads(threads)
    t = time.perf_counter()
    summary = build_index(ds.base, path, params=BuildParams(metric=ds.metric), overwrite=True)
    seconds = time.perf_counter() - t
    keep = ("n_heads", "head_index", "posting_cap", "postings_over_cap", "posting_lengths", "records",
            "replicas_mean", "replicas_max", "vectors_without_posting")
    return {"build_s": round(seconds, 3), "threads": threads, "timings_s": summary["timings_s"],
            **{k: summary[k] for k in keep if k in summary}}


def open_measured(path: Path) -> tuple[SpannIndex, dict]:
    gc.collect()
    trim_heap()
    s0 = status()
    idx = SpannIndex.open(path)
    s1 = status()
    trim_heap()  # what stays once glibc returns the freed temporaries of open (blob copies, deserialization)
    s2 = status()
    return idx, {"status_before": s0, "status_after_open": s1, "rss_after_open": rss_delta(s0, s1),
                 "rss_after_open_trimmed": rss_delta(s0, s2)}


def disk(idx: SpannIndex, ds: Dataset) -> dict:
    files = idx.info()["disk_bytes"]
    int8 = ds.n * ds.base.shape[1]
    return {"n": ds.n, "dim": int(ds.base.shape[1]), "files": files, "postings": files["postings.dat"],
            "total": files["total"], "int8_data": int8,
            "float32_data": int8 * 4, "postings_over_int8": round(files["postings.dat"] / int8, 3),
            "total_over_int8": round(files["total"] / int8, 3)}


def _searchers(idx: SpannIndex, k: int, nprobe: int, prefetch: bool = False):
    def batch(qs):
        return idx.search(qs, k, nprobe=nprobe, prefetch=prefetch)[0]

    def one(q):
        return idx.search(q, k, nprobe=nprobe, prefetch=prefetch)
    return batch, one


def sweep(idx: SpannIndex, ds: Dataset, nprobes, cfg) -> list[dict]:
    """Every point warm first, then every point cold (a cold run leaves the cache cold for the next point)."""
    points = []
    nq = len(ds.queries)
    for nprobe in nprobes:
        batch, one = _searchers(idx, cfg.k, nprobe)
        st = SearchStats()
        with measure.pinned(cfg.cpu):
            ids, w = measure.warm(batch, one, ds.queries, cfg.n_single)
            t = time.perf_counter()
            idx.search(ds.queries, cfg.k, nprobe=nprobe, stats=st)  # not in QPS: SearchStats costs a Python loop
            w["qps_with_stats_one_call"] = round(nq / (time.perf_counter() - t), 2)
        points.append({"params": {"nprobe": nprobe}, "ids": ids, "warm": w,
                       "per_query": {k: v / nq for k, v in st.as_dict().items()}})
        measure.progress(f"[vdb] {ds.name} nprobe={nprobe} qps={w['qps']} p50={w['p50_ms']} ms")
    if not cfg.cold:
        return points
    for point in points:
        nprobe = point["params"]["nprobe"]
        with measure.pinned(cfg.cpu):
            batch, one = _searchers(idx, cfg.k, nprobe)
            point["cold"] = measure.cold(batch, one, ds.queries, cfg.n_cold, cfg.n_cold_batch, lambda: evict(idx))
            if cfg.cold_prefetch:
                batch, one = _searchers(idx, cfg.k, nprobe, prefetch=True)
                point["cold_prefetch"] = measure.cold(batch, one, ds.queries, cfg.n_cold, cfg.n_cold_batch,
                                                      lambda: evict(idx))
        measure.progress(f"[vdb] {ds.name} nprobe={nprobe} cold p50={point['cold']['p50_ms']} ms")
    return points


def drop_cache_alone(idx: SpannIndex, ds: Dataset, nprobe: int, n: int = 50) -> dict:
    """read_bytes and latency when only `drop_cache()` runs before each query (the library's own cold path),
    after one pass over the same queries has mapped their pages, against madvise + drop_cache."""
    evict(idx)
    for q in ds.queries[:n]:
        idx.search(q, 10, nprobe=nprobe)
    out = {"loadavg": Path("/proc/loadavg").read_text().split()[:3]}
    for name, fn in (("drop_cache_only", idx.drop_cache), ("madvise_then_drop_cache", lambda: evict(idx))):
        lat, io = [], 0
        for q in ds.queries[:n]:
            fn()
            r0 = io_read_bytes()
            t = time.perf_counter()
            idx.search(q, 10, nprobe=nprobe)
            lat.append(time.perf_counter() - t)
            io += io_read_bytes() - r0
        out[name] = {"read_bytes_per_query": io / n, "p50_ms": round(float(np.median(lat)) * 1e3, 4)}
    return {"nprobe": nprobe, "queries": n, **out}


def run(ds: Dataset, workdir: Path, nprobes, cfg, *, full: bool = True) -> dict:
    """Build, open, warm up, sweep. `full=False` (scaling runs): warm batch QPS only."""
    path = workdir / f"vdb-{ds.name}"
    result = {"system": "vdb", "kind": "disk (SPANN: heads in RAM, INT8 postings + float32 rows via mmap)",
              "build": build(ds, path, cfg.build_threads)}
    idx, ram = open_measured(path)
    try:
        result["disk"] = disk(idx, ds)
        with measure.pinned(cfg.cpu):
            idx.search(ds.queries, cfg.k, nprobe=max(nprobes))  # warm-up: JIT, checksums, page cache
        s2 = status()
        ram.update({"resident_bytes": idx.resident_bytes(), "status_after_warmup": s2,
                    "rss_after_warmup": rss_delta(ram["status_before"], s2)})
        result["ram"] = ram
        if not full:
            cfg = cfg.replace(cold=False, n_single=min(cfg.n_single, 200))
        result["points"] = sweep(idx, ds, nprobes, cfg)
        if full and cfg.cold:
            result["cold_eviction_check"] = drop_cache_alone(idx, ds, nprobe=16)
        result["info"] = {k: v for k, v in idx.info().items()
                          if k in ("heads", "head_index", "posting_lengths", "build_params")}
    finally:
        idx.close()
    return result
