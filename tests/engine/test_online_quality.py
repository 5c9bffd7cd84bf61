"""Online maintenance keeps the index as good as a fresh bulk build: growing 10x through splits, and updating
10% of a bulk-built index (SPFresh's claim, the durable-writes issue's target)."""
from __future__ import annotations

import numpy as np
import pytest

import vdb
from index import BuildParams, FlatIndex, SpannIndex, build_index, recall_at_k
from vdb.inputs.synthetic import ClusteredMixture

N, DIM = 20_000, 32


@pytest.fixture(scope="module")
def data():
    m = ClusteredMixture(DIM, 40, 11)
    return m.sample(N, 1), m.sample(300, 2)


def _fresh_recall(tmp, x, ids, q, truth, nprobe):
    build_index(x, tmp / "fresh", ids=ids, params=BuildParams())
    with SpannIndex.open(tmp / "fresh") as idx:
        return recall_at_k(idx.search(q, 10, nprobe=nprobe)[0], truth, 10)


def test_growing_ten_times_through_splits(tmp_path, data):
    x, q = data
    truth, _ = FlatIndex(x, "l2").search(q, 10)
    with vdb.connect(tmp_path / "db", checkpoint_interval_s=3600) as db:
        db.create_collection("c", dim=DIM)
        db.upsert("c", np.arange(2000), x[:2000])
        db.flush("c")
        for s in range(2000, N, 500):
            db.upsert("c", np.arange(s, s + 500), x[s:s + 500])
        db.flush("c")
        st = db.stats("c")
        assert st["maintenance"]["splits"] > 20  # it really grew through splits
        assert st["index"]["posting_lengths"]["max"] <= st["index"]["build_params"]["split_limit"]
        online = recall_at_k(db.search("c", q, top_k=10, nprobe=8, use_cache=False)[0], truth, 10)
    fresh = _fresh_recall(tmp_path, x, None, q, truth, 8)
    assert online >= fresh - 0.02, (online, fresh)


def test_updating_ten_percent_stays_within_a_point_of_a_fresh_build(tmp_path, data):
    x, q = data
    n0 = int(N * 0.9)
    build_index(x[:n0], tmp_path / "bulk", params=BuildParams())
    rng = np.random.default_rng(0)
    deleted = rng.choice(n0, N // 20, replace=False)
    with vdb.connect(tmp_path / "db", checkpoint_interval_s=3600) as db:
        db.attach_collection("c", tmp_path / "bulk")
        for s in range(n0, N, 256):
            db.upsert("c", np.arange(s, min(s + 256, N)), x[s:s + 256])
        for chunk in np.array_split(deleted, 8):
            db.delete("c", chunk)
        db.flush("c")
        live = np.setdiff1d(np.arange(N), deleted)
        truth, _ = FlatIndex(x[live], "l2", ids=live).search(q, 10)
        online = recall_at_k(db.search("c", q, top_k=10, nprobe=16, use_cache=False)[0], truth, 10)
        assert db.check("c")[0]["ok"]
    fresh = _fresh_recall(tmp_path, x[live], live, q, truth, 16)
    assert online >= fresh - 0.01, (online, fresh)
