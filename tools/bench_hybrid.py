"""Dense vs BM25 vs hybrid search on a dataset with texts: the comparison `vdbctl eval` makes (vdb/eval/modes.py),
without the rest of the evaluation, written as JSON.

    python tools/bench_hybrid.py ../shared/data/kjv_books --out docs/benchmarks/hybrid-kjv.json
    python tools/bench_hybrid.py synthetic-text --out docs/benchmarks/hybrid-synthetic-text.json
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", help="a folder with texts.jsonl + queries.jsonl, or synthetic-text[:options]")
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--latency-queries", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from vdb.config import tune_process
    from vdb.eval.datasets import load_dataset
    from vdb.eval.machine import git_revision, machine_info
    from vdb.eval.modes import compare_modes
    from vdb.eval.recommend import recommend_hybrid
    from vdb.eval.runner import resolve_metric
    tune_process()
    ds = load_dataset(args.dataset)
    if not ds.has_texts:
        raise SystemExit(f"{args.dataset}: no texts (texts.jsonl and queries.jsonl) to compare modes on")
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        result = compare_modes(ds, ds.raw_base(), ds.raw_queries(), resolve_metric(ds, "auto"), args.k, Path(work),
                               cache_dir=Path(work) / "gt", seed=args.seed, latency_queries=args.latency_queries)
    result["recommendation"] = recommend_hybrid(result)
    result.update(dataset=ds.summary(), wall_s=round(time.perf_counter() - t, 1), machine=machine_info(),
                  git_revision=git_revision(), command=" ".join(["python tools/bench_hybrid.py", args.dataset,
                                                                 "--out", args.out]))
    Path(args.out).write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(json.dumps(result["recommendation"], indent=1))


if __name__ == "__main__":
    main()
