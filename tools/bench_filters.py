"""Filtered search benchmark: does a filtered search still return k results, how good are they, what does it
cost, across filter selectivities (issue: durable writes, payloads and filters).

Every vector gets a payload {"bucket": i % 1000}; a filter {"bucket": {"$lt": s * 1000}} matches a fraction s.
For each s: the share of queries that got k results (when at least k match), recall@10 against exact search
restricted to the matching vectors, single-query p50/p99, and which path ran (exact over the matches, or the
index with a widened probe and an exact fallback).

    python tools/bench_filters.py --n 200000 --out bench-results/filters.json
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import vdb  # noqa: E402

vdb.tune_process()  # process-wide settings, as `vdbctl serve` applies them
from index import FlatIndex, recall_at_k  # noqa: E402
from vdb.inputs.synthetic import clustered, clustered_queries  # noqa: E402

SELECTIVITIES = (0.001, 0.005, 0.02, 0.1, 0.3, 1.0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--scratch", default="bench-data/filters")
    ap.add_argument("--out", default="bench-results/filters.json")
    args = ap.parse_args()
    shutil.rmtree(args.scratch, ignore_errors=True)
    x = clustered(args.n, 128)
    q = clustered_queries(args.queries, args.n, 128)
    bucket = np.arange(args.n) % 1000
    rows = []
    with vdb.connect(args.scratch) as db:
        db.create_collection("c", dim=128)
        for s in range(0, args.n, 10_000):
            db.upsert("c", np.arange(s, min(s + 10_000, args.n)), x[s: s + 10_000],
                      payloads=[{"bucket": int(b)} for b in bucket[s: s + 10_000]])
        db.flush("c")
        db.search("c", q[0], top_k=10, filter={"bucket": 0})  # builds the payload index once
        for sel in SELECTIVITIES:
            f = {"bucket": {"$lt": int(round(sel * 1000))}}
            match = np.nonzero(bucket < int(round(sel * 1000)))[0]
            truth, _ = FlatIndex(x[match], "l2", ids=match).search(q, 10)
            got, lat, paths, full = [], [], {}, 0
            for qi in q:
                t = time.perf_counter()
                res = db.search("c", qi, top_k=10, filter=f, explain=True, use_cache=False)
                lat.append(time.perf_counter() - t)
                got.append(res.ids)
                paths[res.explain["path"]] = paths.get(res.explain["path"], 0) + 1
                full += int((res.ids >= 0).sum() == min(10, len(match)))
            rows.append({"selectivity": sel, "matches": int(len(match)),
                         "full_results_share": full / len(q), "recall_at_10": round(recall_at_k(np.stack(got), truth, 10), 4),
                         "p50_ms": round(float(np.percentile(lat, 50)) * 1e3, 3),
                         "p99_ms": round(float(np.percentile(lat, 99)) * 1e3, 3), "paths": paths})
            print(json.dumps(rows[-1]), file=sys.stderr)
        unfiltered = []
        for qi in q:
            t = time.perf_counter()
            db.search("c", qi, top_k=10, use_cache=False)
            unfiltered.append(time.perf_counter() - t)
    out = {"benchmark": "bench_filters", "n": args.n, "queries": args.queries, "rows": rows,
           "unfiltered_p50_ms": round(float(np.percentile(unfiltered, 50)) * 1e3, 3)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
