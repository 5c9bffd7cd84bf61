"""Iceberg's decision tree: every branch reached by constructed meta-feature values; knob mapping; check."""
from __future__ import annotations

import dataclasses

import pytest

from vdb.eval.metafeatures import MetaFeatures
from vdb.eval.recommend import check_recommendation, iceberg_tree, map_knobs, recommend


def _mf(**over) -> MetaFeatures:
    base = dict(dbi_euclidean=2.0, dbi_cosine=1.0, cv_norms=0.05, relative_angle=40.0, relative_contrast=1.8,
                lid=12.0, hubness=1.0, cluster_size_cv=0.3, cluster_size_max_ratio=1.5, label_purity=0.8,
                query_shift=1.0, centroid_shift=0.01, space="raw", k=10, clusters=32, n_base_sample=100,
                n_query_sample=10, seed=0)
    return MetaFeatures(**{**base, **over})


@pytest.mark.parametrize("dbi_e, dbi_c, cv, metric", [
    (2.0, 1.0, 0.05, "ip"),          # Euclidean clusters worse, norms flat -> inner product
    (1.0, 1.0, 0.10, "ip"),          # both boundaries are inclusive
    (1.0, 2.0, 0.05, "l2"),          # Euclidean clusters better
    (2.0, 1.0, 0.11, "l2"),          # norms vary too much for IP
])
def test_metric_branch(dbi_e, dbi_c, cv, metric):
    got, _, path = iceberg_tree(dbi_e, dbi_c, cv, 40.0, 2.0)
    assert got == metric
    assert path[0].node == "metric" and path[0].values == {"dbi_euclidean": dbi_e, "dbi_cosine": dbi_c,
                                                           "cv_norms": cv}


@pytest.mark.parametrize("ra, rc, family", [
    (60.0, 2.0, "partition"),        # RA >= 60 (inclusive)
    (40.0, 1.49, "partition"),       # RC < 1.5
    (40.0, 1.5, "graph"),            # RC == 1.5 is not < 1.5
    (59.9, 3.0, "graph"),
])
def test_method_branch(ra, rc, family):
    _, got, path = iceberg_tree(2.0, 1.0, 0.0, ra, rc)
    assert got == family
    assert path[1].values == {"relative_angle": ra, "relative_contrast": rc}
    assert path[1].outcome == ("partition-based" if family == "partition" else "graph-based")


def test_all_four_leaves_through_recommend():
    leaves = {(r.metric_family, r.method_family) for r in (
        recommend(_mf()), recommend(_mf(cv_norms=0.5)),
        recommend(_mf(relative_contrast=1.2)), recommend(_mf(cv_norms=0.5, relative_angle=70.0)))}
    assert leaves == {("ip", "graph"), ("l2", "graph"), ("ip", "partition"), ("l2", "partition")}


def test_render_shows_values_at_each_node():
    text = recommend(_mf()).render()
    assert "DBI_E 2.000 >= DBI_C 1.000 [yes]" in text and "CV 0.050 <= 0.1 [yes]" in text
    assert "RC 1.800 < 1.5 [no]" in text and "graph-based" in text and "nprobe" in text


def test_knob_mapping():
    k = map_knobs("ip", "partition", _mf(relative_contrast=2.5))
    assert (k.metric, k.nprobe, k.max_replicas, k.int8, k.rerank_k) == ("cosine", 16, 4, "on", 32)
    assert k.cache_threshold == 0.0 and "certified hits only" in k.reasons["cache_threshold"]
    hard = map_knobs("l2", "graph", _mf(relative_contrast=1.2), quantization_loss=0.02)
    assert (hard.metric, hard.nprobe, hard.max_replicas, hard.int8, hard.rerank_k) == ("l2", 128, 8, "off", 256)


def _point(label, family, task, latency, metric="cosine"):
    return {"label": label, "family": family, "metric": metric, "t": task, "latency_p50_ms": latency}


def test_check_against_a_sweep():
    rec = recommend(_mf(relative_contrast=1.2))                    # ip -> cosine, partition
    points = [_point("ivf fast", "partition", 0.50, 0.1), _point("hnsw", "graph", 0.50, 0.2),
              _point("ivf low", "partition", 0.30, 0.01), _point("wrong metric", "graph", 0.9, 0.001, "l2")]
    by_metric = {"l2": 0.40, "ip": 0.35, "cosine": 0.50}
    c = check_recommendation(rec, by_metric, points, task="t", exact_ceiling=0.5, metric="cosine",
                             measured_nprobe=32)
    assert c.metric_ok and c.metric_cost == 0 and c.family_ok and c.best_point == "ivf fast"
    assert c.tree_metric == "l2" and not c.tree_metric_ok      # within Iceberg's choice l2 beat raw ip here
    graph_rec = dataclasses.replace(rec, method_family="graph")
    c2 = check_recommendation(graph_rec, by_metric, points, task="t", exact_ceiling=0.5, metric="cosine")
    assert c2.family_ok is False and any("partition index" in n for n in c2.notes)
    l2_rec = recommend(_mf(cv_norms=0.5, relative_contrast=1.2))
    c3 = check_recommendation(l2_rec, by_metric, points, task="t", exact_ceiling=0.5, metric="cosine")
    assert not c3.metric_ok and c3.metric_cost == pytest.approx(0.10) and any("cosine beats" in n for n in c3.notes)
