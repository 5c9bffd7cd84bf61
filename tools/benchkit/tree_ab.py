"""Two source trees (or one tree under two environments) serving the same index from disk, side by side: one
worker process per side opens the index with the same budget, warms up, then both run the same blocks of
queries in turn (which side goes first alternates), so the machine's and the device's swings hit both alike.
Reports p50 / p99 / mean latency and single-thread QPS per side and their ratios.

    git worktree add /tmp/before REV
    .venv/bin/python tools/benchkit/tree_ab.py INDEX_DIR QUERIES.npy --a /tmp/before --b . --budget-mb 694 \
        --out docs/benchmarks/x.json
    .venv/bin/python tools/benchkit/tree_ab.py ... --a . --b . --env-a VAR=1 --env-b VAR=2 ...   # one tree, two settings

Each worker holds its own copy of what the index keeps in RAM (the scan tier too), so the machine needs room for two.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def worker(tree: str, index: str, queries: str, budget_mb: float, scan_tier: bool, warm: int) -> None:
    """Serve blocks named on stdin ("lo hi") and answer each with its latencies as one JSON line."""
    sys.path.insert(0, tree)
    from index import SpannIndex
    from vdb.config import tune_process
    tune_process()
    q = np.load(queries).astype(np.float32)
    idx = SpannIndex.open(index, memory_budget_mb=budget_mb, scan_tier=scan_tier)
    for i in range(warm):
        idx.search(q[i % len(q)], 10)
    print("ready", flush=True)
    for line in sys.stdin:
        lo, hi = map(int, line.split())
        lat = []
        for i in range(lo, hi):
            t = time.perf_counter()
            idx.search(q[i], 10)
            lat.append(time.perf_counter() - t)
        print(json.dumps(lat), flush=True)


def _summary(lat: list[float]) -> dict:
    ms = np.asarray(lat) * 1e3
    return {"n": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 4),
            "p99_ms": round(float(np.percentile(ms, 99)), 4), "mean_ms": round(float(ms.mean()), 4),
            "qps_1thread": round(1e3 / float(ms.mean()), 1)}


def add_side_arguments(ap: argparse.ArgumentParser) -> None:
    """What both A/B tools take: the index, its queries, the two trees, the budget, the path, the warm-up."""
    ap.add_argument("index")
    ap.add_argument("queries")
    ap.add_argument("--a", required=True, help="source tree of side a")
    ap.add_argument("--b", required=True, help="source tree of side b")
    ap.add_argument("--budget-mb", type=float, required=True)
    ap.add_argument("--no-tier", action="store_true", help="serve without the scan tier (the INT8 path)")
    ap.add_argument("--warm", type=int, default=1000)
    ap.add_argument("--worker", nargs=1, help=argparse.SUPPRESS)
    ap.add_argument("--out")


def main() -> None:
    ap = argparse.ArgumentParser()
    add_side_arguments(ap)
    ap.add_argument("--env-a", action="append", default=[], help="VAR=VALUE for side a's worker")
    ap.add_argument("--env-b", action="append", default=[], help="VAR=VALUE for side b's worker")
    ap.add_argument("--blocks", type=int, default=16)
    ap.add_argument("--block", type=int, default=250)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker[0], args.index, args.queries, args.budget_mb, not args.no_tier, args.warm)
        return
    n_queries = len(np.load(args.queries, mmap_mode="r"))
    if args.warm + args.blocks * args.block > n_queries:
        ap.error(f"{n_queries} queries; --warm + --blocks x --block need {args.warm + args.blocks * args.block}")
    sides = {"a": (args.a, args.env_a), "b": (args.b, args.env_b)}
    procs = {}
    for name, (tree, env) in sides.items():
        cmd = [sys.executable, __file__, args.index, args.queries, "--a", args.a, "--b", args.b,
               "--budget-mb", str(args.budget_mb), "--warm", str(args.warm), "--worker", str(Path(tree).resolve())]
        if args.no_tier:
            cmd.append("--no-tier")
        extra = dict(kv.split("=", 1) for kv in env)
        procs[name] = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                       env={**os.environ, **extra})
    for p in procs.values():
        if p.stdout.readline().strip() != "ready":
            sys.exit("a worker failed to open the index")
    lat = {name: [] for name in sides}
    for blk in range(args.blocks):
        lo = args.warm + blk * args.block
        for name in (("a", "b") if blk % 2 == 0 else ("b", "a")):
            procs[name].stdin.write(f"{lo} {lo + args.block}\n")
            procs[name].stdin.flush()
            lat[name] += json.loads(procs[name].stdout.readline())
    for p in procs.values():
        p.stdin.close()
        p.wait()
    out = {"command": " ".join(sys.argv), "sides": {n: {"tree": t, "env": e} for n, (t, e) in sides.items()},
           "budget_mb": args.budget_mb, "scan_tier": not args.no_tier, "loadavg_end": os.getloadavg(),
           **{n: _summary(lat[n]) for n in sides}}
    out["b_over_a"] = {k: round(out["b"][k] / out["a"][k], 4) for k in ("p50_ms", "p99_ms", "mean_ms", "qps_1thread")}
    print(json.dumps(out, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
