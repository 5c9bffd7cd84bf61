from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from index.kernels import scan_ip, scan_l2
from index.quantize import Int8Quantizer, PerVectorInt8
from storage import posting_format as fmt

finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(2, 50), st.integers(1, 24)), elements=finite))
def test_reconstruction_error_is_at_most_half_a_step_inside_the_trained_range(x):
    q = Int8Quantizer.train(x)
    err = np.abs(q.decode(q.encode(x)) - x)
    assert (err <= q.scale / 2 + 1e-4 * (1 + np.abs(x))).all()


def test_values_outside_the_trained_range_clip_instead_of_wrapping():
    q = Int8Quantizer.train(np.array([[0.0], [1.0]], np.float32))
    codes = q.encode(np.array([[-50.0], [50.0]], np.float32))
    assert codes[0, 0] == -128 and codes[1, 0] == 127


def test_codes_are_padded_to_four_bytes():
    q = Int8Quantizer.train(np.random.default_rng(0).standard_normal((10, 5)).astype(np.float32))
    assert q.encode(np.zeros((3, 5), np.float32)).shape == (3, 8)


def _kernel_distances(x, query, metric):
    """Run the real scan kernel over one posting holding x; return {row: distance}."""
    dim = x.shape[1]
    q = Int8Quantizer.train(x)
    rec = np.zeros(len(x), fmt.record_dtype(dim))
    rec["id"] = np.arange(len(x))
    rec["code"] = q.encode(x)
    buf = np.zeros(len(rec) * rec.itemsize + 64, np.uint8)
    buf[: rec.nbytes] = rec.view(np.uint8)
    hd, hi = np.empty(len(x), np.float32), np.empty(len(x), np.int64)
    args = (buf.view(np.int8), buf.view(np.uint32), buf, np.array([0]), np.array([len(x)], np.int32),
            np.array([0]), rec.itemsize, dim)
    state, allow = np.zeros(len(x), np.uint8), np.zeros(0, np.uint8)
    if metric == "l2":
        u, w = q.query_l2(query)
        n = scan_l2(*args, u, w, state, allow, hd, hi)
    else:
        v, c = q.query_ip(query)
        n = scan_ip(*args, v, c, state, allow, hd, hi)
    return dict(zip(hi[:n].tolist(), hd[:n].tolist())), q


def test_l2_kernel_equals_distance_to_the_reconstruction():
    rng = np.random.default_rng(3)
    x, query = rng.standard_normal((40, 12)).astype(np.float32), rng.standard_normal(12).astype(np.float32)
    got, q = _kernel_distances(x, query, "l2")
    expect = ((q.decode(q.encode(x)) - query) ** 2).sum(1)
    assert np.allclose([got[i] for i in range(40)], expect, rtol=1e-4, atol=1e-4)


def test_ip_kernel_equals_negative_dot_with_the_reconstruction():
    rng = np.random.default_rng(4)
    x, query = rng.standard_normal((40, 12)).astype(np.float32), rng.standard_normal(12).astype(np.float32)
    got, q = _kernel_distances(x, query, "ip")
    expect = -(q.decode(q.encode(x)) @ query)
    assert np.allclose([got[i] for i in range(40)], expect, rtol=1e-4, atol=1e-3)


def test_per_vector_variant_round_trips_within_half_a_step():
    x = np.random.default_rng(5).standard_normal((20, 16)).astype(np.float32)
    codes, scale = PerVectorInt8.encode(x)
    assert (np.abs(PerVectorInt8.decode(codes, scale) - x) <= scale[:, None] / 2 + 1e-6).all()
