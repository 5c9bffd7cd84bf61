"""The cache's arithmetic on its own: the certificate's bound is a theorem (nothing outside the cached set can
beat a candidate within it), for every metric; and the helpers it is built from."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from index.distance import prepare_base
from index.types import Metric, SearchParams
from vdb.cache.certificate import admission_radius, bound, doubtful_count, geometry, kernel_distances, signature


def test_geometry_turns_kernel_distances_into_plain_distances():
    a, b = np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)
    assert geometry(kernel_distances(b[None, :], a, Metric.L2), Metric.L2)[0] == pytest.approx(np.sqrt(2))
    assert geometry(kernel_distances(b[None, :], a, Metric.COSINE), Metric.COSINE)[0] == pytest.approx(np.sqrt(2))
    assert geometry(kernel_distances(b[None, :], a, Metric.IP), Metric.IP)[0] == pytest.approx(0.0)
    assert geometry(np.array([-4.0]), Metric.IP)[0] == -4.0  # ip stays -dot


def test_bound_shrinks_by_delta_or_by_delta_times_the_largest_norm():
    assert bound(2.0, 0.5, Metric.L2, max_norm=10.0) == 1.5
    assert bound(2.0, 0.5, Metric.COSINE, max_norm=10.0) == 1.5
    assert bound(2.0, 0.5, Metric.IP, max_norm=3.0) == 0.5


def test_doubtful_counts_candidates_beyond_the_bound():
    assert doubtful_count(np.array([0.1, 0.2, 0.3]), 0.25) == 1
    assert doubtful_count(np.array([0.1, 0.2, 0.3]), 0.3) == 0


def test_admission_radius_is_half_the_answer_spread():
    assert admission_radius(np.array([1.0, 4.0, 9.0, np.inf]), Metric.L2) == pytest.approx(1.0)  # (3 - 1) / 2
    assert admission_radius(np.array([1.0, np.inf]), Metric.L2) is None


def test_signature_separates_everything_that_changes_the_answer():
    p = SearchParams().resolved(10)
    base = signature(10, p, None)
    assert base == signature(10, p, None)
    assert len({base, signature(5, p, None), signature(10, p.replace(nprobe=7), None),
                signature(10, p.replace(eps=2.0), None), signature(10, p, {"a": 1}),
                signature(10, p, {"a": 2})}) == 6


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), metric=st.sampled_from([Metric.L2, Metric.COSINE, Metric.IP]),
       step=st.floats(0.0, 0.5), k=st.integers(1, 5))
def test_a_certified_answer_is_the_exact_top_k(seed, metric, step, k):
    """q' is cached with its K' exact nearest; q is a nearby query. Whenever the k best cached candidates,
    re-scored for q, are within bound(R, |q - q'|), they are exactly q's true top-k over the whole set."""
    rng = np.random.default_rng(seed)
    x = prepare_base(rng.normal(size=(300, 6)).astype(np.float32), metric)
    q_old = prepare_base(rng.normal(size=(1, 6)).astype(np.float32), metric)[0]
    q = q_old + step * rng.normal(size=6).astype(np.float32)
    q = prepare_base(q[None, :], metric)[0]
    k_prime = 4 * k + 4
    old = kernel_distances(x, q_old, metric)
    cached = np.argsort(old, kind="stable")[:k_prime]
    radius = float(geometry(old[cached[-1:]], metric)[0])
    delta = float(np.linalg.norm(q - q_old))
    max_norm = float(np.linalg.norm(x, axis=1).max())
    limit = bound(radius, delta, metric, max_norm)
    new = kernel_distances(x, q, metric)
    outside = np.setdiff1d(np.arange(len(x)), cached)
    assert (geometry(new[outside], metric) >= limit - 1e-4).all()  # the triangle / Cauchy-Schwarz bound
    order = cached[np.argsort(new[cached], kind="stable")[:k]]
    if doubtful_count(geometry(new[order], metric), limit) == 0:
        true = np.argsort(new, kind="stable")[:k]
        assert np.allclose(np.sort(new[order]), np.sort(new[true]), atol=1e-5)
