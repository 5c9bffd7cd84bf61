"""Meta-features on constructed data whose answer is known."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import davies_bouldin_score

from vdb.eval import metafeatures as MF


def _blobs(centres, n_each: int, spread: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    c = np.asarray(centres, np.float32)
    x = np.concatenate([ci + spread * rng.standard_normal((n_each, c.shape[1])) for ci in c]).astype(np.float32)
    return x, np.repeat(np.arange(len(c)), n_each)


def test_cv_of_norms():
    unit = np.random.default_rng(0).standard_normal((100, 8)).astype(np.float32)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    assert MF.norm_cv(unit) == pytest.approx(0.0, abs=1e-6)
    assert MF.norm_cv(np.array([[1.0, 0], [0, 3.0]])) == pytest.approx(0.5)   # std 1 / mean 2


def test_dbi_euclidean_matches_sklearn():
    x, y = _blobs([[0, 0], [3, 0], [0, 3]], 50, 1.0)
    centres = np.stack([x[y == c].mean(0) for c in range(3)])
    assert MF.davies_bouldin(x, y, centres) == pytest.approx(davies_bouldin_score(x, y), rel=1e-5)


def test_two_well_separated_blobs_have_low_dbi():
    far, _ = _blobs([[0, 0, 0], [100, 0, 0]], 100, 1.0)
    near, _ = _blobs([[0, 0, 0], [1, 0, 0]], 100, 1.0)
    dbi = []
    for x in (far, near):
        assign, centres = MF.kmeans(x, 2, spherical=False, seed=0)
        dbi.append(MF.davies_bouldin(x, assign, centres))
    assert dbi[0] < 0.1 < dbi[1]


def test_cosine_dbi_sees_directions_not_lengths():
    # two directions, each spread over lengths 1..100: one cluster per direction under cosine
    rng = np.random.default_rng(0)
    dirs = np.array([[1, 0, 0], [0, 1, 0]], np.float32)
    x = np.concatenate([d * rng.uniform(1, 100, (100, 1)) + 0.01 * rng.standard_normal((100, 3)) for d in dirs])
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    assign, centres = MF.kmeans(unit.astype(np.float32), 2, spherical=True, seed=0)
    assert MF.davies_bouldin(unit, assign, centres, "cosine") < 0.01


def test_hubness_is_zero_when_every_point_is_an_equal_neighbour():
    angles = np.arange(60) * 2 * np.pi / 60
    circle = np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32)
    assert MF.hubness(circle, 4) == 0.0


def test_hubness_is_positive_in_high_dimension():
    x = np.random.default_rng(0).standard_normal((1500, 64)).astype(np.float32)
    assert MF.hubness(x, 10) > 0.5


def test_lid_of_a_plane_in_20_dimensions_is_about_two():
    rng = np.random.default_rng(0)
    plane = rng.uniform(0, 1, (4000, 2)) @ np.linalg.qr(rng.standard_normal((20, 2)))[0].T
    base = plane.astype(np.float32)
    q = base[:300]
    index = MF.faiss.IndexFlatL2(20)
    index.add(base)
    d, ids = MF._knn(index, q, 21)
    d, _ = MF._drop_self(d, ids, np.arange(300))
    assert 1.5 < MF.lid_mle(d) < 2.7


def test_lid_skips_duplicates():
    d = np.array([[0.0, 1.0, 2.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    # row 0: r = 1, 2, 4 -> mean ln(r / 4) = (ln .25 + ln .5 + 0) / 3; row 1 has no positive distance
    expected = -1.0 / ((np.log(0.25) + np.log(0.5)) / 3)
    assert MF.lid_mle(d) == pytest.approx(expected)


def test_relative_contrast_high_for_tight_clusters_low_for_noise():
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((3000, 128)).astype(np.float32)
    tight, _ = _blobs(rng.standard_normal((20, 32)) * 10, 100, 0.1)
    rc = []
    for x in (noise, rng.permutation(tight)):
        index = MF.faiss.IndexFlatL2(x.shape[1])
        index.add(x[100:])
        d, _ = MF._knn(index, x[:100], 1)
        rc.append(MF.relative_contrast(d[:, 0], MF.mean_distance(x[:100], x[100:1100])))
    assert rc[0] < 1.3 and rc[1] > 5


def test_relative_angle_small_for_near_duplicates():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((5, 16)).astype(np.float32)
    base = np.repeat(q, 20, axis=0) * rng.uniform(0.5, 2, (100, 1)) + 0.01 * rng.standard_normal((100, 16))
    ids = np.arange(100).reshape(5, 20)[:, :10]
    assert MF.relative_angle(q, base.astype(np.float32), ids) < 3.0
    orthogonal = np.eye(16, dtype=np.float32)
    assert MF.relative_angle(orthogonal[:1], orthogonal, np.array([[1, 2, 3]])) == pytest.approx(90.0, abs=1e-3)


def test_full_set_on_separated_labelled_blobs():
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((6, 12)) * 20
    base, labels = _blobs(centres, 300, 1.0, seed=2)
    queries, _ = _blobs(centres, 30, 1.0, seed=3)
    far_queries = queries + 200.0
    mf = MF.compute_metafeatures(base, queries, base_labels=labels, clusters=6, k=10, seed=0)
    assert mf.label_purity == pytest.approx(1.0)
    assert 0.8 < mf.query_shift < 1.3 and mf.centroid_shift < 0.2
    assert mf.dbi_euclidean < 0.5
    shifted = MF.compute_metafeatures(base, far_queries, clusters=6, seed=0)
    assert shifted.query_shift > 5 and shifted.centroid_shift > 5 and shifted.label_purity is None
    again = MF.compute_metafeatures(base, queries, base_labels=labels, clusters=6, k=10, seed=0)
    assert again == mf                                    # fixed seed: the same numbers
