"""Disk under overwrite / delete churn (issue 13): re-upsert the same ids round after round, delete half at the
end, and report the bytes the device holds for the collection (st_blocks * 512 per file) after every round,
against the live float32 bytes. Default settings (the WAL segment, the compaction floor and fraction) unless
overridden; each round ends with a flush and one maintenance step, as an application that checkpoints would.

    python tools/bench_churn_disk.py --ids 10000 --dim 64 --rounds 20 --out docs/benchmarks/churn-disk.json

--clustered draws every round's vectors from the clustered mixture (vdb.inputs.synthetic, a new sample each
round: the data is replaced --rounds times over) and, at the end, measures recall@10 of the collection against
a fresh bulk build of exactly the final live data (same queries, same nprobe): the issue's "recall within 1
point of a fresh build after the data has been replaced 10 times over".

--update-fraction F / --delete-fraction D: after the first round (every id written), each round re-upserts a
random F of the ids (a deleted one comes back) and deletes a random D of them, so rows of every generation stay
live here and there in the vector file: the churn that holes alone cannot free (issue 13).

    python tools/bench_churn_disk.py --ids 100000 --dim 64 --rounds 20 --update-fraction 0.3 \
        --delete-fraction 0.1 --out docs/benchmarks/churn-random-100k.json
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


def allocated(path: Path) -> dict:
    """Allocated bytes per top-level entry of the collection directory (directories summed), and the total.
    Computed here rather than with storage.fileio.allocated_bytes so that the script also measures main, the
    peer, which predates it."""
    out = {}
    for entry in sorted(path.iterdir()):
        files = [entry] if entry.is_file() else [f for f in entry.rglob("*") if f.is_file()]
        out[entry.name] = sum(f.stat().st_blocks * 512 for f in files)
    out["total"] = sum(out.values())
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ids", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--setting", action="append", default=[], help="NAME=VALUE, a database setting")
    ap.add_argument("--clustered", action="store_true")
    ap.add_argument("--update-fraction", type=float, default=1.0, help="of the ids, re-upserted per round")
    ap.add_argument("--delete-fraction", type=float, default=0.0, help="of the ids, deleted per round after the first")
    ap.add_argument("--nprobe", type=int, default=32)
    ap.add_argument("--scratch", default="bench-data/churn-disk")
    ap.add_argument("--out", default="bench-results/churn-disk.json")
    args = ap.parse_args()
    if args.clustered and (args.update_fraction < 1.0 or args.delete_fraction > 0):
        ap.error("--clustered measures recall against the default churn only (every id each round, half deleted)")
    scratch = Path(args.scratch)
    shutil.rmtree(scratch, ignore_errors=True)
    settings = dict(s.split("=", 1) for s in args.setting)
    db = vdb.connect(scratch / "data", **settings)
    db.create_collection("c", dim=args.dim)
    coll = scratch / "data" / "collections" / "c"
    ids = np.arange(args.ids)
    rng = np.random.default_rng(0)
    rounds = []
    if args.clustered:
        from vdb.inputs.synthetic import ClusteredMixture, default_clusters
        mix = ClusteredMixture(args.dim, default_clusters(args.ids))
    t0 = time.perf_counter()
    for r in range(args.rounds):
        x = mix.sample(args.ids, seed=10 + r) if args.clustered else \
            rng.normal(size=(args.ids, args.dim)).astype(np.float32)
        random_churn = r > 0 and (args.update_fraction < 1.0 or args.delete_fraction > 0)
        chosen = np.sort(rng.choice(ids, int(args.update_fraction * args.ids), replace=False)) if random_churn \
            else ids
        for s in range(0, len(chosen), args.batch):
            db.upsert("c", chosen[s: s + args.batch], x[chosen[s: s + args.batch]])
        if random_churn and args.delete_fraction > 0:
            gone = rng.choice(ids, int(args.delete_fraction * args.ids), replace=False)
            for s in range(0, len(gone), args.batch):
                db.delete("c", gone[s: s + args.batch])
        elif r == args.rounds - 1 and not random_churn:
            for s in range(0, args.ids, 2 * args.batch):
                db.delete("c", ids[s: s + 2 * args.batch: 2])
        db.flush("c")
        db.maintain("c")
        rounds.append({"round": r + 1, "disk": allocated(coll), "live": db.count("c")})
        print(json.dumps({"round": r + 1, "total": rounds[-1]["disk"]["total"]}), flush=True)
    elapsed = time.perf_counter() - t0
    stats = db.stats("c")
    quality = {}
    if args.clustered:  # recall after the replacements vs a fresh build of the final live data
        from index import BuildParams, FlatIndex, SpannIndex, build_index, recall_at_k
        live = ids[1::2]
        q = mix.sample(500, seed=999)
        truth, _ = FlatIndex(x[live], "l2", ids=live).search(q, 10)
        got, _ = db.search("c", q, top_k=10, nprobe=args.nprobe, use_cache=False)
        build_index(x[live], scratch / "fresh", ids=live, params=BuildParams())
        with SpannIndex.open(scratch / "fresh") as fresh:
            fresh_recall = recall_at_k(fresh.search(q, 10, nprobe=args.nprobe)[0], truth, 10)
        quality = {"nprobe": args.nprobe, "recall_at_10_after_replacements": round(recall_at_k(got, truth, 10), 4),
                   "recall_at_10_fresh_build": round(fresh_recall, 4)}
        quality["gap_points"] = round(100 * (quality["recall_at_10_fresh_build"]
                                             - quality["recall_at_10_after_replacements"]), 2)
    db.close()
    live_bytes = rounds[-1]["live"] * args.dim * 4
    first, last = rounds[0]["disk"]["total"], rounds[-1]["disk"]["total"]
    result = {
        "benchmark": "bench_churn_disk", "ids": args.ids, "dim": args.dim, "rounds": args.rounds,
        "settings": settings, "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "elapsed_s": round(elapsed, 1), "live_vectors": rounds[-1]["live"], "live_float32_bytes": live_bytes,
        "disk_after_first_round": first, "disk_after_last_round": last,
        "last_over_first": round(last / first, 3), "last_over_live_float32": round(last / live_bytes, 1),
        "clustered": args.clustered, "quality": quality,
        "update_fraction": args.update_fraction, "delete_fraction": args.delete_fraction,
        "max_over_first": round(max(r["disk"]["total"] for r in rounds) / first, 3),
        "rounds": rounds, "final_stats": {k: stats.get(k) for k in ("disk", "garbage", "backlog", "last_compaction",
                                                                     "bytes_reclaimed", "wal")},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps({k: v for k, v in result.items() if k not in ("rounds", "final_stats")}, indent=2))


if __name__ == "__main__":
    main()
