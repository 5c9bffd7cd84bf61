"""Distributed build benchmark: the same input built by the local build and on Ray with 1 and 2 workers.

Each Ray run starts (and stops) its own local Ray, so its total includes Ray's start-up; the partition phase
(assignment + INT8 encoding in the actor pool) is reported apart, with the pool's effective parallelism (actor
CPU-seconds per wall-second of the phase), which tells a busy machine from a pool that does not scale. Ratios
compare medians; recall@10 at a fixed nprobe (against exact search) checks that every build gives the same index
quality. Configurations run interleaved, and the 1-minute load average at the start of each run is kept.

    python tools/bench_ray_build.py --n 1000000 --dim 128 --repeat 3 --out docs/benchmarks/ray_build-1m.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from index import FlatIndex, SpannIndex, build_index, recall_at_k  # noqa: E402
from index.distributed import build_index_ray  # noqa: E402
from vdb.inputs.readers import open_vectors  # noqa: E402
from vdb.inputs.synthetic import clustered, clustered_queries  # noqa: E402


def dataset(n: int, dim: int, path: Path) -> Path:
    """The clustered n x dim set as .npy under bench-data/ (generated once, git-ignored)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, clustered(n, dim))
    return path


def recall(index_dir: Path, queries: np.ndarray, truth: np.ndarray, nprobe: int) -> float:
    with SpannIndex.open(index_dir) as idx:
        return round(recall_at_k(idx.search(queries, 10, nprobe=nprobe)[0], truth, 10), 4)


def run(engine: str, workers: int | None, args, path: Path, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    load = round(os.getloadavg()[0], 2)  # this machine is shared: contention shows up here
    t = time.perf_counter()
    if engine == "local":
        summary = build_index(open_vectors(path), out)
    else:
        summary = build_index_ray(path, out, workers=workers, partition_rows=args.partition_rows,
                                  head_sample=args.head_sample, reader=open_vectors)
    wall = time.perf_counter() - t
    row = {"engine": engine, "workers": workers, "total_s": round(wall, 2), "load_avg_1m_at_start": load,
           "timings_s": summary["timings_s"],
           "n_heads": summary["n_heads"], "head_index": summary["head_index"],
           "replicas_mean": summary["replicas_mean"], "ray": summary.get("ray")}
    print(json.dumps({k: row[k] for k in ("engine", "workers", "total_s")}), file=sys.stderr, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--input", help=".npy input (default: bench-data/clustered_<n>_<dim>.npy, generated)")
    ap.add_argument("--partition-rows", type=int, default=65536)
    ap.add_argument("--head-sample", type=int, default=None, help="train heads on this many sampled rows")
    ap.add_argument("--repeat", type=int, default=1, help="runs per configuration (medians reported)")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--nprobe", type=int, default=16)
    ap.add_argument("--scratch", default="bench-data/ray_build")
    ap.add_argument("--out", default="bench-data/ray_build.json")
    args = ap.parse_args()
    path = Path(args.input) if args.input else dataset(args.n, args.dim,
                                                       Path(f"bench-data/clustered_{args.n}_{args.dim}.npy"))
    base = open_vectors(path)
    queries = clustered_queries(args.queries, len(base), base.shape[1])
    truth, _ = FlatIndex(np.asarray(base, dtype=np.float32), "l2").search(queries, 10)
    scratch = Path(args.scratch)
    configs = [("local", None), ("ray", 1), ("ray", 2)]
    reps = {c: [] for c in configs}
    for _ in range(args.repeat):  # interleaved, so a change in the machine's load hits every configuration
        for engine, workers in configs:
            reps[(engine, workers)].append(run(engine, workers, args, path, scratch / f"{engine}-{workers or 0}"))
    runs = [{"engine": engine, "workers": workers, "runs": rs,
             "median_total_s": statistics.median(r["total_s"] for r in rs),
             "median_partitions_s": statistics.median(r["timings_s"].get("partitions", 0) for r in rs),
             "median_parallelism": statistics.median((r["ray"] or {}).get("parallelism", 1.0) for r in rs),
             "recall_at_10": recall(scratch / f"{engine}-{workers or 0}", queries, truth, args.nprobe)}
            for (engine, workers), rs in reps.items()]
    shutil.rmtree(scratch, ignore_errors=True)
    local, ray1, ray2 = runs

    result = {
        "benchmark": "ray_build", "input": str(path), "n": int(base.shape[0]), "dim": int(base.shape[1]),
        "partition_rows": args.partition_rows, "head_sample": args.head_sample, "nprobe": args.nprobe,
        "ray_version": ray2["runs"][0]["ray"]["ray_version"],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "runs": runs,
        "ratios": {
            "total_1_over_2_workers": round(ray1["median_total_s"] / ray2["median_total_s"], 3),
            "partitions_1_over_2_workers": round(ray1["median_partitions_s"] / ray2["median_partitions_s"], 3),
            "total_local_over_2_workers": round(local["median_total_s"] / ray2["median_total_s"], 3),
            "total_local_over_1_worker": round(local["median_total_s"] / ray1["median_total_s"], 3),
        },
        "recall_at_10": {"local": local["recall_at_10"], "ray_1": ray1["recall_at_10"],
                         "ray_2": ray2["recall_at_10"]},
        "median_of": args.repeat,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
