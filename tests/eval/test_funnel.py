"""The funnel's arithmetic, the saturation point and the INT8 reconstruction."""
from __future__ import annotations

import numpy as np
import pytest

from vdb.eval.funnel import build_funnel, exact_int8_search, int8_reconstruction, saturation_point
from vdb.eval.groundtruth import exact_search

POINTS = [{"label": "np=4", "t": 0.40, "bytes": 10}, {"label": "np=16", "t": 0.445, "bytes": 40},
          {"label": "np=64", "t": 0.449, "bytes": 160}]
BY_METRIC = {"l2": 0.398, "ip": 0.310, "cosine": 0.451}


def test_stages_add_up_to_the_served_value():
    f = build_funnel("t", BY_METRIC, "l2", 0.396, POINTS, "np=16")
    losses = dict(f.stages())
    assert f.best_metric == "cosine" and f.ceiling == 0.451 and f.exact_chosen == 0.398
    assert losses["embedding loss"] == pytest.approx(1 - 0.451)
    assert losses["metric misuse"] == pytest.approx(0.451 - 0.398)
    assert losses["quantization loss"] == pytest.approx(0.398 - 0.396)
    assert losses["index loss"] == pytest.approx(0.396 - 0.445)        # negative: the float32 re-rank won back
    assert losses["cache loss"] is None                                  # not measured
    assert 1 - sum(v for v in losses.values() if v is not None) == pytest.approx(f.served) == pytest.approx(0.445)
    assert f.index_loss == {"np=4": pytest.approx(-0.002), "np=16": pytest.approx(-0.047),
                            "np=64": pytest.approx(-0.051)}


def test_measured_cache_stage_enters_the_sum():
    f = build_funnel("t", BY_METRIC, "cosine", 0.45, POINTS, "np=64", served_cached=0.44)
    losses = [v for _, v in f.stages()]
    assert f.stages()[1][1] == 0.0 and losses[-1] == pytest.approx(0.449 - 0.44)
    assert 1 - sum(losses) == pytest.approx(f.final) == pytest.approx(0.44)
    assert f.as_dict()["final"] == pytest.approx(0.44)


def test_saturation_point_is_the_cheapest_reaching_99_percent():
    s = saturation_point(POINTS, "t", 0.449, cost_key="bytes")          # target 0.4445: np=16 reaches it
    assert s["label"] == "np=16" and s["target"] == pytest.approx(0.99 * 0.449)
    assert saturation_point(POINTS, "t", 0.451, cost_key="bytes")["label"] == "np=64"    # target 0.4465
    assert saturation_point(POINTS, "t", 0.5, cost_key="bytes") is None


def test_int8_reconstruction_is_close_and_exact_int8_search_mostly_agrees():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 16)).astype(np.float32) * 3
    recon = int8_reconstruction(x, "cosine")
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert np.abs(recon - unit).max() < 0.01
    q = rng.standard_normal((30, 16)).astype(np.float32)
    for metric in ("l2", "ip", "cosine"):
        a = exact_int8_search(x, q, metric, 10)
        b = exact_search(x, q, metric, 10)[0]
        assert np.mean([len(np.intersect1d(r, s)) / 10 for r, s in zip(a, b)]) > 0.9
