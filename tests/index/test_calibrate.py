"""The build's recall calibration: held-out samples, the smallest nprobe reaching the target, used by default."""
from __future__ import annotations

import numpy as np
import pytest

from index import FlatIndex, SpannIndex, build_index, recall_at_k
from index.build import calibrate_index
from index.calibrate import MARGIN, Z, exact_neighbours, margin_of, nprobe_for, reaches_target
from index.types import BuildParams, Metric


def test_exact_neighbours_exclude_the_query_row_and_match_brute_force(base):
    rows = np.array([3, 500, 5999])
    got = exact_neighbours(np.asarray(base), base[rows], rows, 5, Metric.L2)
    want, _ = FlatIndex(base, "l2").search(base[rows], 6)
    assert (got != rows[:, None]).all()
    assert np.array_equal(got, want[:, 1:])   # the sample itself is its own nearest: dropped


def test_exact_neighbours_by_inner_product_across_blocks_match_brute_force(monkeypatch):
    # blocks of 64 rows, so the running top-k is folded across many blocks, ties and all
    import index.calibrate as calibrate_module
    monkeypatch.setattr(calibrate_module, "BLOCK_BYTES", 64 * 4 * 16)
    rng = np.random.default_rng(5)
    matrix = rng.normal(size=(1000, 17)).astype(np.float32)   # 16 dims and a trailing column, as the file
    matrix[500] = matrix[20]                                   # a tie: the earlier row ranks first
    queries = rng.normal(size=(7, 16)).astype(np.float32)
    queries[0] = matrix[20, :16] * 50                          # its nearest by -dot are rows 20 and 500
    rows = np.array([3, 8, 9, 10, 11, 12, 13])
    got = exact_neighbours(matrix, queries, rows, 6, Metric.IP)
    d = -(queries @ matrix[:, :16].T)
    d[np.arange(7), rows] = np.inf
    assert got.tolist() == np.argsort(d, axis=1, kind="stable")[:, :6].tolist()
    assert got[0, :2].tolist() == [20, 500]


def test_exact_neighbours_of_nothing_is_an_empty_answer():
    # k = 0 indexed the k-th slot of an empty list in the kernel and wrote outside it (a reviewer's heap abort)
    m = np.random.default_rng(1).normal(size=(50, 9)).astype(np.float32)
    assert exact_neighbours(m, m[:3, :8], np.arange(3), 0, Metric.L2).shape == (3, 0)
    assert exact_neighbours(m, m[:0, :8], np.arange(0), 5, Metric.L2).shape == (0, 5)


def test_the_build_picks_the_smallest_nprobe_that_reaches_the_target(built_l2, base, queries):
    with SpannIndex.open(built_l2) as idx:
        cal = idx.calibration
        curve = dict(cal["curve"])
        assert cal["target_recall"] == 0.9 and cal["samples"] == 500
        chosen = cal["nprobe"]
        margins = dict(zip(curve, cal["margins"]))
        assert all(m >= MARGIN for m in margins.values())
        assert curve[chosen] >= 0.9 + margins[chosen]
        assert all(r < 0.9 + margins[p] for p, r in curve.items() if p < chosen)
        # the default search uses it, and it holds on independent queries from the same distribution
        assert np.array_equal(idx.search(queries, 10)[0], idx.search(queries, 10, nprobe=chosen)[0])
        truth, _ = FlatIndex(base, "l2").search(queries, 10)
        assert recall_at_k(idx.search(queries, 10)[0], truth, 10) >= 0.90


def test_a_higher_target_probes_more(built_l2):
    with SpannIndex.open(built_l2) as idx:
        assert idx.default_nprobe(0.97) > idx.default_nprobe() >= 1
        assert idx.default_nprobe(0.5) <= idx.default_nprobe()


def test_an_uncalibrated_index_falls_back_and_can_be_calibrated_later(tmp_path, base):
    path = tmp_path / "u"
    build_index(base[:3000], path, params=BuildParams(head_ratio=0.02, seed=1, target_recall=0))
    with SpannIndex.open(path) as idx:
        assert idx.calibration is None and idx.default_nprobe() == 32
    cal = calibrate_index(path, 0.8, samples=200)
    with SpannIndex.open(path) as idx:
        assert idx.calibration == cal and idx.default_nprobe() == cal["nprobe"] < 32


