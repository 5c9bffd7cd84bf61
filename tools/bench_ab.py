"""A/B of the search hot path between two revisions of vdb, interleaved in one run (these machines are noisy).

Both revisions search the same index directory (built by tools/bench_index.py) from fresh processes pinned to one
CPU, alternating old / new for several rounds; the JSON has every run and the median ratios. The old revision is
checked out with `git worktree` into a temporary directory and imported through PYTHONPATH, with this venv's
packages.

    .venv/bin/python tools/bench_ab.py --old 6f0c586 --index bench-data/bench_index/work/vdb-synthetic-1000k \
        --queries bench-data/bench_index/data/clustered-queries-10000x128.npy --out docs/benchmarks/refactor-ab.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = r"""
import json, sys, time
import numpy as np
from index import SpannIndex
idx_dir, q_path, nprobe = sys.argv[1], sys.argv[2], int(sys.argv[3])
q = np.load(q_path, mmap_mode="r")[:5000].astype(np.float32)
with SpannIndex.open(idx_dir) as idx:
    idx.search(q[:200], 10, nprobe=nprobe)  # warm-up: JIT and page cache
    best = 0.0
    for _ in range(5):
        t = time.perf_counter()
        idx.search(q, 10, nprobe=nprobe)
        best = max(best, len(q) / (time.perf_counter() - t))
    lat = []
    for i in range(500):
        t = time.perf_counter()
        idx.search(q[i], 10, nprobe=nprobe)
        lat.append(time.perf_counter() - t)
print(json.dumps({"qps": round(best), "p50_ms": round(float(np.median(lat)) * 1e3, 4)}))
"""


def run(code_dir: Path, args, nprobe: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code_dir), "NUMBA_CACHE_DIR": str(Path(tempfile.gettempdir()) /
                                                                            f"numba-{code_dir.name}")}
    cmd = ["taskset", "-c", str(args.cpu), sys.executable, "-c", CHILD, args.index, args.queries, str(nprobe)]
    out = subprocess.run(cmd, cwd=code_dir, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True, help="git revision to compare against")
    ap.add_argument("--index", required=True)
    ap.add_argument("--queries", required=True)
    ap.add_argument("--nprobes", default="8,32")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--cpu", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    args.index, args.queries = str(Path(args.index).resolve()), str(Path(args.queries).resolve())
    old_dir = Path(tempfile.mkdtemp()) / "old"
    subprocess.run(["git", "worktree", "add", "-q", "--detach", str(old_dir), args.old], cwd=ROOT, check=True)
    runs: dict[str, list] = {}
    try:
        for r in range(args.rounds):
            for name, code in (("old", old_dir), ("new", ROOT)):
                for nprobe in (int(n) for n in args.nprobes.split(",")):
                    res = run(code, args, nprobe)
                    runs.setdefault(f"{name}-nprobe{nprobe}", []).append(res)
                    print(r, name, nprobe, res, file=sys.stderr, flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(old_dir)], cwd=ROOT)
    out = {"benchmark": "search hot path A/B", "old": args.old,
           "new": subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip(),
           "command": " ".join(sys.argv), "page_cache": "index files warm (resident) throughout"}
    for key, vals in runs.items():
        out[key] = {"qps_median": statistics.median(v["qps"] for v in vals),
                    "p50_ms_median": statistics.median(v["p50_ms"] for v in vals), "runs": vals}
    for nprobe in args.nprobes.split(","):
        new, old = out[f"new-nprobe{nprobe}"], out[f"old-nprobe{nprobe}"]
        out[f"ratio_new_over_old_qps_nprobe{nprobe}"] = round(new["qps_median"] / old["qps_median"], 3)
        out[f"ratio_new_over_old_p50_nprobe{nprobe}"] = round(new["p50_ms_median"] / old["p50_ms_median"], 3)
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
