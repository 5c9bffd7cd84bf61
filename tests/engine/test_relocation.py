"""Live rows move out of the vector file's sparse blocks (vdb/engine/relocation.py, issue 13): random deletes leave
most 4 KiB blocks holding a live row or two, which holes alone never free. These tests check that the file then
shrinks to about its live rows, that nothing a user wrote changes (vectors, payloads, filters, answers, deletes),
that a write racing a relocation wins, and that a search overlapping one still sees the row."""
from __future__ import annotations

import contextlib

import numpy as np

import vdb
from storage.vectors import BLOCK, RESERVE_ROWS_BYTES, row_bytes
from vdb.inputs.synthetic import ClusteredMixture

DIM, N = 32, 12_000
SETTINGS = dict(checkpoint_interval_s=3600, compact_min_mb=0.05, maintenance_batch=1024)


def _filled(tmp_path, collection=None, **extra):
    db = vdb.connect(tmp_path / "d", **{**SETTINGS, **extra})
    db.create_collection("c", dim=DIM, **(collection or {}))
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


def _movable(db):
    """After deleting most rows (relocation off): the collection, its live ids, and the rows a relocation would
    move now (every sparse block's)."""
    live, _ = _delete_most(db)
    c = db.collection("c")
    return c, live, c.index.sparse_rows(10_000, 0, 0.3)


@contextlib.contextmanager
def _relocating_once_after(c, owner, name: str, ids):
    """Replace owner.<name>() (a read a search makes) by one that, the first time, returns what the original
    gives and then relocates the rows of `ids` in collection c: the race between the two, frozen. Yields the
    calls made."""
    original, calls = getattr(owner, name), []

    def then_relocate():
        out = original()
        if not calls:
            calls.append(1)
            c.relocate(c.rows_of(np.asarray(ids, np.int64)))
        return out

    setattr(owner, name, then_relocate)
    try:
        yield calls
    finally:
        delattr(owner, name)


def test_random_deletes_free_the_blocks_their_survivors_held_and_change_nothing_users_see(tmp_path):
    db, x = _filled(tmp_path)
    try:
        live, dead = _delete_most(db)
        before = _vector_file_bytes(db)
        garbage_before = db.stats("c")["garbage"]["vector_row_bytes"]
        assert garbage_before > 0.5 * (N - len(live)) * row_bytes(DIM)  # deletes this random leave most in place
        _settle(db)
        after = _vector_file_bytes(db)
        live_bytes = len(live) * row_bytes(DIM)
        stats = db.stats("c")
        assert stats["maintenance"]["rows_relocated"] >= len(live) // 2
        # the blocks of live rows within 1 / (1 - compact_garbage_fraction) of their bytes, plus the allocation
        # ahead of the writes and a block at each end
        assert after <= live_bytes / 0.7 + RESERVE_ROWS_BYTES + 4 * BLOCK, (before, after, live_bytes)
        assert before - after >= 0.5 * (N * row_bytes(DIM) - live_bytes)  # half of the dead rows' bytes, at least
        assert stats["garbage"]["vector_row_bytes"] <= 0.3 * after  # within compact_garbage_fraction of what is held
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
        c, live, rows = _movable(db)
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
        c, _, rows = _movable(db)
        target = int(c.index.int2ext[rows[0]])
        with _relocating_once_after(c, c.memtable, "snapshot", c.index.int2ext[rows]) as calls:
            found, d = db.search("c", x[target], top_k=1, nprobe=64, use_cache=False)
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


def _row_ranked_third(db, x, live, moved):
    """A query (a live vector) whose third answer is one of `moved`, and that answer."""
    for a in live[:400]:
        ids, _ = db.search("c", x[a], top_k=5, nprobe=32, use_cache=False)
        if ids[2] in moved:
            return x[a], int(ids[2])
    raise AssertionError("no query ranks a movable row third")