def test_the_margin_is_two_standard_errors_of_the_sample_and_never_below_the_floor():
    """At 10M the scan tier's calibration cleared 0.90 by the old fixed 0.005 (about one standard error at 500
    samples) with nprobe 48, which then gave 0.8989 on 800 new queries: the margin now scales with the sample's
    own spread."""
    spread = np.array([1.0, 0.6] * 250)                  # per-query recall@10 of 500 samples, std 0.2
    assert margin_of(spread) == pytest.approx(Z * np.std(spread, ddof=1) / np.sqrt(500))
    assert margin_of(spread) > 2 * MARGIN
    assert margin_of(np.full(500, 0.9)) == MARGIN        # no spread: the floor
    cal = {"target_recall": 0.9, "nprobe": 16, "curve": [[8, 0.905], [16, 0.93]], "margins": [0.018, 0.012]}
    assert nprobe_for(cal, 0.9, 32) == 16                # 0.905 does not clear 0.9 by its own margin
    assert nprobe_for({**cal, "margins": None}, 0.9, 32) == 8  # stored before margins: MARGIN
    assert not reaches_target({**cal, "curve": [[8, 0.905], [16, 0.91]]})


def test_nprobe_for_reads_the_curve():
    cal = {"nprobe": 8, "curve": [[4, 0.8], [8, 0.92], [16, 0.97]]}
    assert nprobe_for(cal, 0, 32) == 8 and nprobe_for(cal, 0.95, 32) == 16 and nprobe_for(None, 0.95, 32) == 32
    assert nprobe_for(cal, 0.99, 32) == 32  # beyond the curve: twice the largest measured


def test_the_exact_answer_streams_blocks_of_a_bounded_size_whatever_the_dimension(tmp_path, monkeypatch):
    # the blocks were a fixed 262,144 rows (805 MB of float32 at dim 768), and an index over each block copied
    # it again while the previous block's index was still alive
    import tracemalloc
    import index.calibrate as calibrate_module
    from index.calibrate import exact_neighbours
    from index.types import Metric
    monkeypatch.setattr(calibrate_module, "BLOCK_BYTES", 1 << 20, raising=False)
    rng = np.random.default_rng(3)
    matrix = np.lib.format.open_memmap(tmp_path / "m.npy", mode="w+", dtype=np.float32, shape=(4096, 1025))
    matrix[:] = rng.normal(size=matrix.shape).astype(np.float32)
    rows = np.array([5, 900, 4000])
    queries = np.ascontiguousarray(matrix[rows, :1024])
    tracemalloc.start()
    got = exact_neighbours(matrix, queries, rows, 5, Metric.L2)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 3 << 20, f"{peak / 2**20:.1f} MiB for a 16 MiB matrix with 1 MiB blocks"
    base = np.asarray(matrix[:, :1024])
    d = ((base[None, :, :] - queries[:, None, :]) ** 2).sum(-1)
    d[np.arange(3), rows] = np.inf
    assert got.tolist() == np.argsort(d, axis=1)[:, :5].tolist()


def test_calibration_queries_are_moved_off_their_rows_by_a_share_of_the_nearest_neighbour_distance(built_l2):
    """Stored rows are easier queries than new points (the index was built around them): at 10M a calibration
    on them chose a tier nprobe that served 0.899 on fresh queries. Each sample now moves by MOVE times its
    distance to its nearest other row, in a random direction."""
    from index.calibrate import MOVE, moved_off
    with SpannIndex.open(built_l2) as idx:
        rows = np.array([10, 200, 3000, 4500])
        stored = idx.stored_vectors(rows)
        moved = moved_off(idx, stored, rows, np.random.default_rng(0))
        matrix = np.asarray(idx.stored_matrix())[:, : stored.shape[1]]
        d = np.linalg.norm(matrix[None, :, :] - stored[:, None, :], axis=2)
        d[np.arange(len(rows)), rows] = np.inf
        nearest = d.min(1)
        assert np.allclose(np.linalg.norm(moved - stored, axis=1), MOVE * nearest, rtol=1e-3)
        again = moved_off(idx, stored, rows, np.random.default_rng(0))
        assert np.array_equal(moved, again)                     # seeded: a build calibrates the same way twice
