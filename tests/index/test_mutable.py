"""SPFresh-style maintenance of MutableSpannIndex on its own: splits keep postings under the limit, LIRE
reassignment moves rows to their nearest head with one state flip, merges retire near-empty postings, and
no live row is ever left in no posting."""
from __future__ import annotations

import numpy as np
import pytest

from index import BuildParams
from index.mutable import MutableSpannIndex
from index.rowstate import DELETED, VERSION_MASK, is_live, next_version
from index.types import SearchParams


def _index(tmp_path, **params):
    p = BuildParams(metric="l2", split_limit=40, bootstrap_rows=200, head_ratio=0.05, **params)
    return MutableSpannIndex.create(tmp_path / "idx", 8, p)


def _blobs(n, seed=0, centres=6):
    rng = np.random.default_rng(seed)
    c = np.random.default_rng(99).normal(0, 8, (centres, 8))
    return (c[rng.integers(0, centres, n)] + rng.normal(0, 1, (n, 8))).astype(np.float32)


def _add(idx, x):
    with idx.lock:
        return idx.add_rows(x, np.arange(idx.n_rows, idx.n_rows + len(x)))


def _live_postings(idx):
    return np.nonzero(~idx.retired_postings())[0].tolist()


def _lengths(idx):
    """Valid records per live posting."""
    return {p: len(idx.posting_rows(p)) for p in _live_postings(idx)}


def _all_live_reachable(idx):
    return bool(idx.reachable_rows(idx.state)[is_live(idx.state)].all())


def test_next_version_wraps_inside_seven_bits_and_never_sets_deleted():
    state = np.array([0, 1, VERSION_MASK], np.uint8)
    assert next_version(state).tolist() == [1, 2, 0]
    assert (next_version(state) & DELETED == 0).all()


def test_inserts_past_the_limit_split_postings(tmp_path):
    idx = _index(tmp_path)
    try:
        idx.bootstrap(_add(idx, _blobs(200)))
        heads_before = idx.n_heads
        idx.insert(_add(idx, _blobs(3000, seed=1)))
        assert idx.stats.splits > 0 and idx.n_heads > heads_before
        assert max(_lengths(idx).values()) <= idx.params.split_limit
        assert _all_live_reachable(idx)
        retired = np.nonzero(idx.retired_postings())[0]
        assert len(retired) and all(len(idx.posting_rows(int(p))) == 0 for p in retired)  # gone, not half-alive
    finally:
        idx.close()


def test_a_split_divides_a_posting_into_two_balanced_halves(tmp_path):
    idx = _index(tmp_path, reassign_neighbors=0)
    try:
        rows = _add(idx, _blobs(200, centres=1))
        idx.bootstrap(rows)
        big = max(_lengths(idx), key=_lengths(idx).get)
        extra = _add(idx, _blobs(300, seed=4, centres=1))
        store = idx.files.postings
        recs = np.zeros(len(extra), store.record_dtype)
        recs["id"], recs["code"] = extra, idx.quantizer.encode(idx.vectors_of(extra))
        store.append(big, recs)  # over the limit, as an insert burst leaves it before it settles
        members = idx.posting_rows(big)
        before = set(_live_postings(idx))
        idx.split(big)
        halves = sorted(set(_live_postings(idx)) - before)
        assert idx.retired_postings()[big] and len(halves) == 2
        written = [store.records(h)["id"] for h in halves]  # the split's records, plus rows LIRE placed there
        assert np.isin(members, np.concatenate(written)).all() and min(map(len, written)) > 0
        assert _all_live_reachable(idx)
    finally:
        idx.close()


def test_reassignment_moves_rows_with_one_state_flip(tmp_path):
    idx = _index(tmp_path)
    try:
        rows = _add(idx, _blobs(400))
        idx.bootstrap(rows)
        before, reassigned = idx.state[rows].copy(), idx.stats.reassigned
        moved = rows[:25]
        visible_before = sum(int(np.isin(idx.posting_rows(p), moved).sum()) for p in _live_postings(idx))
        idx.reassign(moved)
        assert (idx.state[moved] == next_version(before[:25])).all()  # new version: old copies are now stale
        assert (idx.state[rows[25:]] == before[25:]).all()
        assert _all_live_reachable(idx) and idx.stats.reassigned - reassigned == 25
        visible = sum(int(np.isin(idx.posting_rows(p), moved).sum()) for p in _live_postings(idx))
        assert visible >= 25 and visible_before >= 25  # the new copies, never the old ones as well
        records = sum(len(idx.files.postings.records(p)) for p in _live_postings(idx))
        assert records >= visible + visible_before  # the stale copies are still stored, just invisible
    finally:
        idx.close()


def test_a_row_deleted_during_reassignment_stays_deleted(tmp_path):
    idx = _index(tmp_path)
    try:
        rows = _add(idx, _blobs(300))
        idx.bootstrap(rows)
        idx.delete_rows(rows[:5])
        idx.reassign(rows[:10])
        assert (idx.state[rows[:5]] & DELETED).all() and is_live(idx.state[rows[5:10]]).all()
        assert not idx.reachable_rows(idx.state)[rows[:5]].any()
    finally:
        idx.close()


def test_sweep_merges_near_empty_postings_into_their_neighbours(tmp_path):
    idx = _index(tmp_path)
    try:
        rows = _add(idx, _blobs(2000))
        idx.bootstrap(rows[:200])
        idx.insert(rows[200:])
        lengths = _lengths(idx)
        victim = max(lengths, key=lengths.get)
        members = idx.posting_rows(victim)
        keep = members[:1]
        idx.delete_rows(np.setdiff1d(members, keep))  # leave one live row in the fullest posting
        merges = idx.stats.merges
        idx.sweep()
        assert idx.stats.merges > merges and idx.retired_postings()[victim]
        assert is_live(idx.state[keep]).all() and idx.reachable_rows(idx.state)[keep].all()
        assert _all_live_reachable(idx)
    finally:
        idx.close()


def test_search_never_returns_deleted_rows_or_stale_replicas(tmp_path):
    idx = _index(tmp_path)
    try:
        x = _blobs(1500)
        rows = _add(idx, x)
        idx.bootstrap(rows[:200])
        idx.insert(rows[200:])
        idx.delete_rows(rows[::3])
        idx.reassign(rows[1::3][:100])
        p = SearchParams(nprobe=10_000, eps=1e9, rerank_k=400).resolved(20)
        found, _ = idx.search_rows(x[:50], 20, p)
        found = found[found >= 0]
        assert is_live(idx.state[found]).all()
        for r in found.reshape(-1):
            assert r % 3 != 0
    finally:
        idx.close()


@pytest.mark.parametrize("n", [199, 200])
def test_bootstrap_waits_for_enough_rows(tmp_path, n):
    idx = _index(tmp_path)
    try:
        rows = _add(idx, _blobs(n))
        assert not idx.bootstrapped
        idx.bootstrap(rows)
        assert idx.bootstrapped and _all_live_reachable(idx)
    finally:
        idx.close()
