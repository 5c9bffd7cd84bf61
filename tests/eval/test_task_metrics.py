"""vdb.eval.metrics against hand-computed tiny cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vdb.eval import metrics as M


def test_recall_counts_true_ids_found():
    found = np.array([[1, 2, 3], [4, 5, 6]])
    truth = np.array([[1, 2, 9], [7, 8, 9]])
    np.testing.assert_allclose(M.recall_at_k(found, truth, 3), [2 / 3, 0.0])
    np.testing.assert_allclose(M.recall_at_k(found, truth, 1), [1.0, 0.0])


def test_recall_padding_never_matches():
    found = np.array([[1, -1, -1]])
    truth = np.array([[1, 2, -1]])      # only 2 true neighbours exist
    np.testing.assert_allclose(M.recall_at_k(found, truth, 3), [0.5])


def test_distance_recall_counts_tied_copies():
    # the exact top-3 is {0, 1, 2} but 7 is a duplicate of 2 (same distance): it counts as found
    truth_d = np.array([[0.1, 0.2, 0.3]])
    assert M.distance_recall_at_k(np.array([[0.1, 0.2, 0.3]]), truth_d, 3)[0] == 1.0
    assert M.distance_recall_at_k(np.array([[0.1, 0.3, 0.5]]), truth_d, 3)[0] == pytest.approx(2 / 3)
    assert M.distance_recall_at_k(np.array([[0.1, np.inf, np.inf]]), truth_d, 3)[0] == pytest.approx(1 / 3)


def test_label_recall_denominator_is_class_size_when_smaller_than_k():
    base_labels = np.array([0, 0, 1, 1, 1, 2])
    found = np.array([[0, 1, 2],      # labels 0 0 1, query class 0 has 2 members: 2 / min(3, 2) = 1
                      [2, 3, 0],      # labels 1 1 0, class 1 has 3 members: 2 / 3
                      [5, 0, 1],      # labels 2 0 0, class 2 has 1 member: 1 / 1
                      [0, 1, 2]])     # class 7 is not in the base: undefined
    query_labels = np.array([0, 1, 2, 7])
    got = M.label_recall_at_k(found, base_labels, query_labels, 3)
    np.testing.assert_allclose(got[:3], [1.0, 2 / 3, 1.0])
    assert math.isnan(got[3])


def test_vote_tie_goes_to_label_met_first():
    base_labels = np.array([10, 20, 30])
    found = np.array([[0, 1, 1, 0],        # 10 20 20 10: tie, 10 met first
                      [1, 0, 0, 1],        # 20 10 10 20: tie, 20 met first
                      [2, 0, 1, 1],        # 30 10 20 20: 20 wins outright
                      [2, 0, 1, -1]])      # 30 10 20 (padding): three-way tie, 30 met first
    pred, ok = M.knn_vote(found, base_labels, 4)
    np.testing.assert_array_equal(pred, [10, 20, 20, 30])
    assert ok.all()
    np.testing.assert_allclose(M.vote_accuracy(found, base_labels, np.array([10, 10, 20, 30]), 4), [1, 0, 1, 1])


def test_vote_without_results_is_wrong():
    assert M.vote_accuracy(np.array([[-1, -1]]), np.array([0]), np.array([0]), 2)[0] == 0.0


def _readme_vote(row):
    """The kjv README's reference implementation."""
    labs, first, cnt = np.unique(row, return_index=True, return_counts=True)
    return labs[np.lexsort((first, -cnt))[0]]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 4), min_size=6, max_size=6), min_size=1, max_size=20))
def test_vote_matches_the_kjv_readme_definition(rows):
    labels = np.array(rows)
    found = np.arange(labels.size).reshape(labels.shape)
    pred, _ = M.knn_vote(found, labels.ravel(), labels.shape[1])
    assert list(pred) == [_readme_vote(r) for r in labels]


def test_relevance_from_target_and_qrels():
    found = np.array([[7, 3], [1, 2], [1, 5]])
    np.testing.assert_array_equal(M.relevance_from_target(found, np.array([3, -1, 5]), 2),
                                  [[False, True], [False, False], [False, True]])
    qrels = [np.array([5, 7]), np.array([], np.int64), np.array([1])]
    np.testing.assert_array_equal(M.relevance_from_qrels(found, qrels, 2),
                                  [[True, False], [False, False], [True, False]])
    np.testing.assert_array_equal(M.n_relevant_of(qrels=qrels), [2, 0, 1])


def test_hit_and_mrr_including_no_hit():
    rel = np.array([[False, False, True], [False, False, False], [True, True, False]])
    np.testing.assert_allclose(M.hit_at_k(rel), [1, 0, 1])
    np.testing.assert_allclose(M.mrr_at_k(rel), [1 / 3, 0.0, 1.0])
    got = M.mrr_at_k(rel, np.array([1, 0, 2]))   # the second query has nothing relevant: undefined
    assert got[0] == pytest.approx(1 / 3) and math.isnan(got[1]) and got[2] == 1.0


def test_ndcg_with_several_relevant_items():
    rel = np.array([[True, False, True], [True, False, True], [False, False, False]])
    got = M.ndcg_at_k(rel, np.array([3, 2, 0]))
    dcg = 1 / math.log2(2) + 1 / math.log2(4)
    assert got[0] == pytest.approx(dcg / (1 + 1 / math.log2(3) + 1 / math.log2(4)))
    assert got[1] == pytest.approx(dcg / (1 + 1 / math.log2(3)))
    assert math.isnan(got[2])
    assert M.ndcg_at_k(np.array([[True, True]]), np.array([5]))[0] == pytest.approx(1.0)  # |R| > k: ideal is k hits


def test_bootstrap_ci_contains_mean_and_is_deterministic():
    v = (np.random.default_rng(3).random(400) < 0.3).astype(float)
    lo, hi = M.bootstrap_ci(v, seed=1)
    assert lo < v.mean() < hi
    assert (lo, hi) == M.bootstrap_ci(v, seed=1)
    assert (lo, hi) != M.bootstrap_ci(v, seed=2)
    est = M.estimate(np.append(v, np.nan), seed=1)
    assert est.n == 400 and est.mean == pytest.approx(v.mean()) and (est.lo, est.hi) == (lo, hi)


def test_latency_summary_in_milliseconds():
    s = M.latency_summary(np.arange(1, 101) / 1000.0)
    assert s["p50_ms"] == pytest.approx(50.5) and s["p99_ms"] == pytest.approx(99.01) and s["max_ms"] == 100.0
