"""The id map answers from the rows what LMDB would answer: ids above every id a row held, and the live rows of a
dense build (issue 13: one LMDB get per id was a GIL-bound loop in every write a search waited behind)."""
from __future__ import annotations

import numpy as np

import vdb
from vdb.engine.idmap import IdMap
from index import BuildParams, build_index

DIM = 8


def _committed_answer(c, ids: np.ndarray) -> np.ndarray:
    """rows_of the long way: the overlay, else LMDB (what the id map answered before it read the rows)."""
    rows, _ = c.idmap.changes()
    out = np.array([rows.get(int(e), -2) for e in ids], np.int64)
    ask = out == -2
    if ask.any():
        out[ask] = c.index.committed_rows(ids[ask])
    return out


def _collection(db, name):
    return db._get(name)


def test_rows_of_agrees_with_lmdb_through_writes_checkpoints_relocations_and_reopening(tmp_path):
    rng = np.random.default_rng(5)
    n = 3000
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    build_index(x, tmp_path / "bulk", params=BuildParams(head_ratio=0.05))   # dense ids 0..n-1
    data = tmp_path / "data"
    probes = np.concatenate([np.arange(0, n + 400, 7), [n - 1, n, n + 1, 10**9, 2**62]]).astype(np.int64)
    live = set(range(n))
    next_id = n
    for session in range(3):
        with vdb.connect(data, checkpoint_interval_s=3600) as db:
            if session == 0:
                db.attach_collection("c", tmp_path / "bulk")
            for step in range(12):
                gone = rng.choice(sorted(live), 40, replace=False)
                db.delete("c", gone)                                       # dense and appended ids
                live -= set(gone.tolist())
                again = rng.choice(np.arange(n), 30, replace=False)        # back, or moved, at new rows
                new = np.arange(next_id, next_id + 25)
                next_id += 25
                ids = np.concatenate([again, new])
                db.upsert("c", ids, rng.standard_normal((len(ids), DIM)).astype(np.float32))
                live |= set(ids.tolist())
                db.delete("c", [10**9 + step])                             # never existed
                if step % 4 == 3:
                    db.flush("c")                                          # the overlay goes to LMDB
                c = _collection(db, "c")
                with c.index.lock:
                    assert c.rows_of(probes).tolist() == _committed_answer(c, probes).tolist()
            c = _collection(db, "c")
            c.relocate(np.nonzero(np.asarray(c.index.state) == 0)[0][:50])  # live ids move to new rows
            with c.index.lock:
                assert c.rows_of(probes).tolist() == _committed_answer(c, probes).tolist()
                found = c.rows_of(np.array(sorted(live)))
            assert (found >= 0).all()
            assert db.count("c") == len(live)


def test_inserts_of_new_ids_and_deletes_of_bulk_built_ones_read_no_lmdb(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2000, DIM)).astype(np.float32)
    build_index(x, tmp_path / "bulk", params=BuildParams(head_ratio=0.05))
    with vdb.connect(tmp_path / "data", checkpoint_interval_s=3600) as db:
        db.attach_collection("c", tmp_path / "bulk")
        c = _collection(db, "c")
        asked = []
        real = c.index.committed_rows
        monkeypatch.setattr(c.index, "committed_rows", lambda ids: asked.append(len(ids)) or real(ids))
        db.upsert("c", np.arange(2000, 2256), rng.standard_normal((256, DIM)).astype(np.float32))
        db.delete("c", np.arange(0, 512, 2))
        db.delete("c", [5000])                       # unknown and above every id: no pass over the rows either
        assert asked == []
        db.delete("c", [1000])                       # a live bulk-built id: found without LMDB
        db.upsert("c", [0], x[:1])                   # deleted above, back at a new row
        assert asked == []
        assert db.count("c") == 2000 + 256 - 256 - 1 + 1
        assert db.get("c", [0])[0].id == 0 and db.get("c", [2]) == [] and db.get("c", [1000]) == []
        db.flush("c")
        db.delete("c", [0])                          # its dense row is dead: its new row is LMDB's to say
        assert asked == [1]
        assert db.get("c", [0]) == []


def test_check_of_an_open_collection_finds_a_live_bulk_built_id_missing_from_lmdb(tmp_path):
    """Found by review: rows_of answers a live dense id from the rows, so the open check, which compared the
    rows with rows_of, stopped seeing an id-map entry missing from LMDB (the closed check still did)."""
    import lmdb
    x = np.random.default_rng(0).standard_normal((1000, DIM)).astype(np.float32)
    build_index(x, tmp_path / "bulk", params=BuildParams(head_ratio=0.05))
    with vdb.connect(tmp_path / "data", checkpoint_interval_s=3600) as db:
        db.attach_collection("c", tmp_path / "bulk")
    env = lmdb.open(str(tmp_path / "bulk" / "meta"), max_dbs=8)
    with env.begin(write=True) as txn:
        txn.delete((400).to_bytes(8, "big"), db=env.open_db(b"ext2int", txn=txn))
    env.close()
    with vdb.connect(tmp_path / "data", checkpoint_interval_s=3600) as db:
        report = db.check("c")[0]
        assert not report["ok"] and any("row 400" in v for v in report["violations"])
        assert db.get("c", [400])[0].id == 400   # serving answers from the rows meanwhile


def test_negative_ids_are_never_read_as_rows():
    """Found by review: -1 (what a row deleted meanwhile reads as) indexed the state array from its end."""
    class Rows:
        int2ext = type("R", (), {"dense_rows": 0, "tail": np.array([5, 6, 7])})()
        state = np.zeros(3, np.uint8)

        def committed_rows(self, ids):
            return np.full(len(ids), -1, np.int64)
    m = IdMap(Rows())
    assert m.rows_of(np.array([-9, -1, 8])).tolist() == [-1, -1, -1]
