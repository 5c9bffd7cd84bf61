"""Retrieval and task metrics: pure numpy, vectorised, one value per query.

Conventions: `found` is an int array [nq, >=k] of base ids, nearest first; an id < 0 is padding (fewer than k
results) and never matches anything. Every metric returns a float array [nq]; a query for which a metric is
undefined (e.g. no relevant item exists) gets NaN and is left out of means (`estimate` uses the non-NaN values).

Formulas (for one query q, F_k = its first k found ids):
  recall@k          |F_k ∩ T_k| / |T_k|                  T_k = the exact top-k ids
  (tie-aware)       #{x in F_k : d(q, x) <= d_k} / k      d_k = distance of the k-th exact neighbour
  label recall@K    #{x in F_K : y(x) = y(q)} / min(K, n_y(q))      n_c = size of class c in the base
  vote acc@k        [vote(F_k) = y(q)]   vote = the most frequent label, ties -> the label met first in rank order
  hit@k             [R ∩ F_k ≠ ∅]                         R = relevant ids of q (a target or a qrels set)
  MRR@k             1 / rank of the first relevant item in F_k, 0 if none
  NDCG@k            DCG / IDCG, DCG = Σ_{i=1..k} rel_i / log2(i + 1), IDCG = Σ_{i=1..min(|R|, k)} 1 / log2(i + 1)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from index.flat import recall_per_query

BOOTSTRAP_BATCH = 100


# -- recall against exact search -----------------------------------------------------------------------------
recall_at_k = recall_per_query  # per query, the index layer's one definition (index/flat.py)


def distance_recall_at_k(found_dists: np.ndarray, truth_dists: np.ndarray, k: int, *,
                         rtol: float = 1e-4, atol: float = 1e-5) -> np.ndarray:
    """Tie-aware Recall@k (ann-benchmarks' definition): the fraction of the first k results whose true distance
    is at most the k-th exact distance d_k, plus a tolerance rtol * max(|d_1|, |d_k|) + atol for float rounding
    (the absolute part matters for queries that duplicate base vectors, where d_k is 0 up to rounding).
    With duplicate vectors in the base, any of the tied copies counts; without ties it equals `recall_at_k`.
    `found_dists` are the distances of the found ids recomputed exactly (inf for padding), in the same
    smaller-is-nearer convention as `truth_dists`."""
    fd, td = np.asarray(found_dists)[:, :k], np.asarray(truth_dists)[:, :k]
    dk, d1 = td[:, -1], td[:, 0]
    threshold = dk + rtol * np.maximum(np.abs(dk), np.abs(d1)) + atol
    return np.minimum((fd <= threshold[:, None]).sum(axis=1), k) / k


# -- label metrics -------------------------------------------------------------------------------------------
def labels_of(found: np.ndarray, base_labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels [nq, k], valid mask [nq, k]) of the first k results; padded slots are invalid."""
    ids = np.asarray(found)[:, :k]
    valid = ids >= 0
    return np.asarray(base_labels)[np.where(valid, ids, 0)], valid


def class_sizes(base_labels: np.ndarray, query_labels: np.ndarray) -> np.ndarray:
    """n_y(q): how many base vectors carry each query's label (0 when the label is absent from the base)."""
    uniq, counts = np.unique(base_labels, return_counts=True)
    pos = np.clip(np.searchsorted(uniq, query_labels), 0, len(uniq) - 1)
    return np.where(uniq[pos] == query_labels, counts[pos], 0)


def label_recall_at_k(found: np.ndarray, base_labels: np.ndarray, query_labels: np.ndarray,
                      k: int) -> np.ndarray:
    """Label Recall@K (Iceberg): same-label results in the top K over min(K, class size); NaN if the class is
    absent from the base. (Iceberg pools numerator and denominator over queries; we keep per-query values.)"""
    labs, valid = labels_of(found, base_labels, k)
    same = ((labs == np.asarray(query_labels)[:, None]) & valid).sum(axis=1)
    denom = np.minimum(k, class_sizes(base_labels, query_labels))
    return np.where(denom > 0, same / np.maximum(denom, 1), np.nan)


def knn_vote(found: np.ndarray, base_labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(predicted label [nq], has-prediction mask [nq]) by majority vote over the first k results.

    Ties go to the label met first in rank order: for each position j count the valid positions sharing its
    label; the first position with the largest count belongs to the tied label that appears earliest.
    """
    labs, valid = labels_of(found, base_labels, k)
    same = (labs[:, :, None] == labs[:, None, :]) & valid[:, None, :]
    counts = np.where(valid, same.sum(axis=2), -1)
    winner = counts.argmax(axis=1)
    return labs[np.arange(len(labs)), winner], valid.any(axis=1)


def vote_accuracy(found: np.ndarray, base_labels: np.ndarray, query_labels: np.ndarray, k: int) -> np.ndarray:
    """kNN majority-vote accuracy@k per query (1.0 right, 0.0 wrong or no result)."""
    pred, ok = knn_vote(found, base_labels, k)
    return ((pred == np.asarray(query_labels)) & ok).astype(np.float64)


# -- relevance metrics (targets, qrels) ----------------------------------------------------------------------
def relevance_from_target(found: np.ndarray, target: np.ndarray, k: int) -> np.ndarray:
    """bool [nq, k]: result i is the query's single target (target < 0 means the query has none)."""
    f, t = np.asarray(found)[:, :k], np.asarray(target)[:, None]
    return (f == t) & (t >= 0) & (f >= 0)


def relevance_from_qrels(found: np.ndarray, qrels, k: int) -> np.ndarray:
    """bool [nq, k]: result i is in the query's relevant set (qrels: a sequence of id arrays, one per query)."""
    f = np.asarray(found)[:, :k].astype(np.int64)
    lens = np.array([len(r) for r in qrels], np.int64)
    rel_ids = np.concatenate([np.asarray(r, np.int64) for r in qrels] + [np.zeros(0, np.int64)])
    span = int(max(f.max(initial=0), rel_ids.max(initial=0))) + 1
    rel_keys = np.repeat(np.arange(len(lens), dtype=np.int64), lens) * span + rel_ids
    found_keys = np.arange(len(f), dtype=np.int64)[:, None] * span + f
    return np.isin(found_keys, rel_keys) & (f >= 0)


def n_relevant_of(target: np.ndarray | None = None, qrels=None) -> np.ndarray:
    """|R| per query: 1 or 0 for targets, the set size for qrels."""
    if target is not None:
        return (np.asarray(target) >= 0).astype(np.int64)
    return np.array([len(np.unique(np.asarray(r))) for r in qrels], np.int64)


def hit_at_k(rel: np.ndarray, n_relevant: np.ndarray | None = None) -> np.ndarray:
    """Hit@k: 1 if any of the first k results is relevant (NaN where the query has nothing relevant)."""
    hit = rel.any(axis=1).astype(np.float64)
    return hit if n_relevant is None else np.where(n_relevant > 0, hit, np.nan)


def mrr_at_k(rel: np.ndarray, n_relevant: np.ndarray | None = None) -> np.ndarray:
    """Reciprocal rank of the first relevant result within k; 0 when none is found."""
    rr = np.where(rel.any(axis=1), 1.0 / (rel.argmax(axis=1) + 1), 0.0)
    return rr if n_relevant is None else np.where(n_relevant > 0, rr, np.nan)


def ndcg_at_k(rel: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    """Binary-relevance NDCG@k; NaN for queries with no relevant item."""
    k = rel.shape[1]
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (rel * discount).sum(axis=1)
    ideal = np.concatenate([[0.0], np.cumsum(discount)])[np.minimum(n_relevant, k)]
    return np.where(n_relevant > 0, dcg / np.where(ideal > 0, ideal, 1.0), np.nan)


# -- uncertainty and latency ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Estimate:
    """Mean of per-query values with a percentile-bootstrap confidence interval."""

    mean: float
    lo: float
    hi: float
    n: int

    def as_dict(self) -> dict:
        return {"mean": _r(self.mean), "ci": [_r(self.lo), _r(self.hi)], "n": self.n}


def bootstrap_ci(values: np.ndarray, *, n_boot: int = 1000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean over queries (NaNs dropped); the same seed gives the same interval.
    For a paired difference between two systems, pass `a - b` (the resampling is then per query for both)."""
    v = np.asarray(values, np.float64)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for s in range(0, n_boot, BOOTSTRAP_BATCH):
        b = min(BOOTSTRAP_BATCH, n_boot - s)
        means[s: s + b] = v[rng.integers(0, len(v), size=(b, len(v)))].mean(axis=1)
    alpha = (1.0 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def estimate(values: np.ndarray, *, n_boot: int = 1000, seed: int = 0) -> Estimate:
    v = np.asarray(values, np.float64)
    n = int((~np.isnan(v)).sum())
    mean = float(np.nanmean(v)) if n else float("nan")
    lo, hi = bootstrap_ci(v, n_boot=n_boot, seed=seed)
    return Estimate(mean, lo, hi, n)


def latency_summary(seconds: np.ndarray) -> dict[str, float]:
    """p50 / p95 / p99 / mean / max of single-query latencies, in milliseconds."""
    ms = np.asarray(seconds, np.float64) * 1e3
    if len(ms) == 0:
        return {}
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"p50_ms": _r(p50), "p95_ms": _r(p95), "p99_ms": _r(p99), "mean_ms": _r(ms.mean()),
            "max_ms": _r(ms.max())}


def _r(x: float, digits: int = 5) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), digits)
