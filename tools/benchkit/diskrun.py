"""What tools/bench_disk.py measures inside the memory cgroup, one system per child process.

Both systems get the same treatment: open (anonymous RSS after it and its peak during it), page cache of the
index files dropped, a warm-up of `warm` single queries, then per operating point `n` single queries from a
fresh slice of the query set (so no point finds the previous point's postings cached for the very same
queries): recall@10, p50/p99, single-thread QPS (1 / mean latency), device pages read per query (read_bytes of
/proc/self/io, and for vdb its own counters). Then the same with 2-16 queries in flight (threads looping
single queries; numba, faiss and the AIO wait all release the GIL): throughput and pages per query.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchkit.memwatch import PeakAnon, status  # noqa: E402
from peers.procstats import drop_files, io_read_bytes  # noqa: E402

K = 10


class Slices:
    """Consecutive, disjoint slices of the query set."""

    def __init__(self, queries: np.ndarray, truth: np.ndarray):
        self.queries, self.truth, self.pos = queries, truth, 0

    def take(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if self.pos + n > len(self.queries):
            self.pos = 0  # wrapped: reported as such by the caller's counts
        s = slice(self.pos, self.pos + n)
        self.pos += n
        return self.queries[s], self.truth[s]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    t = truth[:, :K]
    return float(np.mean([len(np.intersect1d(f[f >= 0], r)) / K for f, r in zip(found, t)]))


def singles(search_one, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    ids = np.full((len(queries), K), -1, np.int64)
    lat = np.empty(len(queries))
    io0 = io_read_bytes()
    for i, q in enumerate(queries):
        t = time.perf_counter()
        ids[i] = search_one(q)
        lat[i] = time.perf_counter() - t
    return ids, lat, io_read_bytes() - io0


def in_flight(search_one, queries: np.ndarray, threads: int) -> dict:
    """`threads` threads each looping single queries over its share; throughput over the wall time."""
    ids = np.full((len(queries), K), -1, np.int64)
    parts = np.array_split(np.arange(len(queries)), threads)
    lats: list[float] = []
    lock = threading.Lock()

    def work(rows):
        mine = []
        for i in rows:
            t = time.perf_counter()
            ids[i] = search_one(queries[i])
            mine.append(time.perf_counter() - t)
        with lock:
            lats.extend(mine)

    io0 = io_read_bytes()
    t0 = time.perf_counter()
    pool = [threading.Thread(target=work, args=(p,)) for p in parts]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    wall = time.perf_counter() - t0
    return {"threads": threads, "qps": round(len(queries) / wall, 1), "n": len(queries),
            "read_bytes_per_query": (io_read_bytes() - io0) / len(queries), **pct(np.asarray(lats))}, ids


def pct(seconds: np.ndarray) -> dict:
    ms = seconds * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "mean_ms": round(float(ms.mean()), 3), "qps_1thread": round(1000.0 / float(ms.mean()), 1)}


def measure(opener, name: str, points: list, files: list, queries: np.ndarray, truth: np.ndarray, warm: int,
            n: int, flights: list[int], counters=None, save=None) -> dict:
    """opener() -> (searcher factory: params -> search_one, close); the protocol described above."""
    s0 = status()
    drop_files(files)
    with PeakAnon() as peak:
        t = time.perf_counter()
        make, close, info = opener()
        open_s = time.perf_counter() - t
    s1 = status()
    out = {"system": name, "open_s": round(open_s, 3), "status_before_open": s0, "status_after_open": s1,
           "anon_after_open": s1["RssAnon"], "anon_peak_open": peak.peak, "info": info, "points": [],
           "in_flight": []}
    sl = Slices(queries, truth)
    wq, _ = sl.take(warm)
    first = make(points[0])
    t = time.perf_counter()
    ids, lat, io = singles(first, wq)
    out["warmup"] = {"n": warm, "s": round(time.perf_counter() - t, 2), **pct(lat),
                     "read_bytes_per_query": io / warm, "params": points[0]}
    for params in points:
        search_one = make(params)
        q, tr = sl.take(n)
        c0 = counters() if counters else None
        ids, lat, io = singles(search_one, q)
        row = {"params": params, "recall": round(recall(ids, tr), 4), "n": n, **pct(lat),
               "read_bytes_per_query": io / n, "read_kb_per_query": io / n / 1024}
        if counters:
            row["own_counters_per_query"] = _per_query(c0, counters(), n)
        out["points"].append(row)
        if save:
            save(out)  # a child killed later (OOM) still leaves what it measured
        print(f"[{name}] {params} recall={row['recall']} p50={row['p50_ms']} p99={row['p99_ms']} "
              f"qps1={row['qps_1thread']} KB/q={row['read_kb_per_query']:.1f}" +
              (f" reads/q={_reads(row['own_counters_per_query']):.1f}" if counters else ""), file=sys.stderr, flush=True)
    for params in [p for p in points if p.get("in_flight")] or points[:1]:
        search_one = make(params)
        for threads in flights:
            q, tr = sl.take(n)
            c0 = counters() if counters else None
            row, ids = in_flight(search_one, q, threads)
            row.update(params=params, recall=round(recall(ids, tr), 4), read_kb_per_query=row["read_bytes_per_query"] / 1024)
            if counters:
                row["own_counters_per_query"] = _per_query(c0, counters(), n)
            out["in_flight"].append(row)
            if save:
                save(out)
            print(f"[{name}] {threads} in flight: {row['qps']} qps, p50 {row['p50_ms']} ms, recall {row['recall']}",
                  file=sys.stderr, flush=True)
    out["status_end"] = status()
    close()
    return out


def _per_query(a: dict, b: dict, n: int) -> dict:
    return {f"{part}_{k}": (b[part][k] - a[part][k]) / n for part in ("postings", "rows") for k in ("reads", "pages")} | \
        {"cache_hit_rate": _rate(a["cache"], b["cache"])}


def _reads(per_query: dict) -> float:
    """Device requests per query (postings and rows): what the issue's page-read budget counts since a read of a
    row is one 512-byte-aligned request rather than a 4 KiB page (storage/blockio.py)."""
    return per_query["postings_reads"] + per_query["rows_reads"]


def _rate(a: dict, b: dict) -> float:
    h, m = b["hits"] - a["hits"], b["misses"] - a["misses"]
    return round(h / max(1, h + m), 4)


# -- the two systems ---------------------------------------------------------------------------------------
def vdb_opener(path: str, budget_mb: float, scan_tier: bool = True):
    def opener():
        from index import SpannIndex
        idx = SpannIndex.open(path, memory_budget_mb=budget_mb, scan_tier=scan_tier)

        def make(params):
            knobs = {k: v for k, v in params.items() if k != "in_flight"}
            return lambda q: idx.search(q, K, **knobs)[0]
        info = {"resident_bytes": idx.resident_bytes(), "calibration": idx.calibration,
                "memory_budget_mb": budget_mb, "head_index": idx.head_index.kind,
                "default_nprobe": idx.default_nprobe()}
        if idx.disk is not None:
            info.update(direct_io=idx.disk.post_reader.direct, cache_budget_bytes=idx.disk.cache.budget)
        if idx.tier is not None:
            info.update(scan_tier_bytes=idx.tier.nbytes, scan_tier_locked=idx.tier.locked,
                        scan_tier_stale_postings=idx.tier.stale_postings(), scan_code_bytes=idx.tier.codes.code_bytes)
        opener.idx = idx
        return make, idx.close, info
    return opener


def faiss_opener(path: str):
    def opener():
        import faiss
        faiss.omp_set_num_threads(1)
        index = faiss.read_index(path, faiss.IO_FLAG_MMAP)
        ivf = faiss.extract_index_ivf(index)

        def make(params):
            ps = faiss.SearchParametersIVF(nprobe=int(params["nprobe"]))
            return lambda q: index.search(q[None, :], K, params=ps)[1][0]
        return make, lambda: None, {"nlist": ivf.nlist, "file_bytes": os.path.getsize(path)}
    return opener


def main() -> None:
    """python diskrun.py SPEC.json OUT.json (run by bench_disk.py inside the cgroup)."""
    spec = json.loads(Path(sys.argv[1]).read_text())
    queries = np.load(spec["queries"]).astype(np.float32)
    truth = np.load(spec["truth"])
    from vdb.config import tune_process
    tune_process()  # faiss head search on one OpenMP thread (spin-waiting OpenMP costs ms on a busy machine)
    if spec["system"] in ("vdb", "vdb-int8"):  # vdb-int8: the same index served from disk without its scan tier
        opener = vdb_opener(spec["index"], spec["budget_mb"], scan_tier=spec["system"] == "vdb")
        counters = lambda: opener.idx.disk.io_stats()  # noqa: E731
    elif spec["system"] == "vdb-mmap":
        opener, counters = vdb_opener(spec["index"], None), None
    else:
        opener, counters = faiss_opener(spec["index"]), None
    partial = Path(sys.argv[2]).with_suffix(".partial.json")

    def save(res):
        partial.write_text(json.dumps(res, indent=1, default=float))
    res = measure(opener, spec["system"], spec["points"], spec["files"], queries, truth, spec["warm"], spec["n"],
                  spec["flights"], counters, save)
    Path(sys.argv[2]).write_text(json.dumps(res, indent=1, default=float))
    partial.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
