"""Bounded disk under endless overwrites and deletes (issue 13): dead vector rows are reclaimed once a checkpoint
committed them dead and no search can still read them, a covered WAL is rolled and purged, posting compaction
follows the garbage fraction; and `stats` shows all of it."""
from __future__ import annotations

import numpy as np

import vdb
from index.mutable import MutableSpannIndex
from index.types import BuildParams
from storage.fileio import allocated_bytes
from vdb.config import load_settings
from vdb.engine.collection import Collection
from vdb.engine.database import engine_settings

DIM, N = 64, 3000
SEGMENT_MB = 1
OPTIONS = dict(split_limit=64, bootstrap_rows=500)
CHURN = dict(wal_segment_mb=SEGMENT_MB, compact_min_mb=0.05, checkpoint_interval_s=3600)


def _round(db, rng, ids):
    x = rng.normal(size=(len(ids), DIM)).astype(np.float32)
    for s in range(0, len(ids), 500):
        db.upsert("c", ids[s: s + 500], x[s: s + 500])
    return x


def _settle(db) -> None:
    """Flush (checkpoint), then let maintenance steps reclaim what that checkpoint committed dead."""
    db.flush("c")
    for _ in range(3):
        db.maintain("c")


def test_disk_stays_bounded_under_overwrite_and_delete_churn(tmp_path):
    db = vdb.connect(tmp_path / "d", **CHURN)
    try:
        db.create_collection("c", dim=DIM, **OPTIONS)
        rng, ids = np.random.default_rng(0), np.arange(N)
        _round(db, rng, ids)
        _settle(db)
        first = allocated_bytes(tmp_path / "d" / "collections" / "c")
        for r in range(7):
            x = _round(db, rng, ids)
            if r == 6:
                db.delete("c", ids[::2])
            _settle(db)
        after = allocated_bytes(tmp_path / "d" / "collections" / "c")
        st = db.stats("c")
        assert after <= 1.5 * first + (SEGMENT_MB << 20), (first, after, st["disk"])
        # every overwritten or deleted row, and the old row of each live one that moved out of a sparse block
        assert st["garbage"]["dead_rows"] == 7 * N + N // 2 + st["maintenance"]["rows_relocated"]
        assert st["bytes_reclaimed"].get("vector rows", 0) > 5 * N * 4 * DIM
        assert st["disk"]["total"] == sum(v for k, v in st["disk"].items() if k != "total")
        # the answers are those of the live set: the odd ids of the last round, each its own nearest neighbour
        live = ids[1::2]
        found, _ = db.search("c", x[live], top_k=1, nprobe=100_000, eps=1e9, rerank_k=256, use_cache=False)
        assert np.array_equal(found[:, 0], live)
        assert db.count("c") == len(live)
        assert db.check("c")[0]["ok"]
    finally:
        db.close()
    db = vdb.connect(tmp_path / "d", **CHURN)  # reopen: punched rows are dead, never read, never checked
    try:
        assert db.count("c") == len(live) and db.check("c")[0]["ok"]
        assert all(np.allclose(r.vector, x[r.id]) for r in db.get("c", ids))
    finally:
        db.close()


def test_an_idle_log_is_rolled_and_purged_once_checkpointed(tmp_path):
    db = vdb.connect(tmp_path / "d", **CHURN)
    try:
        db.create_collection("c", dim=DIM, **OPTIONS)
        _round(db, np.random.default_rng(1), np.arange(2500))  # ~0.65 MB of records: the active segment only
        wal = tmp_path / "d" / "collections" / "c" / "wal"
        assert allocated_bytes(wal) > 600_000
        db.flush("c")
        assert allocated_bytes(wal) < 64 << 10  # an empty active segment and the consumers file
        st = db.stats("c")
        assert st["wal"]["first_lsn"] == st["checkpoint_lsn"] + 1 and st["backlog"]["uncheckpointed_lsns"] == 0
        db.upsert("c", [7], np.ones((1, DIM), np.float32))
    finally:
        db.close(checkpoint=False)
    db = vdb.connect(tmp_path / "d", **CHURN)  # the write after the roll is replayed from the new segment
    try:
        assert np.allclose(db.get("c", [7])[0].vector, 1.0)
    finally:
        db.close()


def test_posting_compaction_follows_the_garbage_fraction(tmp_path):
    db = vdb.connect(tmp_path / "d", **{**CHURN, "compact_min_mb": 1e-3, "compact_garbage_fraction": 0.2})
    try:
        db.create_collection("c", dim=DIM, **OPTIONS)
        rng, ids = np.random.default_rng(2), np.arange(N)
        for _ in range(3):
            _round(db, rng, ids)
            _settle(db)
        st = db.stats("c")
        assert st["bytes_reclaimed"].get("postings", 0) > 0
        files = st["disk"]
        posting = sum(v for k, v in files.items() if k.startswith("postings"))
        assert st["garbage"]["posting_bytes"] <= 0.2 * posting + (1e-3 * (1 << 20))
    finally:
        db.close()
    db = vdb.connect(tmp_path / "d", **{**CHURN, "compact_garbage_fraction": 0.99})  # floor 0.05 MB, 99%
    try:
        db.create_collection("e", dim=DIM, **OPTIONS)
        for _ in range(3):
            x = np.random.default_rng(3).normal(size=(N, DIM)).astype(np.float32)
            db.upsert("e", ids[:500], x[:500])
            db.flush("e")
        assert db.stats("e")["bytes_reclaimed"].get("postings", 0) == 0
    finally:
        db.close()


def test_rows_a_running_search_may_read_are_not_reclaimed(tmp_path):
    settings = engine_settings(load_settings(), {"checkpoint_interval_s": 3600})
    index = MutableSpannIndex.create(tmp_path / "c", DIM, BuildParams(split_limit=64, bootstrap_rows=500))
    c = Collection("c", index, settings)
    try:
        x = np.random.default_rng(4).normal(size=(N, DIM)).astype(np.float32)
        c.upsert(np.arange(N), x)
        c.flush()
        rows = c.rows_of(np.arange(N))
        before = index.disk_usage()["files"]["vectors.f32"]
        with index.epochs.reading():  # a search that looked up these rows before they were deleted
            c.delete(np.arange(N))
            c.flush()
            for _ in range(3):
                c.maintain()
            assert index.disk_usage()["files"]["vectors.f32"] == before
            assert np.array_equal(index.vectors_of(rows), x)  # its reads still find every byte
        c.maintain()
        assert index.disk_usage()["files"]["vectors.f32"] <= before - (N * 4 * DIM) // 2
        assert c.stats()["last_compaction"]["what"] == "vector rows"
    finally:
        c.close()
