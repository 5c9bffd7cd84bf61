"""The full-text index under SIGKILL: writers with texts are killed at random moments and inside text commits
(tantivy has the rows, its state file does not say so yet) and checkpoints; after every restart a text search
finds every acknowledged live text, and only those: no deleted id and no replaced text comes back, none twice.

Same protocol as test_sigkill.py (its zygote, log and model); an in-flight write may or may not have survived,
and the model follows what recovery chose (read back from the vectors, which test_sigkill.py proves).
"""
from __future__ import annotations

import os
import signal
import time

import numpy as np

import vdb
from test_sigkill import _dead, _read_log, _spawn, _spawn_reap, _wait_for, zygote  # noqa: F401  (fixture)
from zygote import vector

CRASH_POINTS = ["text-commit:1", "checkpoint-after-meta:1", "text-commit:3", "split:2"]


def _verify(data, model: dict, acked: dict, inflight: dict) -> None:
    """model: id -> vseed of its live version, or None once deleted."""
    for ops in acked.values():
        for op in ops:
            for i in op["ids"]:
                model[i] = op["vseed"] if op["begin"] == "upsert" else None
    maybe = {i: (op["vseed"] if op["begin"] == "upsert" else None) for op in inflight.values() for i in op["ids"]}
    db = vdb.connect(data)
    try:
        ids = sorted(set(model) | set(maybe))
        got = {r.id: r.vector for r in db.get("c", ids)} if ids else {}
        for i in maybe:  # which way recovery went for the in-flight write
            vec = got.get(i)
            if vec is None:
                model[i] = None
            elif maybe[i] is not None and np.allclose(vec, vector(maybe[i], i)):
                model[i] = maybe[i]
        live = {i: v for i, v in model.items() if v is not None}
        if not model:
            return
        words = [f"id{i}" for i in sorted(model)]
        res = db.hybrid_search("c", text=words, top_k=2)
        for i, row in zip(sorted(model), res.ids):
            found = [int(x) for x in row if x >= 0]
            assert found == ([i] if i in live else []), f"id {i} (live version {model[i]}): text search found {found}"
        versions = sorted(set(live.values()))
        res = db.hybrid_search("c", text=[f"s{v}" for v in versions], top_k=64)
        for v, row in zip(versions, res.ids):
            want = sorted(i for i, lv in live.items() if lv == v)
            assert sorted(int(x) for x in row if x >= 0) == want, f"write s{v}"
        db.flush("c")  # every text in tantivy: then it holds each live text once and nothing else
        stats = db.stats("c")["text"]
        assert stats["failed_commits"] == 0 and stats["fresh_rows"] == 0, stats
        assert stats["committed_docs"] == len(live), (stats, len(live))
    finally:
        db.close(checkpoint=False)


def test_text_index_survives_kills(zygote, tmp_path):  # noqa: F811
    rng = np.random.default_rng(7)
    data, model, fired, acked_ops = tmp_path / "data", {}, set(), 0
    for it in range(12):
        crash_at = CRASH_POINTS[(it // 3) % len(CRASH_POINTS)] if it % 3 == 2 else ""
        log = tmp_path / f"log-{it}.jsonl"
        pid = _spawn(zygote, dir=str(data), log=str(log), seed=100 + it, threads=3, crash_at=crash_at, text=True)
        assert _wait_for(lambda: log.exists() and b"ready" in log.read_bytes(), 30), "child never got ready"
        if crash_at:
            if _wait_for(lambda: _dead(pid), 15):
                fired.add(crash_at.split(":")[0])
        else:
            time.sleep(float(rng.uniform(0.1, 0.8)))
        if not _dead(pid):
            os.kill(pid, signal.SIGKILL)
        _spawn_reap(zygote, pid)
        acked, inflight = _read_log(log)
        acked_ops += sum(len(v) for v in acked.values())
        _verify(data, model, acked, inflight)
    assert acked_ops > 100
    assert "text-commit" in fired, fired  # children really died between a text commit and its state file
