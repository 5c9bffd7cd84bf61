"""Payloads through the id map's overlay, checkpoints and reopening, where an upsert carries no payload."""
from __future__ import annotations

import numpy as np

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
