"""merge_candidates: the k nearest distinct rows of two candidate lists (the index's and the memtable's)."""
import numpy as np
from hypothesis import given, settings, strategies as st

from index.kernels import merge_candidates as merge_topk


def _reference(r1, d1, r2, d2, k):
    best = {}
    for r, d in list(zip(r1, d1)) + list(zip(r2, d2)):
        if r >= 0 and np.isfinite(d):
            best[r] = min(best.get(r, np.inf), d)
    items = sorted(best.items(), key=lambda t: (t[1], t[0]))[:k]
    items += [(-1, np.inf)] * (k - len(items))
    return np.array([r for r, _ in items]), np.array([d for _, d in items], np.float32)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 3), st.integers(0, 12), st.integers(0, 12), st.integers(1, 10), st.integers(0, 10_000))
def test_merge_matches_reference(nq, n1, n2, k, seed):
    rng = np.random.default_rng(seed)

    def side(n):  # few distinct rows and distances, so duplicates and ties happen; some padding
        r = rng.integers(-1, 15, (nq, n)).astype(np.int64)
        d = rng.integers(0, 6, (nq, n)).astype(np.float32)
        d[r < 0] = np.inf
        return r, d
    r1, d1 = side(n1)
    r2, d2 = side(n2)
    rows, d = merge_topk(r1, d1, r2, d2, k)
    assert rows.shape == d.shape == (nq, k) and d.dtype == np.float32
    for q in range(nq):
        want_r, want_d = _reference(r1[q], d1[q], r2[q], d2[q], k)
        assert np.array_equal(rows[q], want_r) and np.array_equal(d[q], want_d)
