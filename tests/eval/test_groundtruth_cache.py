"""Exact ground truth: the same as numpy brute force, ties broken by id, cached on disk per metric and K."""
from __future__ import annotations

import numpy as np
import pytest

from vdb.eval import groundtruth as GT


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((300, 8)).astype(np.float32) * rng.uniform(0.5, 3, (300, 1)).astype(np.float32)
    return base, rng.standard_normal((20, 8)).astype(np.float32)


def _numpy_topk(base, q, metric, k):
    if metric == "l2":
        d = ((q[:, None, :] - base[None]) ** 2).sum(-1)
    elif metric == "ip":
        d = -(q @ base.T)
    else:
        d = 1 - (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (base / np.linalg.norm(base, axis=1, keepdims=True)).T
    return np.argsort(d, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_exact_search_matches_numpy(data, metric):
    base, q = data
    ids, dists = GT.exact_search(base, q, metric, 10)
    np.testing.assert_array_equal(ids, _numpy_topk(base, q, metric, 10))
    np.testing.assert_allclose(dists, GT.distances_of(base, q, ids, metric), rtol=1e-4, atol=1e-5)


def test_ties_go_to_the_lowest_id():
    base = np.zeros((100, 4), np.float32)
    base[:, 0] = 1.0                               # 100 identical vectors: every distance ties
    ids, _ = GT.exact_search(base, np.ones((3, 4), np.float32), "l2", 5)
    np.testing.assert_array_equal(ids, np.tile(np.arange(5), (3, 1)))


def test_cache_is_written_and_serves_smaller_k(tmp_path, data, monkeypatch):
    base, q = data
    ids20, d20 = GT.ground_truth(base, q, "ip", 20, tmp_path)
    assert len(list(tmp_path.glob("*-ip-k20.ids.npy"))) == 1 and len(list(tmp_path.glob("*.tmp"))) == 0

    def boom(*a, **kw):
        raise AssertionError("should have been served from the cache")
    monkeypatch.setattr(GT, "exact_search", boom)
    ids5, d5 = GT.ground_truth(base, q, "ip", 5, tmp_path)
    np.testing.assert_array_equal(ids5, ids20[:, :5])
    np.testing.assert_array_equal(d5, d20[:, :5])
    with pytest.raises(AssertionError):                      # another metric is another key
        GT.ground_truth(base, q, "l2", 5, tmp_path)


def test_distances_of_marks_padding_infinite(data):
    base, q = data
    d = GT.distances_of(base, q[:1], np.array([[0, -1]]), "l2")
    assert np.isfinite(d[0, 0]) and d[0, 1] == np.inf
