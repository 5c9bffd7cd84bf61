"""Two source trees serving the same index from disk with queries in flight: per round, one process per tree in
turn (which goes first alternates) opens the index with the same budget, warms up, then runs `threads` threads
looping single queries for `seconds`; it reports the throughput, its CPU time and its context switches
(getrusage). The single-thread twin of this is tree_ab.py.

    git worktree add /tmp/before REV
    .venv/bin/python tools/benchkit/flight_ab.py INDEX_DIR QUERIES.npy --a /tmp/before --b . --budget-mb 694 \
        --threads 4 --rounds 3 --out docs/benchmarks/x.json
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tree_ab import add_side_arguments  # noqa: E402


def worker(tree: str, index: str, queries: str, budget_mb: float, scan_tier: bool, warm: int, threads: int,
           seconds: float) -> dict:
    sys.path.insert(0, tree)
    from index import SpannIndex
    q = np.load(queries).astype(np.float32)
    idx = SpannIndex.open(index, memory_budget_mb=budget_mb, scan_tier=scan_tier)
    for i in range(warm):
        idx.search(q[i % len(q)], 10)
    counts = [0] * threads
    stop = time.perf_counter() + seconds

    def loop(t: int) -> None:
        i = warm + t
        while time.perf_counter() < stop:
            idx.search(q[i % len(q)], 10)
            i += threads
            counts[t] += 1

    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    pool = [threading.Thread(target=loop, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    n = sum(counts)
    return {"queries": n, "qps": round(n / wall, 1),
            "cpu_cores": round((r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / wall, 3),
            "sys_s": round(r1.ru_stime - r0.ru_stime, 2),
            "voluntary_switches_per_query": round((r1.ru_nvcsw - r0.ru_nvcsw) / max(n, 1), 2),
            "involuntary_switches_per_query": round((r1.ru_nivcsw - r0.ru_nivcsw) / max(n, 1), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_side_arguments(ap)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if args.worker:
        res = worker(args.worker[0], args.index, args.queries, args.budget_mb, not args.no_tier, args.warm,
                     args.threads, args.seconds)
        print(json.dumps(res), flush=True)
        return
    runs = {"a": [], "b": []}
    for r in range(args.rounds):
        for side in ("ab" if r % 2 == 0 else "ba"):
            tree = getattr(args, side)
            cmd = [sys.executable, __file__, args.index, args.queries, "--a", args.a, "--b", args.b,
                   "--budget-mb", str(args.budget_mb), "--warm", str(args.warm), "--threads", str(args.threads),
                   "--seconds", str(args.seconds), "--worker", tree] + (["--no-tier"] if args.no_tier else [])
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            runs[side].append(json.loads(out.strip().splitlines()[-1]))
            print(side, runs[side][-1], flush=True)
    mean = {s: round(float(np.mean([x["qps"] for x in v])), 1) for s, v in runs.items()}
    res = {"command": " ".join(["tools/benchkit/flight_ab.py"] + sys.argv[1:]), "sides": {"a": args.a, "b": args.b},
           "budget_mb": args.budget_mb, "scan_tier": not args.no_tier, "threads": args.threads, "runs": runs,
           "mean_qps": mean, "b_over_a_qps": round(mean["b"] / mean["a"], 3), "loadavg_end": os.getloadavg()}
    text = json.dumps(res, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
