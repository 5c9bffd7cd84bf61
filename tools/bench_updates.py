"""Online updates benchmark (issue: durable writes).

Build on 90% of a clustered N x D set, then insert the other 10% online (batches of --batch, fsync policy)
while deleting 5% of the original vectors, with a search thread running single queries throughout. First, the
same inserts run alone (no searcher, no deletes) on a copy of the index: the indexing capacity. Reports
insert throughput, search p50/p99 idle vs during the updates, recall@10 after the updates vs a fresh bulk
build of the same final data (same search parameters), posting-length distribution before and after.

    python tools/bench_updates.py --n 1000000 --out bench-results/updates-1m.json

--rate paces the writer (vectors/s, 0: as fast as it goes), the way a production writer arrives; the report
then says whether the acknowledged rate was held and whether indexing kept up (the backlog it left).
--gil-switch-ms overrides the process-wide setting of that name.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import vdb  # noqa: E402

vdb.tune_process()  # process-wide settings, as `vdbctl serve` applies them
from index import BuildParams, FlatIndex, SpannIndex, build_index, recall_at_k  # noqa: E402
from vdb.config import load_settings  # noqa: E402
from vdb.inputs.synthetic import clustered, clustered_queries  # noqa: E402


def latencies(db, name, queries, nprobe, stop=None, limit=None):
    out = []
    i = 0
    while (stop is None or not stop.is_set()) and (limit is None or i < limit):
        t = time.perf_counter()
        db.search(name, queries[i % len(queries)], top_k=10, nprobe=nprobe, use_cache=False)
        out.append(time.perf_counter() - t)
        i += 1
    return np.array(out)


def pct(a):
    return {"p50_ms": round(float(np.percentile(a, 50)) * 1e3, 3), "p99_ms": round(float(np.percentile(a, 99)) * 1e3, 3),
            "p999_ms": round(float(np.percentile(a, 99.9)) * 1e3, 3), "n": int(len(a))}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--nprobe", type=int, default=32)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--idle-queries", type=int, default=20_000,
                    help="searches timed before the writes (2,000 left the idle p99.9 to two samples)")
    ap.add_argument("--scratch", default="bench-data/updates")
    ap.add_argument("--out", default="bench-results/updates.json")
    ap.add_argument("--rate", type=float, default=0.0, help="paced writer: vectors/s (0: unpaced)")
    ap.add_argument("--gil-switch-ms", type=float, default=None)
    ap.add_argument("--maintenance-batch", type=int, default=None)
    ap.add_argument("--bulk-cache", default=None,
                    help="directory keeping the bulk build of this --n/--dim between runs (copied, not rebuilt)")
    args = ap.parse_args()
    if args.idle_queries < 100:
        ap.error("--idle-queries must be >= 100 (its p99.9 needs samples)")
    if args.gil_switch_ms is not None:
        vdb.tune_process(load_settings({"gil_switch_ms": args.gil_switch_ms}))
    options = {"maintenance_batch": args.maintenance_batch} if args.maintenance_batch else {}
    scratch = Path(args.scratch)
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    x = clustered(args.n, args.dim)
    q = clustered_queries(args.queries, args.n, args.dim)
    n0 = int(args.n * 0.9)
    rng = np.random.default_rng(0)
    deleted = rng.choice(n0, int(args.n * 0.05), replace=False)
    t = time.perf_counter()
    cache = Path(args.bulk_cache) / f"bulk-{args.n}x{args.dim}" if args.bulk_cache else None
    copied = cache is not None and cache.exists()
    if copied:
        shutil.copytree(cache, scratch / "bulk")  # the same build as before: a before/after pair shares it
    else:
        build_index(x[:n0], scratch / "bulk", params=BuildParams())
        if cache is not None:
            shutil.copytree(scratch / "bulk", cache)
    build_s = time.perf_counter() - t
    with SpannIndex.open(scratch / "bulk") as idx:
        before = idx.info()["posting_lengths"]
    db = vdb.connect(scratch / "data", durability="fsync", **options)
    new_ids = np.arange(n0, args.n)
    ins_batches = np.array_split(new_ids, max(1, len(new_ids) // args.batch))

    # -- the writer alone (no searcher, no deletes) on a copy: the indexing capacity the mixed run shares
    shutil.copytree(scratch / "bulk", scratch / "alone")
    db.attach_collection("alone", scratch / "alone")
    t = time.perf_counter()
    for ids in ins_batches:
        db.upsert("alone", ids, x[ids])
    alone_ack_s = time.perf_counter() - t
    db.flush("alone")
    alone_s = time.perf_counter() - t
    db.drop_collection("alone")

    db.attach_collection("c", scratch / "bulk")
    latencies(db, "c", q, args.nprobe, limit=len(q))  # warm-up: every query once
    idle = latencies(db, "c", q, args.nprobe, limit=args.idle_queries)

    # -- online phase: one writer (inserts + deletes), one searcher
    stop = threading.Event()
    during: list = []
    searcher = threading.Thread(target=lambda: during.append(latencies(db, "c", q, args.nprobe, stop)))
    searcher.start()
    del_batches = np.array_split(deleted, max(1, len(deleted) // args.batch))
    t = time.perf_counter()
    backlog_max, sent = 0, 0
    for i, ids in enumerate(ins_batches):
        if args.rate:
            wait = t + sent / args.rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
        sent += len(ids)
        db.upsert("c", ids, x[ids])
        if i < len(del_batches):
            db.delete("c", del_batches[i])
        if i % 50 == 0:
            backlog_max = max(backlog_max, db.stats("c")["pending_rows"])
    for ids in del_batches[len(ins_batches):]:
        db.delete("c", ids)
    ack_s = time.perf_counter() - t
    db.flush("c")
    drained_s = time.perf_counter() - t
    stop.set()
    searcher.join()
    busy = during[0]
    stats = db.stats("c")
    after = stats["index"]["posting_lengths"]

    # -- quality: recall on the final data vs a fresh bulk build of it, same search parameters
    live = np.setdiff1d(np.arange(args.n), deleted)
    truth, _ = FlatIndex(x[live], "l2", ids=live).search(q, 10)
    got, _ = db.search("c", q, top_k=10, nprobe=args.nprobe, use_cache=False)
    online_recall = recall_at_k(got, truth, 10)
    db.close()
    fresh_cache = Path(args.bulk_cache) / f"fresh-{args.n}x{args.dim}" if args.bulk_cache else None
    if fresh_cache is not None and fresh_cache.exists():
        shutil.copytree(fresh_cache, scratch / "fresh")
    else:
        build_index(x[live], scratch / "fresh", ids=live, params=BuildParams())
        if fresh_cache is not None:
            shutil.copytree(scratch / "fresh", fresh_cache)
    with SpannIndex.open(scratch / "fresh") as fresh:
        fresh_recall = recall_at_k(fresh.search(q, 10, nprobe=args.nprobe)[0], truth, 10)
        fresh_lengths = fresh.info()["posting_lengths"]
    result = {
        "benchmark": "bench_updates", "n": args.n, "dim": args.dim, "batch": args.batch, "nprobe": args.nprobe,
        "durability": "fsync", "target_rate_vps": args.rate, "gil_switch_interval_ms": sys.getswitchinterval() * 1e3,
        "maintenance_batch": args.maintenance_batch, "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                          "loadavg_end": os.getloadavg()},
        "bulk_build_s": round(build_s, 1), "bulk_build_copied": copied,
        "inserted": int(len(new_ids)), "deleted": int(len(deleted)),
        "insert_only_vps_acked": round(len(new_ids) / alone_ack_s, 1),
        "insert_only_vps_indexed": round(len(new_ids) / alone_s, 1),
        "insert_throughput_vps_acked": round(len(new_ids) / ack_s, 1),
        "insert_throughput_vps_indexed": round(len(new_ids) / drained_s, 1),
        "ops_wall_s": round(ack_s, 2), "drain_wall_s": round(drained_s, 2), "max_backlog_rows": backlog_max,
        "search_idle": pct(idle), "search_during_updates": pct(busy),
        "p99_ratio_busy_vs_idle": round(float(np.percentile(busy, 99) / np.percentile(idle, 99)), 2),
        "p999_ratio_busy_vs_idle": round(float(np.percentile(busy, 99.9) / np.percentile(idle, 99.9)), 2),
        "recall_after_updates": round(online_recall, 4), "recall_fresh_build": round(fresh_recall, 4),
        "recall_gap_points": round(100 * (fresh_recall - online_recall), 2),
        "posting_lengths_before": before, "posting_lengths_after": after, "posting_lengths_fresh": fresh_lengths,
        "maintenance": stats["maintenance"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
