"""Which task metrics a dataset supports, and their per-query values for one result list.

Names follow the kjv README: for every label set `<s>` ("label" is the primary one): `<s>_vote_acc@k` and
`<s>_recall@k` (Iceberg's Label Recall); for the primary labels also `label_acc@1`; with a target:
`target_hit@k`, `target_mrr@k`; with qrels: `qrels_hit@k`, `qrels_mrr@k`, `qrels_ndcg@k`.
The primary task metric (the one the funnel, the saturation point and the rankings use) is the first available
of label_vote_acc@k, target_hit@k, qrels_ndcg@k.
"""
from __future__ import annotations

import numpy as np

from vdb.eval import metrics as M
from vdb.eval.datasets import EvalDataset


def task_metric_names(ds: EvalDataset, k: int) -> list[str]:
    names = []
    for s in ds.label_sets():
        names += [f"{s}_vote_acc@{k}", f"{s}_recall@{k}"]
        if s == "label":
            names.append("label_acc@1")
    if ds.query_target is not None:
        names += [f"target_hit@{k}", f"target_mrr@{k}"]
    if ds.qrels is not None:
        names += [f"qrels_hit@{k}", f"qrels_mrr@{k}", f"qrels_ndcg@{k}"]
    return names


def primary_task(ds: EvalDataset, k: int) -> str | None:
    names = task_metric_names(ds, k)
    for candidate in (f"label_vote_acc@{k}", f"target_hit@{k}", f"qrels_ndcg@{k}"):
        if candidate in names:
            return candidate
    return None


def evaluate_tasks(found: np.ndarray, ds: EvalDataset, k: int) -> dict[str, np.ndarray]:
    """Per-query values of every task metric the dataset supports, for results `found` [nq, >= k]."""
    out: dict[str, np.ndarray] = {}
    for s, (bl, ql) in ds.label_sets().items():
        out[f"{s}_vote_acc@{k}"] = M.vote_accuracy(found, bl, ql, k)
        out[f"{s}_recall@{k}"] = M.label_recall_at_k(found, bl, ql, k)
        if s == "label":
            out["label_acc@1"] = M.vote_accuracy(found, bl, ql, 1)
    if ds.query_target is not None:
        rel, n_rel = M.relevance_from_target(found, ds.query_target, k), M.n_relevant_of(target=ds.query_target)
        out[f"target_hit@{k}"] = M.hit_at_k(rel, n_rel)
        out[f"target_mrr@{k}"] = M.mrr_at_k(rel, n_rel)
    if ds.qrels is not None:
        rel, n_rel = M.relevance_from_qrels(found, ds.qrels, k), M.n_relevant_of(qrels=ds.qrels)
        out[f"qrels_hit@{k}"] = M.hit_at_k(rel, n_rel)
        out[f"qrels_mrr@{k}"] = M.mrr_at_k(rel, n_rel)
        out[f"qrels_ndcg@{k}"] = M.ndcg_at_k(rel, n_rel)
    return out


def means(values: dict[str, np.ndarray]) -> dict[str, float]:
    return {name: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for name, v in values.items()}
