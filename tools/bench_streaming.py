"""Streaming runbook benchmark, in the style of big-ann-benchmarks' NeurIPS'23 streaming track (clustered runbook).

The points of a clustered set (vdb.inputs.synthetic) are ordered by cluster and cut into --groups groups, so the
distribution the index sees drifts as the runbook goes: group g is inserted, then most of group g - 2 is deleted
(the oldest data leaves), and every few groups a slice of the live data is replaced (re-upserted with new
vectors under the same ids). After every phase a search step runs the query set and its recall@10 is measured
against the exact ground truth of the live set at that moment (FlatIndex over exactly the live vectors). The
writer is the collection's own path (WAL fsync policy, batches of --batch); searches see everything acknowledged
(no flush before a search step: the unindexed rows are scanned exactly, as a production reader would see them;
--flush-before-search waits until every write is in postings and checkpointed first, so that the recall is the
index's own, and one maintenance step then reclaims what the checkpoint committed dead).

Reports per phase: the operation, the rows, its wall time, live vectors, recall@10, single-query p50/p99 and the
collection's disk; and the mean recall over search steps (the track's score), the final recall and total time;
and "settled": the disk and recall once the writers stop and maintenance has nothing left to do.

    python tools/bench_streaming.py --n 200000 --dim 64 --out docs/benchmarks/streaming-200k.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import vdb  # noqa: E402

vdb.tune_process()
from index import FlatIndex, recall_at_k  # noqa: E402
from storage.fileio import allocated_bytes  # noqa: E402
from vdb.inputs.synthetic import ClusteredMixture, default_clusters  # noqa: E402


SETTLE_STEPS = 500  # maintenance steps at most once the runbook ends (each indexes or moves a batch of rows)


def runbook(groups: int, replace_every: int):
    """[(op, group)]: insert g, delete most of g - 2, replace a slice of the live data every few groups."""
    steps = []
    for g in range(groups):
        steps.append(("insert", g))
        if g >= 2:
            steps.append(("delete", g - 2))
        if g and g % replace_every == 0:
            steps.append(("replace", g))
    return steps


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--groups", type=int, default=10)
    ap.add_argument("--delete-fraction", type=float, default=0.8, help="of a group, when it is deleted")
    ap.add_argument("--replace-fraction", type=float, default=0.2, help="of the live set, per replace step")
    ap.add_argument("--replace-every", type=int, default=3)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--latency-queries", type=int, default=200)
    ap.add_argument("--nprobe", type=int, default=32)
    ap.add_argument("--flush-before-search", action="store_true")
    ap.add_argument("--scratch", default="bench-data/streaming")
    ap.add_argument("--out", default="bench-results/streaming.json")
    args = ap.parse_args()
    scratch = Path(args.scratch)
    shutil.rmtree(scratch, ignore_errors=True)
    mix = ClusteredMixture(args.dim, default_clusters(args.n))
    x = mix.sample(args.n, seed=1)
    order = np.argsort(mix.labels_for(x), kind="stable")  # ids by cluster: the data drifts group by group
    x = x[order]
    bounds = np.linspace(0, args.n, args.groups + 1).astype(np.int64)
    q = mix.sample(args.queries, seed=2)
    rng = np.random.default_rng(0)

    db = vdb.connect(scratch / "data", durability="fsync")
    db.create_collection("s", dim=args.dim)
    current = x.copy()                       # the vector each id has now
    live = np.zeros(args.n, bool)
    phases, recalls = [], []
    t_all = time.perf_counter()

    def write(ids, vectors):
        for s in range(0, len(ids), args.batch):
            db.upsert("s", ids[s: s + args.batch], vectors[s: s + args.batch])

    for op, g in runbook(args.groups, args.replace_every):
        lo, hi = int(bounds[g]), int(bounds[g + 1])
        t = time.perf_counter()
        if op == "insert":
            ids = np.arange(lo, hi)
            write(ids, current[ids])
            live[ids] = True
        elif op == "delete":
            ids = rng.choice(np.arange(lo, hi), int(args.delete_fraction * (hi - lo)), replace=False)
            for s in range(0, len(ids), args.batch):
                db.delete("s", ids[s: s + args.batch])
            live[ids] = False
        else:  # replace: same ids, new vectors near the old ones (an embedding model's refresh)
            pool = np.flatnonzero(live)
            ids = np.sort(rng.choice(pool, int(args.replace_fraction * len(pool)), replace=False))
            current[ids] = current[ids] + rng.normal(0, 0.05, (len(ids), args.dim)).astype(np.float32)
            write(ids, current[ids])
        op_s = time.perf_counter() - t
        if args.flush_before_search:
            db.flush("s")
            db.maintain("s")
        # -- search step: recall against the exact answer over exactly the live set
        ids_live = np.flatnonzero(live)
        truth, _ = FlatIndex(current[ids_live], "l2", ids=ids_live).search(q, 10)
        got, _ = db.search("s", q, top_k=10, nprobe=args.nprobe, use_cache=False)
        recall = recall_at_k(got, truth, 10)
        recalls.append(recall)
        lat = []
        for qi in q[: args.latency_queries]:
            t1 = time.perf_counter()
            db.search("s", qi, top_k=10, nprobe=args.nprobe, use_cache=False)
            lat.append(time.perf_counter() - t1)
        st = db.stats("s")
        phases.append({"op": op, "group": g, "rows": int(len(ids)), "op_s": round(op_s, 2),
                       "rows_per_s": round(len(ids) / max(op_s, 1e-9), 1), "live": int(live.sum()),
                       "recall_at_10": round(recall, 4), "pending_rows": st["pending_rows"],
                       "search_p50_ms": round(float(np.percentile(lat, 50)) * 1e3, 3),
                       "search_p99_ms": round(float(np.percentile(lat, 99)) * 1e3, 3),
                       "disk_bytes": allocated_bytes(Path(st["wal"]["directory"]).parent)})
        print(json.dumps(phases[-1]), flush=True)
    total_s = time.perf_counter() - t_all
    db.flush("s")
    st = db.stats("s")
    ids_live = np.flatnonzero(live)
    truth, _ = FlatIndex(current[ids_live], "l2", ids=ids_live).search(q, 10)
    got, _ = db.search("s", q, top_k=10, nprobe=args.nprobe, use_cache=False)
    final_flushed = recall_at_k(got, truth, 10)
    # Settled: the writers stop; maintenance steps until one finds nothing to do (sweeps, compaction, moving
    # live rows out of sparse blocks), a checkpoint, and one more step to free what it committed dead.
    t_settle = time.perf_counter()
    for _ in range(SETTLE_STEPS):
        if not db.maintain("s"):
            break
    db.flush("s")
    db.maintain("s")
    settle_s = time.perf_counter() - t_settle
    settled = db.stats("s")
    got, _ = db.search("s", q, top_k=10, nprobe=args.nprobe, use_cache=False)
    settled_recall = recall_at_k(got, truth, 10)
    db.close()
    live_bytes = int(live.sum()) * args.dim * 4
    result = {
        "benchmark": "bench_streaming", "n": args.n, "dim": args.dim, "groups": args.groups, "batch": args.batch,
        "nprobe": args.nprobe, "durability": "fsync", "queries": args.queries,
        "flush_before_search": args.flush_before_search,
        "runbook": "clustered: insert group g, delete %.0f%% of group g-2, replace %.0f%% of the live set every "
                   "%d groups" % (100 * args.delete_fraction, 100 * args.replace_fraction, args.replace_every),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_end": os.getloadavg()},
        "phases": phases, "search_steps": len(recalls),
        "mean_recall_at_10": round(float(np.mean(recalls)), 4), "final_recall_at_10": round(recalls[-1], 4),
        "final_recall_at_10_after_flush": round(final_flushed, 4), "total_s": round(total_s, 1),
        "final_live": int(live.sum()), "final_live_float32_bytes": live_bytes,
        "final_disk_bytes": st["disk"]["total"], "final_disk": st["disk"],
        "bytes_reclaimed": st["bytes_reclaimed"], "maintenance": st["maintenance"],
        "settled": {"seconds": round(settle_s, 2), "disk_bytes": settled["disk"]["total"], "disk": settled["disk"],
                    "recall_at_10": round(settled_recall, 4), "bytes_reclaimed": settled["bytes_reclaimed"],
                    "rows_relocated": settled["maintenance"].get("rows_relocated", 0)},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k not in ("phases", "maintenance")}, indent=2))


if __name__ == "__main__":
    main()
