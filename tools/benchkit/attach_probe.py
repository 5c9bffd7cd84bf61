"""The public path in a memory cgroup: vdb.connect + attach_collection + search on a built index (the issue's
512 MiB case was OOM-killed while opening). Run by `bench_disk.py attach` inside the cgroup:

    python attach_probe.py INDEX_DIR DATA_DIR QUERIES.npy TRUTH.npy OUT.json
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchkit.memwatch import PeakAnon, status  # noqa: E402


def main() -> None:
    index_dir, data_dir, qpath, tpath, out = sys.argv[1:6]
    import vdb
    vdb.tune_process()
    queries, truth = np.load(qpath)[:1200], np.load(tpath)[:1200, :10]
    s0 = status()
    with PeakAnon() as peak:
        t = time.perf_counter()
        db = vdb.connect(data_dir)
        db.attach_collection("big", index_dir)
        open_s = time.perf_counter() - t
    s1 = status()
    for q in queries[:200]:
        db.search("big", q, top_k=10, use_cache=False)
    lat, found = [], []
    for q in queries[200:1200]:
        t = time.perf_counter()
        ids, _ = db.search("big", q, top_k=10, use_cache=False)
        lat.append(time.perf_counter() - t)
        found.append(ids)
    rec = float(np.mean([len(np.intersect1d(f, t)) / 10 for f, t in zip(found, truth[200:1200])]))
    ms = np.asarray(lat) * 1e3
    res = {"open_s": round(open_s, 2), "status_before": s0, "status_after_open": s1, "anon_peak_open": peak.peak,
           "anon_after_open": s1["RssAnon"], "recall": round(rec, 4), "p50_ms": round(float(np.median(ms)), 3),
           "p99_ms": round(float(np.percentile(ms, 99)), 3), "qps_1thread": round(1000 / float(ms.mean()), 1),
           "status_end": status()}
    db.close()
    Path(out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
