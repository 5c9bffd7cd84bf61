"""The public path in a memory cgroup: vdb.connect(memory_budget_mb=B) + attach_collection + search on a built
index (the issue's 512 MiB case was OOM-killed while opening), then a few writes on top (read-your-writes, a
delete of an unknown id, a filtered search: each pass of the collection over its rows). Run by
`bench_disk.py attach` inside the cgroup:

    python attach_probe.py INDEX_DIR DATA_DIR QUERIES.npy TRUTH.npy OUT.json BUDGET_MB
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchkit.memwatch import PeakAnon, status  # noqa: E402


def smaps_rollup() -> dict:
    out = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        key, _, value = line.partition(":")
        if key in ("Rss", "Anonymous", "Private_Dirty", "Shared_Clean", "Private_Clean"):
            out[key] = int(value.split()[0]) * 1024
    return out


def timed(db, queries, truth) -> dict:
    lat, found = [], []
    for q in queries:
        t = time.perf_counter()
        ids, _ = db.search("big", q, top_k=10, use_cache=False)
        lat.append(time.perf_counter() - t)
        found.append(ids)
    rec = float(np.mean([len(np.intersect1d(f, t)) / 10 for f, t in zip(found, truth)]))
    ms = np.asarray(lat) * 1e3
    return {"queries": len(queries), "recall": round(rec, 4), "p50_ms": round(float(np.median(ms)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3), "qps_1thread": round(1000 / float(ms.mean()), 1)}


def main() -> None:
    index_dir, data_dir, qpath, tpath, out = sys.argv[1:6]
    budget = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
    import vdb
    vdb.tune_process()
    queries, truth = np.load(qpath)[:1200], np.load(tpath)[:1200, :10]
    s0 = status()
    print(f"[attach] before open: anon {s0['RssAnon'] >> 20} MB", flush=True, file=sys.stderr)
    with PeakAnon() as peak:
        t = time.perf_counter()
        db = vdb.connect(data_dir, memory_budget_mb=budget)
        db.attach_collection("big", index_dir)
        open_s = time.perf_counter() - t
    s1, r1 = status(), smaps_rollup()
    idx = db.collection("big").index
    res = {"memory_budget_mb": budget, "serves_from_disk": getattr(idx, "serves_from_disk", False),
           "open_s": round(open_s, 2),
           "status_before": s0, "status_after_open": s1, "smaps_after_open": r1, "anon_peak_open": peak.peak,
           "anon_after_open": s1["RssAnon"], "anon_open_delta": s1["RssAnon"] - s0["RssAnon"],
           "anon_peak_open_delta": peak.peak - s0["RssAnon"], "resident_bytes": idx.resident_bytes()}
    print(f"[attach] open {open_s:.1f} s, anon {s1['RssAnon'] >> 20} MB (peak {peak.peak >> 20} MB)", flush=True,
          file=sys.stderr)
    with PeakAnon() as peak:
        for q in queries[:200]:
            db.search("big", q, top_k=10, use_cache=False)
        io0 = idx.disk.io_stats() if getattr(idx, "disk", None) is not None else None
        res["search"] = timed(db, queries[200:1200], truth[200:1200])
    io1 = idx.disk.io_stats() if getattr(idx, "disk", None) is not None else None
    if io0 is not None:
        pages = (io1["postings"]["pages"] - io0["postings"]["pages"], io1["rows"]["pages"] - io0["rows"]["pages"])
        res["search"]["pages_per_query"] = {"postings": round(pages[0] / 1000, 1), "rows": round(pages[1] / 1000, 1)}
        res["posting_cache"] = io1["cache"]
    res["anon_peak_search"], res["status_after_search"] = peak.peak, status()
    print(f"[attach] searched: {res['search']}, anon {status()['RssAnon'] >> 20} MB", flush=True, file=sys.stderr)
    with PeakAnon() as peak:
        q = queries[:10] + 0.001
        db.upsert("big", np.arange(10**9, 10**9 + 10), q, payloads=[{"tag": "new"}] * 10)
        res["read_your_writes"] = bool((db.search("big", queries[0], top_k=1).ids == 10**9).all())
        db.delete("big", [123_456_789_000])
        res["filtered_found"] = db.search("big", queries[3], top_k=3, filter={"tag": "new"}).ids.tolist()
    res["anon_peak_writes"], res["status_end"] = peak.peak, status()
    db.close()
    Path(out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
