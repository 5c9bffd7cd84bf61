"""Online snapshots (vdb/engine/snapshot.py) and the engine primitives replication stands on: a snapshot taken
while a writer runs equals the source at its LSN when restored elsewhere, damaged snapshots are refused, a
checkpoint never covers an apply its LSN does not, and a replica applying its primary's records at their LSNs
ends equal. No Ray here."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import vdb
from storage.wal import LsnMismatchError, WriteAheadLog, start_log
from vdb.engine.snapshot import INDEX, content_digest, restore_snapshot, verify_snapshot, write_snapshot
from vdb.errors import AlreadyExistsError, DataLossError, InvalidArgumentError

DIM = 16
OPTIONS = dict(bootstrap_rows=200, head_ratio=0.05, checkpoint_interval_s=3600)


def _vec(i: int) -> np.ndarray:
    return np.random.default_rng(i).normal(size=DIM).astype(np.float32)


class Model:
    """What a collection must hold: ops applied in LSN order (every op here is acknowledged with its LSN)."""

    def __init__(self):
        self.ops: list[tuple[int, str, list[int], list]] = []

    def add(self, lsn, kind, ids, payloads=None):
        self.ops.append((lsn, kind, list(ids), payloads))

    def at(self, lsn: int) -> dict[int, tuple[np.ndarray, dict | None]]:
        state: dict = {}
        for op_lsn, kind, ids, payloads in sorted(self.ops, key=lambda o: o[0]):
            if op_lsn > lsn:
                break
            for j, i in enumerate(ids):
                if kind == "upsert":
                    state[i] = (_vec(i * 1000 + op_lsn), payloads[j])
                else:
                    state.pop(i, None)
        return state


def _writer(db, name, model, stop: threading.Event, first_id: int):
    """Upserts (fresh and overwritten ids) and deletes, each recorded with its LSN, until `stop`."""
    rng = np.random.default_rng(first_id)
    nxt = first_id
    while not stop.is_set():
        if rng.random() < 0.2 and nxt > first_id + 10:
            ids = rng.integers(0, nxt, 3).tolist()
            model.add(db.delete(name, ids), "delete", ids)
            continue
        ids = [nxt, nxt + 1] + rng.integers(0, nxt + 1, 2).tolist()
        ids = list(dict.fromkeys(ids))
        nxt += 2
        payloads = [{"i": i, "w": int(rng.integers(0, 9))} for i in ids]
        _upsert_exact(db, name, model, ids, payloads)


def _upsert_exact(db, name, model, ids, payloads):
    """The vector of id i written at LSN l is _vec(i * 1000 + l): the writer is the only one, so it knows l."""
    lsn = db.stats(name)["applied_lsn"] + 1
    got = db.upsert(name, ids, np.stack([_vec(i * 1000 + lsn) for i in ids]), payloads)
    assert got == lsn
    model.add(got, "upsert", ids, payloads)


def _assert_holds(db, name, expected: dict):
    assert db.count(name) == len(expected)
    ids = sorted(expected)
    records = db.get(name, ids)
    assert [r.id for r in records] == ids
    for r in records:
        vec, payload = expected[r.id]
        np.testing.assert_array_equal(r.vector, vec)
        assert r.payload == payload


@pytest.fixture
def source(tmp_path):
    db = vdb.connect(tmp_path / "a")
    db.create_collection("c", DIM, **OPTIONS)
    yield db
    db.close()


def test_a_snapshot_taken_while_writing_restores_elsewhere_equal_at_its_lsn(source, tmp_path):
    model = Model()
    for s in range(0, 600, 50):  # enough to get heads, postings and a checkpoint behind the memtable
        _upsert_exact(source, "c", model, list(range(s, s + 50)), [{"i": i} for i in range(s, s + 50)])
    source.flush("c")
    stop = threading.Event()
    writer = threading.Thread(target=_writer, args=(source, "c", model, stop, 10_000))
    writer.start()
    try:
        while len(model.ops) < 40:
            stop.wait(0.01)
        as_dir = write_snapshot(source, "c", tmp_path / "snap")
        as_tar = write_snapshot(source, "c", tmp_path / "snap.tar")
        while len(model.ops) < 60:
            stop.wait(0.01)
    finally:
        stop.set()
        writer.join()
    last = max(o[0] for o in model.ops)
    assert as_dir["lsn"] <= as_tar["lsn"] < last  # both were taken while the writer ran
    other = vdb.connect(tmp_path / "b")  # another node: its own data directory
    try:
        for name, src, manifest in (("d", tmp_path / "snap", as_dir), ("t", tmp_path / "snap.tar", as_tar)):
            restored = restore_snapshot(other, name, src)
            assert restored["lsn"] == manifest["lsn"]
            _assert_holds(other, name, model.at(manifest["lsn"]))
            # the restored collection continues the source's LSNs
            assert other.upsert(name, [1], _vec(1)[None]) == manifest["lsn"] + 1
        _assert_holds(source, "c", model.at(last))
    finally:
        other.close()


def test_damaged_or_foreign_snapshots_are_refused_and_create_nothing(source, tmp_path):
    source.upsert("c", list(range(300)), np.stack([_vec(i) for i in range(300)]))
    write_snapshot(source, "c", tmp_path / "snap")
    write_snapshot(source, "c", tmp_path / "snap.tar")
    with pytest.raises(InvalidArgumentError, match="already exists"):
        write_snapshot(source, "c", tmp_path / "snap")
    with pytest.raises(AlreadyExistsError):
        restore_snapshot(source, "c", tmp_path / "snap")
    vectors = tmp_path / "snap" / INDEX / "vectors.f32"
    raw = bytearray(vectors.read_bytes())
    raw[5000] ^= 0x01
    vectors.write_bytes(bytes(raw))
    with pytest.raises(DataLossError, match="vectors.f32"):
        restore_snapshot(source, "copy", tmp_path / "snap")
    tar = tmp_path / "snap.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    with pytest.raises(DataLossError):
        restore_snapshot(source, "copy", tar)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(vdb.errors.NotFoundError, match="not a vdb snapshot"):
        verify_snapshot(tmp_path / "nothing")
    assert source.list_collections() == ["c"]


def test_paths_in_a_snapshot_never_leave_it(source, tmp_path):
    import json
    import tarfile
    source.upsert("c", list(range(10)), np.stack([_vec(i) for i in range(10)]))
    write_snapshot(source, "c", tmp_path / "snap")
    manifest = json.loads((tmp_path / "snap" / "MANIFEST.json").read_text())
    manifest["files"]["../../escaped"] = manifest["files"]["vectors.f32"]
    (tmp_path / "snap" / "MANIFEST.json").write_text(json.dumps(manifest))
    with pytest.raises(DataLossError, match="not a plain relative path"):
        restore_snapshot(source, "copy", tmp_path / "snap")
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        tar.add(tmp_path / "snap" / "MANIFEST.json", arcname="../MANIFEST.json")
    with pytest.raises(DataLossError, match="not a plain relative path"):
        restore_snapshot(source, "copy", evil)
    assert not (tmp_path / "escaped").exists() and not (source.path / "MANIFEST.json").exists()
    assert source.list_collections() == ["c"]


def test_a_checkpoint_never_covers_an_apply_its_lsn_does_not(source):
    """Regression: the checkpoint read applied_lsn after an apply had released the index lock but before it
    had advanced applied_lsn, so it could store LSN n with the effects of n + 1 (a snapshot at n held n + 1)."""
    c = source.collection("c")
    source.upsert("c", [1], _vec(1)[None])
    real_apply, done = c._apply, {}

    def apply_then_checkpoint(op):
        real_apply(op)
        if 2 in op.ids.tolist() and "t" not in done:
            done["t"] = t = threading.Thread(target=lambda: done.setdefault("lsn", c.checkpoint()))
            t.start()
            t.join(1.0)  # without the fix the checkpoint finishes here, inside the window

    c._apply = apply_then_checkpoint
    lsn = source.upsert("c", [2], _vec(2)[None])
    done["t"].join()
    committed = c.index.committed_rows(np.array([2]))[0]
    assert committed < 0 or done["lsn"] >= lsn, (
        f"checkpoint at LSN {done['lsn']} holds id 2, written at LSN {lsn}")


def test_a_replica_applying_its_primarys_records_ends_equal_with_the_same_lsns(source, tmp_path):
    follower = vdb.connect(tmp_path / "f")
    try:
        follower.create_collection("c", DIM, **OPTIONS)
        shipped = []
        source.collection("c").on_logged = lambda lsn, rtype, data: shipped.append((lsn, rtype, data))
        model = Model()
        for s in range(0, 400, 40):
            _upsert_exact(source, "c", model, list(range(s, s + 40)), [{"s": s}] * 40)
        model.add(source.delete("c", list(range(0, 400, 7))), "delete", list(range(0, 400, 7)))
        assert [r[0] for r in shipped] == list(range(1, len(shipped) + 1))
        fc = follower.collection("c")
        assert fc.apply_replicated(shipped[:4]) == 4
        with pytest.raises(LsnMismatchError):
            fc.apply_replicated(shipped[5:6])  # a gap is refused, nothing is appended
        assert fc.apply_replicated(shipped[4:]) == shipped[-1][0]
        assert content_digest(fc) == content_digest(source.collection("c"))
        _assert_holds(follower, "c", model.at(shipped[-1][0]))
    finally:
        follower.close()
    reopened = vdb.connect(tmp_path / "f")  # and the copied log recovers like any other
    try:
        assert reopened.stats("c")["applied_lsn"] == shipped[-1][0]
        assert content_digest(reopened.collection("c")) == content_digest(source.collection("c"))
    finally:
        reopened.close()


def test_a_log_started_after_an_lsn_continues_from_it(tmp_path):
    start_log(tmp_path / "wal", 42)
    with pytest.raises(FileExistsError):
        start_log(tmp_path / "wal", 42)
    with WriteAheadLog(tmp_path / "wal") as wal:
        assert wal.last_lsn == 41
        with pytest.raises(LsnMismatchError):
            wal.append_many([(1, b"x")], first_lsn=41)
        assert wal.append_many([(1, b"x"), (1, b"y")], first_lsn=42) == [42, 43]
        assert [r.lsn for r in wal.replay(41)] == [42, 43]
    with WriteAheadLog(tmp_path / "wal") as wal:
        assert wal.last_lsn == 43


def test_a_snapshot_of_an_attached_build_never_written_restores(tmp_path):
    """Regression: the snapshot took its count from the manifest's "live", which only a collection's checkpoint
    writes; a bulk build attached and not written since (its checkpoint has nothing to do) was snapshotted with
    count 0, and its restore was refused ('the restored collection has {count: 1000, ...}, the manifest says
    {count: 0, ...}')."""
    from index import BuildParams, build_index
    x = np.stack([_vec(i) for i in range(1000)])
    build_index(x, tmp_path / "bulk", params=BuildParams(head_ratio=0.05, target_recall=0))
    with vdb.connect(tmp_path / "a") as src:
        src.attach_collection("c", tmp_path / "bulk")
        manifest = write_snapshot(src, "c", tmp_path / "snap")
        want = content_digest(src.collection("c"))
    assert manifest["count"] == 1000
    with vdb.connect(tmp_path / "b") as dst:
        restore_snapshot(dst, "r", tmp_path / "snap")
        assert dst.count("r") == 1000 and content_digest(dst.collection("r")) == want


def test_a_snapshot_of_a_collection_that_never_held_a_row_restores_empty(tmp_path):
    """Regression: counting the committed state of a collection with no "live" in its manifest failed on one that
    has no committed state at all (TypeError on None), which broke every replica seeded from a new collection."""
    with vdb.connect(tmp_path / "a") as src:
        src.create_collection("c", DIM)
        assert write_snapshot(src, "c", tmp_path / "snap")["count"] == 0
    with vdb.connect(tmp_path / "b") as dst:
        restore_snapshot(dst, "r", tmp_path / "snap")
        assert dst.count("r") == 0
