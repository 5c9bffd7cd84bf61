"""Single-query head search with one OpenMP thread (what HeadIndex.search does for one query when no process-wide
faiss_threads was set) against faiss's default team of all cores (what it did before), interleaved in one run,
on a quiet machine and with one core kept busy by another process (a busy machine: a writer, maintenance,
another tenant). One query gives faiss nothing to split across threads; a team still starts and spin-waits.

    .venv/bin/python tools/benchkit/head_threads.py bench-data/disk/index/vdb-c128-10000000 \
        bench-data/disk/data/clustered-queries-10000x128.npy --out docs/benchmarks/head-threads-10m.json

Measures HeadIndex.search(q, 64, ef 128): the default nprobe and beam of the 10M scan tier.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from index import SpannIndex  # noqa: E402
from index.centroids import set_search_threads  # noqa: E402
from vdb.eval.machine import git_revision, machine_info  # noqa: E402


def _spin(stop) -> None:
    while not stop.is_set():
        pass


def _latencies(head, queries: np.ndarray, n: int, ef: int) -> np.ndarray:
    out = np.empty(len(queries))
    for i, q in enumerate(queries):
        t = time.perf_counter()
        head.search(q[None, :], n, ef)
        out[i] = time.perf_counter() - t
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("index_dir")
    ap.add_argument("queries")
    ap.add_argument("--n", type=int, default=64, help="heads asked for (nprobe)")
    ap.add_argument("--ef", type=int, default=128)
    ap.add_argument("--per-round", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    queries = np.load(args.queries, mmap_mode="r")
    with SpannIndex.open(args.index_dir) as idx:
        head = idx.head_index
        all_cores = os.cpu_count()
        variants = {"one thread (now)": None, f"faiss default ({all_cores} threads, before)": all_cores}
        results = {"quiet": {}, "one core busy": {}}
        pos = 0
        _latencies(head, queries[:200], args.n, args.ef)  # warm-up
        for load in results:
            stop = multiprocessing.Event()
            spinner = multiprocessing.Process(target=_spin, args=(stop,)) if load != "quiet" else None
            if spinner:
                spinner.start()
            try:
                samples = {name: [] for name in variants}
                for _ in range(args.rounds):  # interleaved
                    for name, threads in variants.items():
                        set_search_threads(threads)
                        q = np.ascontiguousarray(queries[pos: pos + args.per_round], dtype=np.float32)
                        pos += args.per_round
                        samples[name].append(_latencies(head, q, args.n, args.ef))
                set_search_threads(None)
            finally:
                if spinner:
                    stop.set()
                    spinner.join()
            for name, parts in samples.items():
                lat = np.concatenate(parts) * 1e3
                results[load][name] = {"p50_ms": round(float(np.percentile(lat, 50)), 4),
                                       "p99_ms": round(float(np.percentile(lat, 99)), 4),
                                       "mean_ms": round(float(lat.mean()), 4), "n": int(len(lat))}
                print(f"[{load}] {name}: {results[load][name]}", file=sys.stderr, flush=True)
    out = {"command": " ".join(sys.argv), "git_revision": git_revision(), "machine": machine_info(),
           "loadavg": os.getloadavg(), "heads": int(head.size), "n": args.n, "ef": args.ef, "results": results}
    text = json.dumps(out, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
