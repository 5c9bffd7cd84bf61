"""Payloads through the id map's overlay, checkpoints and reopening, where an upsert carries no payload."""
from __future__ import annotations

import numpy as np
import pytest

from vdb.engine.idmap import IdMap


def test_a_new_id_without_a_payload_leaves_no_payload_change_for_the_checkpoint():
    """Issue 13: each None recorded for a new id cost the next checkpoint an LMDB delete (150K per checkpoint under
    5,000 inserts/s, a GIL-bound loop searches waited behind). A live id upserted without one still records None:
    its old payload must go."""
    m = IdMap(index=None)
    m.upserted(np.array([1, 2, 3]), np.array([0, 1, 2]), [None, {"a": 1}, None], np.array([False, False, True]))
    rows, payloads = m.changes()
    assert rows == {1: 0, 2: 1, 3: 2}
    assert payloads == {2: {"a": 1}, 3: None}


def test_upserts_without_payloads_clear_old_payloads_across_checkpoints_and_reopening(db, reopen):
    x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    db.create_collection("c", dim=4)
    db.upsert("c", [1, 2, 3], x[:3], payloads=[{"v": 1}, {"v": 2}, {"v": 3}])
    db.flush("c")                                         # 1, 2, 3 and their payloads are in LMDB
    db.upsert("c", [1], x[3:4])                           # live, committed payload: cleared
    db.delete("c", [2])
    db.upsert("c", [2], x[4:5])                           # deleted since the checkpoint, back without one
    db.upsert("c", [4], x[5:6], payloads=[{"v": 4}])
    db.delete("c", [4])
    db.upsert("c", [4], x[6:7])                           # payload and delete never checkpointed
    db.upsert("c", [5], x[7:8])                           # new, never had one
    expect = {1: None, 2: None, 3: {"v": 3}, 4: None, 5: None}
    assert {r.id: r.payload for r in db.get("c", [1, 2, 3, 4, 5])} == expect
    db.flush("c")
    assert {r.id: r.payload for r in db.get("c", [1, 2, 3, 4, 5])} == expect
    db.delete("c", [3])
    db.flush("c")
    db.upsert("c", [3], x[0:1])                           # deleted at a checkpoint, back without one
    db = reopen(db)                                       # replayed from the WAL
    assert {r.id: r.payload for r in db.get("c", [1, 2, 3, 4, 5])} == {**expect, 3: None}
    db.flush("c")
    db = reopen(db)
    assert {r.id: r.payload for r in db.get("c", [1, 2, 3, 4, 5])} == {**expect, 3: None}


def test_a_repeated_id_in_one_batch_keeps_its_last_payload():
    """A replicated record is applied without the client-side uniqueness check: the last occurrence wins, as
    it did before new ids stopped recording None."""
    m = IdMap(index=None)
    m.upserted(np.array([7, 7, 8, 8]), np.array([0, 1, 2, 3]), [{"p": 1}, None, None, {"p": 2}],
               np.zeros(4, bool))
    assert m.changes()[1] == {7: None, 8: {"p": 2}}


def test_repair_deletes_a_payload_that_belongs_to_no_live_id(tmp_path):
    """A committed payload with no id-map entry (damage, or an older tool) came back as the payload of its id's
    next upsert without one; check reported it and repair left it. Repair now deletes it."""
    import vdb
    from storage.meta import MetaStore
    from vdb.engine.database import check_path
    from vdb.engine.repair import repair_path

    data = tmp_path / "data"
    x = np.random.default_rng(1).standard_normal((4, 4)).astype(np.float32)
    with vdb.connect(data, checkpoint_interval_s=3600) as db:
        db.create_collection("c", dim=4)
        db.upsert("c", [1, 2], x[:2], payloads=[{"v": 1}, {"v": 2}])
        db.flush("c")
    meta_dirs = [p.parent for p in (data / "collections" / "c").rglob("data.mdb")]
    assert len(meta_dirs) == 1
    meta = MetaStore(meta_dirs[0])
    with meta.write() as w:
        w.put_payloads(np.array([9], np.int64), [{"stale": True}])
    meta.close()
    found = check_path(data)[0]
    assert not found["ok"] and "1 payloads belong to no live id" in found["violations"][0], found
    with vdb.connect(data, checkpoint_interval_s=3600) as db:  # the open collection's check says the same
        assert "1 payloads belong to no live id (first: [9])" in db.check("c")[0]["violations"]
    report = repair_path(data)[0]
    assert report["ok"] and report["orphaned_payloads_deleted"] == 1, report
    assert any("belonged to no live id" in line for line in report["log"])
    assert check_path(data)[0]["ok"]
    with vdb.connect(data, checkpoint_interval_s=3600) as db:
        db.upsert("c", [9], x[2:3])
        assert {r.id: r.payload for r in db.get("c", [1, 2, 9])} == {1: {"v": 1}, 2: {"v": 2}, 9: None}


def test_a_filter_over_an_id_map_whose_key_is_damaged_is_data_loss_not_a_shorter_answer(tmp_path):
    """Found by the slow data.mdb sweep (tests/trust/test_damage.py, pages 17-18): a flipped byte in an id-map key
    hides that id's entry (LMDB pages carry no checksum), the payload index skipped its payload as an orphan,
    and {"g": 1} silently lost the row. Now the rows are asked whether the id is live, and it is: DATA_LOSS."""
    import lmdb

    import vdb
    data = tmp_path / "data"
    x = np.random.default_rng(2).standard_normal((30, 4)).astype(np.float32)
    with vdb.connect(data, checkpoint_interval_s=3600) as db:
        db.create_collection("c", dim=4)
        db.upsert("c", np.arange(30), x, payloads=[{"g": i % 3} for i in range(30)])
        db.flush("c")
        before = db.search("c", x[7], top_k=30, filter={"g": 1}, use_cache=False).ids.tolist()
    assert 7 in before
    meta = next((data / "collections" / "c").rglob("data.mdb")).parent
    env = lmdb.open(str(meta), max_dbs=8)
    with env.begin(write=True) as txn:  # the key of id 7 with one byte flipped: 7 + 2**32
        ids = env.open_db(b"ext2int", txn=txn)
        value = txn.get((7).to_bytes(8, "big"), db=ids)
        txn.delete((7).to_bytes(8, "big"), db=ids)
        txn.put((7 + 2**32).to_bytes(8, "big"), value, db=ids)
    env.close()
    with vdb.connect(data, checkpoint_interval_s=3600) as db:
        with pytest.raises(vdb.DataLossError, match="id map"):
            db.search("c", x[7], top_k=30, filter={"g": 1}, use_cache=False)
        assert db.search("c", x[7], top_k=3, use_cache=False).ids[0] == 7  # the unfiltered path still answers
