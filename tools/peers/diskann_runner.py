"""diskannpy 0.7.0 StaticDiskIndex peer, run in its own virtualenv (numpy 1.25; see setup.sh).

    python diskann_runner.py build  --base B.npy --metric l2 --out DIR --pq-bytes 32 --json build.json
    python diskann_runner.py search --index DIR --queries Q.npy --metric l2 --Ls 10,20,40 --json search.json

Caveats (docs/benchmarks.md): with numpy 2.x diskannpy returns wrong neighbours; `StaticDiskIndex(num_threads=1)`
hangs at load, so the index is opened with 2 threads and the process is pinned to one core by the caller
(taskset), single queries use `.search`; the disk index takes l2/mips only, so cosine data comes in normalised
and is searched with mips. The disk index reads with O_DIRECT (page cache bypassed), so "cold" differs from
"warm" only through DiskANN's own node cache, which is 0 nodes unless --cache-nodes is given.
Results: JSON (timings, RSS, read_bytes) and one ids .npy per operating point, next to the JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procstats import cold_point, percentiles, rss_delta, status, time_chunks, time_singles  # noqa: E402

PREFIX = "ann"


def ram_budget_gb(pq_bytes: int, n: int) -> float:
    """search_memory_maximum that makes DiskANN pick `pq_bytes` PQ chunks per vector.

    DiskANN: chunks = floor(budget_GB * 2**30 / n) for budgets under 1.25 GB; half a byte of margin per point
    keeps the floor from rounding down."""
    return (pq_bytes + 0.5) * n / 2**30


def cmd_build(a) -> dict:
    import diskannpy
    base = np.load(a.base, mmap_mode="r")
    n, dim = base.shape
    data = np.ascontiguousarray(base, dtype=np.float32)
    if a.metric == "mips":
        norms = np.linalg.norm(data[:1000], axis=1)
        if not np.allclose(norms, 1.0, atol=1e-3):
            raise SystemExit("mips here expects unit vectors (cosine data normalised by the caller)")
    Path(a.out).mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    diskannpy.build_disk_index(data=data, distance_metric=a.metric, index_directory=a.out, complexity=a.L,
                               graph_degree=a.R, search_memory_maximum=ram_budget_gb(a.pq_bytes, n),
                               build_memory_maximum=a.build_ram_gb, num_threads=a.threads, pq_disk_bytes=0,
                               vector_dtype=np.float32, index_prefix=PREFIX)
    seconds = time.perf_counter() - t
    files = {f.name: f.stat().st_size for f in Path(a.out).iterdir() if f.is_file()}
    return {"build_s": round(seconds, 3), "n": int(n), "dim": int(dim), "R": a.R, "L": a.L,
            "pq_bytes": a.pq_bytes, "threads": a.threads, "files": files,
            "disk_bytes": sum(files.values()), "disk_index_bytes": files.get(PREFIX + "_disk.index", 0)}


def cmd_search(a) -> dict:
    import diskannpy
    queries = np.ascontiguousarray(np.load(a.queries), dtype=np.float32)
    out_dir = Path(a.json).parent
    s0 = status()
    t = time.perf_counter()
    index = diskannpy.StaticDiskIndex(index_directory=a.index, num_threads=2, num_nodes_to_cache=a.cache_nodes,
                                      distance_metric=a.metric, vector_dtype=np.float32, index_prefix=PREFIX)
    load_s = time.perf_counter() - t
    s1 = status()
    index.search(queries[0], a.k, a.Ls[0], a.beam)
    points = []
    searchers = {}
    for L in a.Ls:  # every point warm first, then every point cold
        def one(q, L=L):
            return index.search(q, a.k, L, a.beam)

        def batch(qs, L=L):
            if a.batch_mode == "batch":
                return index.batch_search(qs, a.k, L, 1, a.beam).identifiers
            return np.stack([index.search(q, a.k, L, a.beam).identifiers for q in qs])

        searchers[L] = (one, batch)
        chunks, ids, io_batch = time_chunks(batch, queries)
        np.save(out_dir / f"ids-L{L}.npy", np.asarray(ids, dtype=np.int64))
        warm, _ = time_singles(one, queries[: a.n_single])
        points.append({"params": {"L": L, "beam_width": a.beam}, "ids_file": f"ids-L{L}.npy",
                       "warm": {**chunks, **percentiles(warm), "read_bytes_per_query": io_batch / len(queries)}})
        print(f"[diskann] L={L} qps={points[-1]['warm']['qps']} p50={points[-1]['warm']['p50_ms']} ms",
              file=sys.stderr, flush=True)
    for point in points:
        one, batch = searchers[point["params"]["L"]]
        point["cold"] = cold_point(one, batch, queries, [a.index], a.n_cold, a.n_cold_batch)
    s2 = status()
    return {"load_s": round(load_s, 3), "status_before": s0, "status_after_load": s1, "status_after_runs": s2,
            "ram_after_load": rss_delta(s0, s1), "ram_after_runs": rss_delta(s0, s2),
            "batch_mode": a.batch_mode, "cache_nodes": a.cache_nodes, "points": points}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--base", required=True)
    b.add_argument("--metric", choices=("l2", "mips"), required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--R", type=int, default=64)
    b.add_argument("--L", type=int, default=100)
    b.add_argument("--pq-bytes", type=int, default=32)
    b.add_argument("--build-ram-gb", type=float, default=8.0)
    b.add_argument("--threads", type=int, default=2)
    s = sub.add_parser("search")
    s.add_argument("--index", required=True)
    s.add_argument("--queries", required=True)
    s.add_argument("--metric", choices=("l2", "mips"), required=True)
    s.add_argument("--k", type=int, default=10)
    s.add_argument("--Ls", type=lambda v: [int(x) for x in v.split(",")], default=[10, 20, 40, 80])
    s.add_argument("--beam", type=int, default=2)
    s.add_argument("--cache-nodes", type=int, default=0)
    s.add_argument("--batch-mode", choices=("batch", "loop"), default="batch")
    s.add_argument("--n-single", type=int, default=1000)
    s.add_argument("--n-cold", type=int, default=200)
    s.add_argument("--n-cold-batch", type=int, default=1000)
    for p in (b, s):
        p.add_argument("--json", required=True)
    a = ap.parse_args()
    result = cmd_build(a) if a.cmd == "build" else cmd_search(a)
    result["versions"] = {"numpy": np.__version__, "diskannpy": _version("diskannpy")}
    Path(a.json).write_text(json.dumps(result, indent=1))


def _version(name: str) -> str:
    from importlib.metadata import version
    return version(name)


if __name__ == "__main__":
    main()
