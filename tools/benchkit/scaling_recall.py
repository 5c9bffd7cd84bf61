"""Recall at the default settings as the data grows (issue 12: >= 0.90 from 100K to 10M): each size is a fresh
`vdb.inputs.synthetic.clustered(n)` set as a new user would make it, built with BuildParams() (so calibrated to
its target_recall), searched with SearchParams() on queries from the same mixture.

    .venv/bin/python tools/benchkit/scaling_recall.py 100000 1000000 --out docs/benchmarks/disk-scaling-recall.json
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from index import FlatIndex, SpannIndex, build_index, recall_at_k  # noqa: E402
from vdb.inputs.synthetic import clustered, clustered_queries  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("sizes", type=int, nargs="+")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--nq", type=int, default=1000)
    ap.add_argument("--work", default=str(ROOT / "bench-data/disk/scaling"))
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    import vdb
    vdb.tune_process()
    rows = []
    for n in a.sizes:
        x, q = clustered(n, a.dim), clustered_queries(a.nq, n, a.dim)
        path = Path(a.work) / f"vdb-{n}"
        shutil.rmtree(path, ignore_errors=True)
        t = time.perf_counter()
        summary = build_index(x, path)
        build_s = time.perf_counter() - t
        truth, _ = FlatIndex(x, "l2").search(q, 10)
        with SpannIndex.open(path) as idx:
            mmap_recall = recall_at_k(idx.search(q, 10)[0], truth, 10)
        with SpannIndex.open(path, memory_budget_mb=256) as idx:
            disk_recall = recall_at_k(idx.search(q, 10)[0], truth, 10)
        rows.append({"n": n, "build_s": round(build_s, 1), "calibration": summary.get("calibration"),
                     "default_recall_mmap": round(mmap_recall, 4), "default_recall_disk": round(disk_recall, 4)})
        print(rows[-1], flush=True)
        shutil.rmtree(path, ignore_errors=True)
    Path(a.out).write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
