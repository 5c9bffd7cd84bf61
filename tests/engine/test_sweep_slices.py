"""A sweep after many deletes runs in slices between indexing batches, and gives way to a high backlog of
unindexed rows for a bounded number of steps (issue 13). The test holds the index's maint_lock so that only its
own maintenance steps run (the lock is reentrant), and counts the sweep's merges in the maintenance stats."""
from __future__ import annotations

import numpy as np

import vdb
from vdb.inputs.synthetic import ClusteredMixture

DIM = 8


def _merges(db):
    return db.stats("c")["maintenance"]["merges"]


def test_a_pending_sweep_gives_way_to_a_high_backlog_for_a_bounded_number_of_steps(tmp_path):
    db = vdb.connect(tmp_path / "d", checkpoint_interval_s=3600, max_pending_rows=2000, maintenance_batch=64,
                     sweep_jobs_per_step=1000, sweep_max_deferred_steps=3)
    try:
        db.create_collection("c", dim=DIM, bootstrap_rows=300, split_limit=24, head_ratio=0.1)
        x = ClusteredMixture(DIM, 10, 1).sample(4500, 5)
        db.upsert("c", np.arange(3000), x[:3000])
        db.flush("c")
        c = db.collection("c")
        with c.index.maint_lock:  # the maintenance thread waits; only the steps below run
            db.delete("c", np.arange(0, 3000, 2))  # half of the postings' rows: a sweep is due, with merges
            for start in range(3000, 4500, 64):  # a backlog of 1500, over half of max_pending_rows
                end = min(start + 64, 4500)
                db.upsert("c", np.arange(start, end), x[start:end])
            work = _merges(db)
            for step in range(3):
                assert c.maintain()
                assert _merges(db) == work  # indexing first: the sweep waits
                assert db.stats("c")["pending_rows"] == 1500 - 64 * (step + 1)
            assert c.maintain()  # the fourth step in a row: the sweep gets its slice although the backlog is high
            assert _merges(db) > work
            assert db.stats("c")["pending_rows"] == 1500 - 64 * 4
        db.flush("c")
        got, _ = db.search("c", x[3001], top_k=1, nprobe=8)
        assert got[0] == 3001
        assert 2 not in db.search("c", x[2], top_k=5, nprobe=8)[0]  # deleted
    finally:
        db.close()


def test_a_sweep_does_a_bounded_slice_per_step_and_finishes_over_later_steps(tmp_path):
    db = vdb.connect(tmp_path / "d", checkpoint_interval_s=3600, sweep_jobs_per_step=2)
    try:
        db.create_collection("c", dim=DIM, bootstrap_rows=300, split_limit=24, head_ratio=0.1)
        x = ClusteredMixture(DIM, 10, 1).sample(3000, 6)
        db.upsert("c", np.arange(3000), x)
        db.flush("c")
        c = db.collection("c")
        with c.index.maint_lock:
            db.delete("c", np.arange(0, 3000, 2))
            merges = []  # per step (a merge's reassignments may also split or clean a neighbour: not bounded)
            for _ in range(200):
                before = db.stats("c")["maintenance"]["merges"]
                if not c.maintain():
                    break
                merges.append(db.stats("c")["maintenance"]["merges"] - before)
        assert len(merges) >= 3 and max(merges) <= 2 and sum(merges) > 4
        for i in range(1, 3000, 98):  # the odd rows were kept
            assert db.search("c", x[i], top_k=1, nprobe=8)[0][0] == i
    finally:
        db.close()


def _sweep_with_compaction(path, garbage_fraction):
    """Merges and compactions of a sweep after deleting half the rows, one merge per step."""
    db = vdb.connect(path, checkpoint_interval_s=3600, sweep_jobs_per_step=1, compact_min_mb=0.001,
                     compact_garbage_fraction=garbage_fraction)
    try:
        db.create_collection("c", dim=DIM, bootstrap_rows=300, split_limit=24, head_ratio=0.1)
        x = ClusteredMixture(DIM, 10, 1).sample(3000, 7)
        db.upsert("c", np.arange(3000), x)
        db.flush("c")
        c = db.collection("c")
        with c.index.maint_lock:  # only these steps run, one after another: the same work in both runs
            while c.maintain():  # whatever the inserts' splits left to do
                pass
            before = db.stats("c")["maintenance"].get("compactions", 0)
            db.delete("c", np.arange(0, 3000, 2))
            while c.maintain():
                pass
        m = db.stats("c")["maintenance"]
        assert db.check("c")[0]["ok"]
        for i in range(1, 3000, 98):
            assert db.search("c", x[i], top_k=1, nprobe=8)[0][0] == i
        return m["merges"], m.get("compactions", 0) - before
    finally:
        db.close()


def test_a_due_compaction_waits_for_the_pending_sweep_so_the_shrunk_postings_are_still_merged(tmp_path):
    """A compaction drops dead records, the evidence that deletes shrank a posting: one run in the middle of a
    sweep would leave the rest of the shrunk postings unmerged."""
    merges_alone, compactions_alone = _sweep_with_compaction(tmp_path / "a", 0.99)  # never compacts
    merges, compactions = _sweep_with_compaction(tmp_path / "b", 0.001)  # due after the first merge
    assert compactions_alone == 0 and compactions >= 1
    assert merges_alone > 4 and merges == merges_alone
