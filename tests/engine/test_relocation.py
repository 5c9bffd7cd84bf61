"""Live rows move out of the vector file's sparse blocks (vdb/engine/relocation.py, issue 13): random deletes leave
most 4 KiB blocks holding a live row or two, which holes alone never free. These tests check that the file then
shrinks to about its live rows, that nothing a user wrote changes (vectors, payloads, filters, answers, deletes),
that a write racing a relocation wins, and that a search overlapping one still sees the row."""
from __future__ import annotations

import numpy as np

import vdb
from storage.vectors import BLOCK, RESERVE_ROWS_BYTES, row_bytes
from vdb.inputs.synthetic import ClusteredMixture

DIM, N = 32, 12_000
SETTINGS = dict(checkpoint_interval_s=3600, compact_min_mb=0.05, maintenance_batch=1024)


def _filled(tmp_path, **extra):
    db = vdb.connect(tmp_path / "d", **SETTINGS, **extra)
    db.create_collection("c", dim=DIM)
    x = ClusteredMixture(DIM, 12, 1).sample(N, 1)
    for lo in range(0, N, 3000):
        ids = np.arange(lo, lo + 3000)
        db.upsert("c", ids, x[ids], [{"g": int(i % 5), "tag": f"t{i}"} for i in ids])
    db.flush("c")
    return db, x


def _delete_most(db, seed=0, fraction=0.8):
    dead = np.random.default_rng(seed).choice(N, int(N * fraction), replace=False)
    for lo in range(0, len(dead), 5000):
        db.delete("c", dead[lo: lo + 5000])
    return np.setdiff1d(np.arange(N), dead), dead


def _settle(db):
    """Maintenance until it has nothing left to do, then the checkpoint and reclaim that free the blocks."""
    c = db.collection("c")
    for _ in range(200):
        if not c.maintain():
            break
    db.flush("c")
    c.maintain()


def _vector_file_bytes(db):
    return db.stats("c")["disk"]["vectors.f32"]


def test_random_deletes_free_the_blocks_their_survivors_held_and_change_nothing_users_see(tmp_path):
    db, x = _filled(tmp_path)
    try:
        live, dead = _delete_most(db)
        before = _vector_file_bytes(db)
        _settle(db)
        after = _vector_file_bytes(db)
        live_bytes = len(live) * row_bytes(DIM)
        stats = db.stats("c")
        assert stats["maintenance"]["rows_relocated"] >= len(live) // 2
        # the blocks of live rows within 1 / (1 - compact_garbage_fraction) of their bytes, plus the allocation
        # ahead of the writes and a block at each end
        assert after <= live_bytes / 0.7 + RESERVE_ROWS_BYTES + 4 * BLOCK, (before, after, live_bytes)
        assert before - after >= 0.5 * (N * row_bytes(DIM) - live_bytes)  # half of the dead rows' bytes, at least
        got = {r.id: r for r in db.get("c", live)}
        assert sorted(got) == live.tolist()
        for i in live[::37]:
            assert np.allclose(got[i].vector, x[i]) and got[i].payload == {"g": int(i % 5), "tag": f"t{i}"}
        found, d = db.search("c", x[live[::7]], top_k=1, nprobe=64, use_cache=False)
        assert (found[:, 0] == live[::7]).all() and (d[:, 0] < 1e-3).all()
        near, _ = db.search("c", x[dead[:200]], top_k=10, nprobe=64, use_cache=False)
        assert not np.isin(near, dead).any()
        g, _ = db.search("c", x[live[:50]], top_k=5, filter={"g": 3}, nprobe=64, use_cache=False)
        assert all(i % 5 == 3 for i in g[g >= 0].tolist()) and (g >= 0).all()
        assert db.count("c") == len(live)
        assert db.check("c")[0]["ok"]
    finally:
        db.close()
    db = vdb.connect(tmp_path / "d")  # and all of it after reopening
    try:
        assert db.count("c") == len(live)
        found, _ = db.search("c", x[live[::11]], top_k=1, nprobe=64, use_cache=False)
        assert (found[:, 0] == live[::11]).all()
        assert db.check("c")[0]["ok"]
    finally:
        db.close()


