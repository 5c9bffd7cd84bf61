"""A pre-imported process that forks crash-test writers on request (so 30+ kills do not pay 30 imports).

Requests (tests/trust/forkloop.py serves them), one JSON object per line:
    {"dir": ..., "log": ..., "seed": ..., "threads": ..., "crash_at": "split:2" | "", "text": false}  ->  {"pid": ...}
                       ("text": true: the collection has a full-text index and every upsert a text;
                        "churn": true: one writer that flushes and compacts often, see churn_writer)
    {"reap": pid}  ->  {"status": wait status}, once every thread of the child is gone (a killed process
                       shows as a zombie while its other threads still exit, holding its files and locks)
The child opens the database, starts writer threads and logs every operation before and after it is
acknowledged to the log file (O_APPEND, one write per line). OpenMP is pinned to one thread before anything
is imported so that forking is safe.
"""
from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

os.environ["OMP_NUM_THREADS"] = "1"

import numpy as np  # noqa: E402

import vdb  # noqa: E402
import vdb.text.index  # noqa: E402,F401  (tantivy, for the text crash test)
from storage import crashpoints  # noqa: E402

DIM = 16
OPTIONS = dict(split_limit=24, merge_limit=2, bootstrap_rows=200, head_ratio=0.05)
SETTINGS = dict(checkpoint_interval_s=0.4, sweep_deleted_fraction=0.02, max_pending_rows=100_000,
                compact_min_mb=0.2)
IDS_PER_THREAD = 400


def vector(vseed: int, ext_id: int) -> np.ndarray:
    """Deterministic vector for (seed, id): distinct per id, clustered so postings split."""
    rng = np.random.default_rng([vseed, ext_id])
    centre = np.random.default_rng(ext_id % 7).normal(0, 5, DIM)
    return (centre + rng.normal(0, 1, DIM)).astype(np.float32)


def text_of(vseed: int, ext_id: int) -> str:
    """The text an upsert stores with a vector (text crash test): a word per id and a word per write."""
    return f"id{ext_id} s{vseed} common"


def writer(db, t: int, seed: int, fd: int, text: bool = False) -> None:
    rng = np.random.default_rng([seed, t])
    owned = np.arange(t * 100_000, t * 100_000 + IDS_PER_THREAD)
    step = 0
    while True:
        step += 1
        ids = rng.choice(owned, size=int(rng.integers(1, 24)), replace=False).tolist()
        op = "upsert" if rng.random() < 0.7 else "delete"
        vseed = int(seed * 1_000_000 + t * 10_000 + step)
        os.write(fd, (json.dumps({"t": t, "begin": op, "ids": ids, "vseed": vseed}) + "\n").encode())
        if op == "upsert":
            payloads = [{"text": text_of(vseed, i)} for i in ids] if text else None
            lsn = db.upsert("c", ids, np.stack([vector(vseed, i) for i in ids]), payloads)
        else:
            lsn = db.delete("c", ids)
        os.write(fd, (json.dumps({"t": t, "ack": op, "lsn": lsn}) + "\n").encode())


def churn_writer(db, seed: int, fd: int) -> None:
    """One writer that overwrites and deletes the same ids, flushing every few operations (each flush's
    checkpoint covers the whole log, so it rolls the WAL and lets maintenance reclaim the dead rows) and
    forcing a posting compaction now and then: the crash points of issue 13 are all on its way."""
    rng = np.random.default_rng([seed, 99])
    step = 0
    while True:
        step += 1
        ids = rng.choice(IDS_PER_THREAD, size=int(rng.integers(8, 40)), replace=False).tolist()
        op = "upsert" if rng.random() < 0.75 else "delete"
        vseed = int(seed * 1_000_000 + 90_000 + step)
        os.write(fd, (json.dumps({"t": 0, "begin": op, "ids": ids, "vseed": vseed}) + "\n").encode())
        if op == "upsert":
            lsn = db.upsert("c", ids, np.stack([vector(vseed, i) for i in ids]))
        else:
            lsn = db.delete("c", ids)
        os.write(fd, (json.dumps({"t": 0, "ack": op, "lsn": lsn}) + "\n").encode())
        if step % 6 == 0:
            db.flush("c")
            db.maintain("c", compact=step % 18 == 0)
            db.maintain("c")


def child(req: dict) -> None:
    crashpoints.arm(req.get("crash_at", ""))
    fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    db = vdb.connect(req["dir"], **{**SETTINGS, **req.get("settings", {})})
    text = {"text_field": "text", "text_commit_interval_s": 0.1} if req.get("text") else {}
    db.create_collection("c", dim=DIM, exist_ok=True, **OPTIONS, **text)
    os.write(fd, b'{"ready": true}\n')
    if req.get("churn"):
        churn_writer(db, req["seed"], fd)
        return
    threads = [threading.Thread(target=writer, args=(db, t, req["seed"], fd, bool(text)), daemon=True)
               for t in range(req["threads"])]
    for th in threads:
        th.start()
    for th in threads:
        th.join()


def warm_up(path: str) -> None:
    """Load numba's cached kernels and faiss once, in a throwaway directory, before any fork."""
    db = vdb.connect(path, **SETTINGS)
    db.create_collection("w", dim=DIM, **OPTIONS)
    db.upsert("w", np.arange(300), np.stack([vector(1, i) for i in range(300)]))
    db.flush("w")
    db.search("w", vector(1, 5), top_k=3)
    db.close()


def main() -> None:
    warm_up(sys.argv[1])
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "trust"))  # the fork servers' shared loop
    from forkloop import serve
    serve(child)


if __name__ == "__main__":
    main()
