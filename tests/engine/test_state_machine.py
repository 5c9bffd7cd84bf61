"""A hypothesis state machine: upsert / delete / search / flush / restart / crash-restart against a dict oracle.

Small split and bootstrap limits make bootstraps, splits, reassignments, merges and sweeps happen within a
few steps. Invariants: count, no duplicate ids in results, only live ids, sorted distances, and an exhaustive
search (every posting, full re-rank) equal to the exact answer.
"""
from __future__ import annotations

import shutil
import tempfile

import numpy as np
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import vdb

DIM = 8
IDS = st.lists(st.integers(0, 150), min_size=1, max_size=40, unique=True)
OPTIONS = dict(bootstrap_rows=24, split_limit=16, merge_limit=2, head_ratio=0.1, max_pending_rows=100_000,
               sweep_deleted_fraction=0.02, checkpoint_interval_s=3600, memtable_scan_all_rows=0)
DB_OPTIONS = ("max_pending_rows", "checkpoint_interval_s", "memtable_scan_all_rows")  # memtable_scan_all_rows 0:
# every search with pending rows scans them through their heads (vdb/engine/memtable.py)


def vectors_for(ids: list[int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(0, 10, (6, DIM))
    return (centres[rng.integers(0, 6, len(ids))] + rng.normal(0, 1, (len(ids), DIM))).astype(np.float32)


class VdbMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="vdb-sm-")
        self.db = vdb.connect(self.dir, **{k: v for k, v in OPTIONS.items() if k in DB_OPTIONS})
        self.db.create_collection("c", dim=DIM, **{k: v for k, v in OPTIONS.items() if k not in DB_OPTIONS})
        self.oracle: dict[int, np.ndarray] = {}

    @initialize(seed=st.integers(0, 10**6))
    def seed_data(self, seed):
        self.upsert(list(range(0, 120, 3)), seed)

    @rule(ids=IDS, seed=st.integers(0, 10**6))
    def upsert(self, ids, seed):
        x = vectors_for(ids, seed)
        self.db.upsert("c", ids, x)
        self.oracle.update(zip(ids, x))

    @rule(ids=IDS)
    def delete(self, ids):
        self.db.delete("c", ids)
        for i in ids:
            self.oracle.pop(i, None)

    @rule()
    def flush(self):
        self.db.flush("c")

    @rule()
    def maintain(self):
        """One maintenance step now (the background thread also runs them, on its own schedule)."""
        self.db.maintain("c")

    @rule()
    def restart(self):
        self.db.close()
        self.db = vdb.connect(self.dir, checkpoint_interval_s=3600, memtable_scan_all_rows=0)

    @rule()
    def crash_restart(self):
        self.db.close(checkpoint=False)  # like a killed process: only the WAL brings the changes back
        self.db = vdb.connect(self.dir, checkpoint_interval_s=3600, memtable_scan_all_rows=0)

    @precondition(lambda self: self.oracle)
    @rule(seed=st.integers(0, 10**6), k=st.integers(1, 12))
    def search(self, seed, k):
        q = vectors_for([0], seed)[0]
        ids, d = self.db.search("c", q, top_k=k)
        found = ids[ids >= 0]
        assert len(found) == len(set(found.tolist())), "duplicate ids in one result"
        assert set(found.tolist()) <= set(self.oracle), "a deleted or unknown id was returned"
        assert (np.diff(d[ids >= 0]) >= -1e-5).all(), "distances not sorted"
        ids, d = self.db.search("c", q, top_k=k, nprobe=10_000, eps=1e9, rerank_k=10_000)
        keys = np.array(sorted(self.oracle))
        exact = ((np.stack([self.oracle[i] for i in keys]) - q) ** 2).sum(1)
        expect = np.sort(exact)[: min(k, len(keys))]
        assert np.allclose(d[: len(expect)], expect, rtol=1e-4, atol=1e-3), "exhaustive search is not exact"

    @invariant()
    def count_matches(self):
        assert self.db.count("c") == len(self.oracle)

    def teardown(self):
        try:
            st = self.db.stats("c")
            event(f"bootstrapped: {st['bootstrapped']}")
            event(f"postings split or merged: {st['maintenance']['retired_postings'] > 0}")
            report = self.db.check("c")[0]
            assert report["ok"], report["violations"]
        finally:
            self.db.close()
            shutil.rmtree(self.dir, ignore_errors=True)


VdbMachine.TestCase.settings = settings(max_examples=30, stateful_step_count=40, deadline=None)
TestVdbStateMachine = VdbMachine.TestCase