def test_without_relocation_the_survivors_keep_their_blocks(tmp_path):
    """The same deletes with relocate_rows off: holes free almost nothing (what the streaming runbook measured)."""
    db, _ = _filled(tmp_path, relocate_rows=False)
    try:
        live, _ = _delete_most(db)
        before = _vector_file_bytes(db)
        _settle(db)
        assert db.stats("c")["maintenance"]["rows_relocated"] == 0
        assert before - _vector_file_bytes(db) < 0.1 * (N - len(live)) * row_bytes(DIM)
    finally:
        db.close()


def test_a_write_after_the_rows_were_chosen_wins_over_their_relocation(tmp_path):
    db, x = _filled(tmp_path, relocate_rows=False)
    try:
        live, _ = _delete_most(db)
        c = db.collection("c")
        rows = c.index.sparse_rows(10_000, 0, 0.3)
        ids = c.index.int2ext[rows]
        moved_again, deleted, kept = int(ids[0]), int(ids[1]), int(ids[2])
        new_vector = x[moved_again] + 5.0
        db.upsert("c", [moved_again], new_vector[None], [{"g": 99}])
        db.delete("c", [deleted])
        c.relocate(rows)
        got = {r.id: r for r in db.get("c", [moved_again, deleted, kept])}
        assert np.allclose(got[moved_again].vector, new_vector) and got[moved_again].payload == {"g": 99}
        assert deleted not in got
        assert np.allclose(got[kept].vector, x[kept])
        assert c.rows_of(np.array([kept]))[0] != rows[2]  # it did move
        assert db.count("c") == len(live) - 1
        db.close()
        db = vdb.connect(tmp_path / "d")  # the replayed RELOCATE follows the same rule
        got = {r.id: r for r in db.get("c", [moved_again, deleted, kept])}
        assert np.allclose(got[moved_again].vector, new_vector) and deleted not in got
        assert np.allclose(got[kept].vector, x[kept]) and db.count("c") == len(live) - 1
    finally:
        db.close()


def test_a_search_overlapping_a_relocation_still_finds_the_row(tmp_path):
    """The race, frozen: a relocation applied right after a search took its memtable snapshot (which does not
    have the new row) and before it read the old row's state (dead by then). The search runs again."""
    db, x = _filled(tmp_path, relocate_rows=False)
    try:
        live, _ = _delete_most(db)
        c = db.collection("c")
        rows = c.index.sparse_rows(10_000, 0, 0.3)
        target = int(c.index.int2ext[rows[0]])
        snapshot = c.memtable.snapshot
        calls = []

        def snapshot_then_relocate():
            view = snapshot()
            if not calls:
                calls.append(1)
                c.relocate(rows)
            return view

        c.memtable.snapshot = snapshot_then_relocate
        try:
            found, d = db.search("c", x[target], top_k=1, nprobe=64, use_cache=False)
        finally:
            del c.memtable.snapshot
        assert calls and found[0] == target and d[0] < 1e-3
    finally:
        db.close()


def test_relocate_records_round_trip_and_a_malformed_one_is_refused():
    from vdb.engine import walcodec
    ids, rows = np.array([5, 2**40, 7]), np.array([0, 3, 2**33])
    data = walcodec.encode_relocate(ids, rows)
    op = walcodec.decode(walcodec.RELOCATE, data)
    assert np.array_equal(op.ids, ids) and np.array_equal(op.rows, rows) and op.vectors is None
    for bad in (data[:-1], data + b"\0", data[:3]):
        try:
            walcodec.decode(walcodec.RELOCATE, bad)
        except ValueError as e:
            assert "type 3" in str(e)
        else:
            raise AssertionError("a malformed RELOCATE record decoded")
