"""Sweeps after deletes (issue 13): merge only the postings that dead records made small, not the ones a bulk
build made small, and do it in bounded slices so that a large sweep never stops indexing."""
from __future__ import annotations

import numpy as np

from index import BuildParams, build_index
from index.mutable import MutableSpannIndex
from index.rowstate import is_live


def _bulk(tmp_path, n=4000, seed=0):
    """A bulk-built index of uneven clusters: many postings start below merge_limit."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 6, (40, 8))
    sizes = rng.zipf(1.6, 40).clip(1, 400)
    labels = rng.choice(40, n, p=sizes / sizes.sum())
    x = (centres[labels] + rng.normal(0, 1, (n, 8))).astype(np.float32)
    build_index(x, tmp_path / "idx", params=BuildParams(metric="l2", head_ratio=0.05, split_limit=64,
                                                         merge_limit=24))
    return MutableSpannIndex.open_writable(tmp_path / "idx")


def _counts(idx):
    """Records (live or dead) of each live posting."""
    return {p: len(idx.files.postings.records(p)) for p in np.nonzero(~idx.retired_postings())[0].tolist()}


def _all_live_reachable(idx):
    return bool(idx.reachable_rows(idx.state)[is_live(idx.state)].all())


def test_a_few_deletes_do_not_merge_the_postings_a_bulk_build_left_small(tmp_path):
    idx = _bulk(tmp_path)
    try:
        limit = idx.params.merge_limit
        counts = _counts(idx)
        small = [p for p, n in counts.items() if n < limit]
        big = [p for p, n in counts.items() if n >= 2 * limit + 10]
        assert len(small) >= 5 and big  # the premise: the build left postings under merge_limit
        in_small = np.unique(np.concatenate([idx.posting_rows(p) for p in small]))
        victims = np.setdiff1d(np.concatenate([idx.posting_rows(p)[:5] for p in big]), in_small)
        idx.delete_rows(victims)  # a few rows of big postings: none of them falls under merge_limit
        assert not idx.sweep()
        assert idx.stats.merges == 0
        assert not idx.retired_postings()[small].any()
        assert _all_live_reachable(idx)
    finally:
        idx.close()


def test_postings_that_deletes_made_small_are_merged(tmp_path):
    idx = _bulk(tmp_path)
    try:
        limit = idx.params.merge_limit
        counts = _counts(idx)
        big = max(counts, key=counts.get)
        small = next(p for p, n in counts.items() if 4 <= n < limit)
        members = idx.posting_rows(big)
        idx.delete_rows(members[limit // 2:])  # from over merge_limit to under it
        idx.delete_rows(idx.posting_rows(small)[: counts[small] // 2 + 1])  # lost more than half of its rows
        idx.sweep()
        assert idx.retired_postings()[[big, small]].all()
        assert is_live(idx.state[members[: limit // 2]]).all() and _all_live_reachable(idx)
    finally:
        idx.close()


def test_a_sweep_does_at_most_max_jobs_merges_per_call_and_finishes_over_later_calls(tmp_path):
    idx = _bulk(tmp_path)
    try:
        limit = idx.params.merge_limit
        counts = _counts(idx)
        shrink = [p for p, n in counts.items() if n >= limit + 4][:12]
        assert len(shrink) == 12
        idx.delete_rows(np.concatenate([idx.posting_rows(p)[1:] for p in shrink]))
        calls, merges = 0, []
        more = True
        while more:
            before = idx.stats.merges
            more = idx.sweep(max_jobs=5)
            merges.append(idx.stats.merges - before)
            calls += 1
            assert calls < 20
        assert max(merges) <= 5 and calls >= 3 and merges[0] == 5
        assert idx.retired_postings()[shrink].all()
        assert _all_live_reachable(idx)
    finally:
        idx.close()
