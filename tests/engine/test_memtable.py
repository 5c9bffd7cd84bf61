"""The memtable's append buffer: snapshots stay valid while writers append and maintenance drops the front."""
import numpy as np
import pytest

from index.types import HeadProbe, Metric
from index.rowstate import DELETED
from vdb.engine.memtable import Memtable, search_exact


def _brute(rows, vecs, q, k, state):
    ok = (state[rows] & DELETED) == 0
    rows, vecs = rows[ok], vecs[ok]
    d = ((vecs - q) ** 2).sum(1)
    o = np.argsort(d, kind="stable")[:k]
    return rows[o], d[o]


def test_snapshots_survive_growth_and_front_drops():
    rng = np.random.default_rng(0)
    mt = Memtable()
    all_rows, all_vecs, views = [], [], []
    next_row = 0
    for step in range(60):
        n = int(rng.integers(1, 700))
        rows = np.arange(next_row, next_row + n)
        next_row += n
        vecs = rng.standard_normal((n, 8)).astype(np.float32)
        mt.add(rows, vecs)
        all_rows.append(rows)
        all_vecs.append(vecs)
        views.append((mt.snapshot(), np.concatenate(all_rows), np.concatenate(all_vecs)))
        if step % 7 == 6:  # maintenance takes the oldest chunks
            n_chunks, r, v = mt.oldest(900)
            assert np.array_equal(r, np.concatenate(all_rows[:n_chunks]))
            assert np.array_equal(v, np.concatenate(all_vecs[:n_chunks]))
            mt.drop_front(n_chunks)
            del all_rows[:n_chunks], all_vecs[:n_chunks]
        assert len(mt) == sum(len(r) for r in all_rows)
        assert mt.snapshot().chunks == len(all_rows)
    for view, rows, vecs in views:  # every old snapshot still shows exactly what it showed when taken
        assert np.array_equal(view.rows, rows) and np.array_equal(view.vectors, vecs)
        assert np.allclose(view.sq_norms, (vecs * vecs).sum(1), rtol=1e-5)


@pytest.mark.parametrize("n", [500, 3000])  # the compiled small path and the numpy path
def test_search_exact_masks_deleted_rows(n):
    rng = np.random.default_rng(1)
    mt = Memtable()
    rows = np.arange(n)
    vecs = rng.standard_normal((n, 16)).astype(np.float32)
    for part in np.array_split(np.arange(n), 5):
        mt.add(rows[part], vecs[part])
    state = np.zeros(n, np.uint8)
    state[rng.choice(n, n * 2 // 5, replace=False)] = DELETED
    q = rng.standard_normal((3, 16)).astype(np.float32)
    got_r, got_d = search_exact(mt.snapshot(), q, 10, Metric.L2, state, None)
    for i in range(3):
        want_r, want_d = _brute(rows, vecs, q[i], 10, state)
        assert np.array_equal(got_r[i], want_r)
        assert np.allclose(got_d[i], want_d, rtol=1e-4)
    assert not np.isin(got_r, np.nonzero(state)[0]).any()
    state[:] = DELETED  # nothing live: an empty answer, not deleted rows
    r, d = search_exact(mt.snapshot(), q, 10, Metric.L2, state, None)
    assert r.shape == (3, 0)


@pytest.mark.parametrize("metric", [Metric.L2, Metric.IP])
def test_the_compiled_scan_and_the_matrix_product_agree_on_a_large_memtable(metric):
    """A few queries take the compiled loop whatever the memtable's size, a batch the matrix product (issue
    13): both give the brute-force answer, dead rows skipped; the compiled loop gives ties to the earlier row."""
    rng = np.random.default_rng(3)
    n, dim = 6000, 16
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    vecs[10] = vecs[20]  # a tie: the earlier row wins
    mt = Memtable()
    mt.add(np.arange(n), vecs)
    state = np.zeros(n, np.uint8)
    state[rng.choice(n, 500, replace=False)] |= DELETED
    state[[10, 20]] = 0
    q = np.concatenate([vecs[20:21] + 1e-3, rng.standard_normal((11, dim)).astype(np.float32)])
    few_r, few_d = search_exact(mt.snapshot(), q[:2], 7, metric, state, None)
    many_r, many_d = search_exact(mt.snapshot(), q, 7, metric, state, None)
    live = np.flatnonzero(state == 0)
    for i in range(len(q)):
        d = ((vecs[live] - q[i]) ** 2).sum(1) if metric is Metric.L2 else -(vecs[live] @ q[i])
        want = live[np.argsort(d, kind="stable")[:7]]
        assert set(many_r[i]) == set(want)  # (the matrix product breaks exact ties either way)
        if i < 2:
            assert np.array_equal(few_r[i], want)
            assert np.allclose(few_d[i], many_d[i], rtol=1e-4, atol=1e-4)
    assert 10 in few_r[0] and 20 in few_r[0] and list(few_r[0]).index(10) < list(few_r[0]).index(20)


def test_a_search_scans_only_the_rows_filed_under_its_probed_heads():
    """Rows filed under heads at write time (issue 13): a query scans the rows of the heads it probes, of
    retired heads, unfiled rows, and rows filed before its nearest head existed (which the probe may not
    have, being newer than its posting snapshot); nothing else. Below scan_all_rows, or with no probes, or
    with no nearest head known, every row."""
    rng = np.random.default_rng(5)
    n, dim, n_heads = 3000, 8, 40
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    heads = np.stack([rng.integers(-1, n_heads + 5, n), rng.integers(30, 45, n)], 1)  # some past `retired`
    mt = Memtable()
    for part in np.array_split(np.arange(n), 4):
        mt.add(part, vecs[part], heads[part])
    state = np.zeros(n, np.uint8)
    state[rng.choice(n, 300, replace=False)] = DELETED
    retired = np.zeros(n_heads, bool)
    retired[[3, 17]] = True
    nq = 6
    q = rng.standard_normal((nq, dim)).astype(np.float32)
    probes = np.stack([rng.choice(n_heads, 5, replace=False) for _ in range(nq)])
    probes[1, 0] = 35   # a nearest head newer than some filings
    probes[2, 3] = -1   # a pruned probe
    nearest = probes[:, 0].copy()
    probes[4, 0], nearest[4] = -1, 42  # its nearest head is newer than the posting snapshot: not probed
    nearest[5] = -1                     # no nearest head known
    probe = HeadProbe(probes, nearest)
    got_r, got_d = search_exact(mt.snapshot(), q, 10, Metric.L2, state, None, probe, retired, scan_all_rows=0)
    for i in range(nq):
        h, bound = heads[:, 0], heads[:, 1]
        known = (h >= 0) & (h < n_heads)
        scanned = ~known | np.isin(h, probes[i][probes[i] >= 0]) | retired[np.where(known, h, 0)] & known \
            | (nearest[i] >= bound) | (nearest[i] < 0)
        want_r, want_d = _brute(np.flatnonzero(scanned), vecs[scanned], q[i], 10, state)
        assert np.array_equal(got_r[i], want_r)
        assert np.allclose(got_d[i], want_d, rtol=1e-4)
    whole_r, _ = search_exact(mt.snapshot(), q, 10, Metric.L2, state, None, probe, retired, scan_all_rows=n)
    for i in range(nq):
        assert np.array_equal(whole_r[i], _brute(np.arange(n), vecs, q[i], 10, state)[0])
    assert not np.array_equal(whole_r, got_r)  # the filing did narrow the scan