def test_a_cache_hit_overlapping_a_relocation_still_has_the_row(tmp_path):
    """Found by review: a semantic-cache hit reads the memtable and the row states itself, outside the search
    path that repeats on an overlapping relocation; it served the hit without the moved row."""
    db, x = _filled(tmp_path, {"cache_mb": 16}, relocate_rows=False)
    try:
        c, live, rows = _movable(db)
        db.flush("c")
        q, target = _row_ranked_third(db, x, live, set(c.index.int2ext[rows].tolist()))
        for _ in range(3):  # fill, then hits
            db.search("c", q, top_k=5, nprobe=32)
        with _relocating_once_after(c, c.memtable, "snapshot", [target]) as calls:
            found, _ = db.search("c", q, top_k=5, nprobe=32)
        assert calls and target in found and db.stats("c")["cache"]["hits"] >= 2
    finally:
        db.close()


def test_a_text_search_overlapping_a_relocation_still_has_the_row(tmp_path):
    """Found by review: a BM25 search read the row states outside the repeat-on-overlap path, and missed the
    moved row (its old row dead, its new one not in the states it had read)."""
    db = vdb.connect(tmp_path / "d", **SETTINGS, relocate_rows=False)
    try:
        n = 4000
        db.create_collection("c", dim=DIM, text_field="text", text_commit_interval_s=0.1, bootstrap_rows=500)
        x = np.random.default_rng(0).normal(size=(n, DIM)).astype(np.float32)
        db.upsert("c", np.arange(n), x, [{"text": f"word{i} common"} for i in range(n)])
        db.flush("c")
        c = db.collection("c")
        target = 5
        with _relocating_once_after(c, c, "row_state", [target]) as calls:
            ids, _ = db.hybrid_search("c", text=f"word{target}", top_k=3)
        assert calls and np.asarray(ids).ravel()[0] == target
    finally:
        db.close()


def test_a_full_disk_refusing_a_relocation_never_stops_checkpoints(tmp_path, monkeypatch):
    """Found by review: the relocation's row reservation failed on a full disk and the step raised before its
    checkpoint and reclaim, every step: the WAL was never purged and nothing was freed. Now the refusal is
    counted, the checkpoint goes on, and once there is room again the rows move."""
    from storage.errors import DiskFullError
    db, x = _filled(tmp_path, checkpoint_interval_s=0.01)
    try:
        c = db.collection("c")
        reserve = c.index.reserve_rows

        def full_disk(extra):
            if extra > 0:
                raise DiskFullError(f"{c.path}: no space left on device (test)")
            reserve(extra)

        monkeypatch.setattr(c.index, "reserve_rows", full_disk)
        live, _ = _delete_most(db)
        for _ in range(100):  # the sweep the deletes started first, then the refused relocation
            c.maintain()  # must not raise
            if db.stats("c")["maintenance"]["last_error"]:
                break
        c.maintain()
        stats = db.stats("c")
        assert c.checkpoint_lsn == c.applied_lsn
        assert stats["maintenance"]["rows_relocated"] == 0 and "disk is full" in stats["maintenance"]["last_error"]
        monkeypatch.setattr(c.index, "reserve_rows", reserve)
        db.delete("c", live[:SETTINGS["maintenance_batch"]])  # a batch more dead rows: the next look comes
        for _ in range(100):
            c.maintain()
            if db.stats("c")["maintenance"]["rows_relocated"]:
                break
        assert db.stats("c")["maintenance"]["rows_relocated"] > 0
    finally:
        db.close()


def test_a_relocation_that_fails_after_it_was_logged_fails_the_step_and_the_collection(tmp_path, monkeypatch):
    """Found by review: every relocation failure was counted as a refusal, so maintain() reported success on a
    collection that applying the logged record had just failed. Only a full disk's refusal is absorbed now."""
    db, _ = _filled(tmp_path)
    try:
        c = db.collection("c")
        _delete_most(db)

        def broken(ids, rows):
            raise RuntimeError("injected: the id map cannot take the move")

        monkeypatch.setattr(c.idmap, "moved", broken)
        c.maintainer.stop()  # only this thread steps: the step that relocates is the one that must fail
        for _ in range(100):
            try:
                c.maintain()
            except vdb.UnavailableError as e:
                assert "applying the logged write" in str(e)
                break
            assert c.failed is None, "maintain() returned normally on a collection it had just failed"
        else:
            raise AssertionError("no relocation was tried")
        assert c.failed is not None
    finally:
        db.close()
    db = vdb.connect(tmp_path / "d")  # reopening replays the logged RELOCATE
    try:
        assert db.count("c") == N - int(N * 0.8) and db.check("c")[0]["ok"]
    finally:
        db.close()
