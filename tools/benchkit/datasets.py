"""Benchmark datasets, cached as .npy under bench-data/ (git-ignored), and their exact ground truth.

synthetic: `vdb.inputs.synthetic.clustered` (base) and `clustered_queries` (queries from the same mixture), with the
mixture fixed at 1,000 clusters. Smaller scales (100K, 300K) are prefixes of the 1M base, so all three sizes
share one distribution and one query set.

kjv: /work/shared/data/kjv_books, float16 unit vectors -> float32, metric cosine, book labels for the task.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vdb.eval.groundtruth import exact_search
from vdb.eval.metrics import distance_recall_at_k
from vdb.inputs.synthetic import clustered, clustered_queries

N_CLUSTERS = 1000
KJV = Path("/work/shared/data/kjv_books")


@dataclass
class Dataset:
    name: str
    metric: str                      # vdb metric: l2 | cosine
    base: np.ndarray                 # float32 [n, d] as given to every system (cosine: unit vectors)
    queries: np.ndarray
    base_path: Path                  # .npy of `base` (for the out-of-process peers)
    query_path: Path
    truth: np.ndarray | None = None  # exact top-100 ids [nq, 100]
    labels: dict = field(default_factory=dict)
    description: str = ""

    @property
    def n(self) -> int:
        return len(self.base)


def _cached(path: Path, make) -> np.ndarray:
    if path.exists():
        return np.load(path, mmap_mode="r")
    a = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, a)
    tmp.replace(path)
    return np.load(path, mmap_mode="r")


def synthetic(cache: Path, n: int, nq: int, dim: int = 128, full_n: int = 1_000_000,
              use: int | None = None) -> Dataset:
    """Prefix n of the cached `clustered(full_n, dim, n_clusters=1000)` base; nq queries (stream 2)."""
    full = _cached(cache / f"clustered-{full_n}x{dim}.npy",
                   lambda: clustered(full_n, dim, n_clusters=N_CLUSTERS))
    qs = _cached(cache / f"clustered-queries-{nq}x{dim}.npy",
                 lambda: clustered_queries(nq, full_n, dim, n_clusters=N_CLUSTERS))
    base_path = cache / f"clustered-{full_n}x{dim}.npy"
    if n != full_n:
        base_path = cache / f"clustered-{n}x{dim}-prefix.npy"
        _cached(base_path, lambda: np.ascontiguousarray(full[:n]))
    base = np.load(base_path)
    desc = (f"vdb.inputs.synthetic clustered: {n:,} x {dim} (prefix of clustered({full_n:_}, {dim}, n_clusters=1000)), "
            f"{nq:,} queries clustered({nq:_}, {dim}, n_clusters=1000, stream=2)")
    ds = Dataset(f"synthetic-{n // 1000}k", "l2", base, np.ascontiguousarray(qs), base_path,
                 cache / f"clustered-queries-{nq}x{dim}.npy", description=desc)
    ds.truth = ground_truth(cache / f"gt-{base_path.stem}-{nq}.npy", ds)  # keyed by the exact base file
    return ds if use is None or use >= nq else first_queries(ds, cache, use)


def first_queries(ds: Dataset, cache: Path, use: int) -> Dataset:
    """The first `use` queries of `ds` (and their ground truth), with their own .npy for the peers."""
    path = cache / f"{ds.query_path.stem}-first{use}.npy"
    _cached(path, lambda: np.ascontiguousarray(ds.queries[:use]))
    ds.queries, ds.truth, ds.query_path = np.ascontiguousarray(ds.queries[:use]), ds.truth[:use], path
    ds.description = f"{ds.description}; the first {use:,} queries are used"
    return ds


def kjv(cache: Path) -> Dataset:
    def unit(name):
        a = np.load(KJV / name).astype(np.float32)
        return a / np.linalg.norm(a, axis=1, keepdims=True)
    base_path, query_path = cache / "kjv-base-f32.npy", cache / "kjv-query-f32.npy"
    base = np.ascontiguousarray(_cached(base_path, lambda: unit("base.npy")))
    qs = np.ascontiguousarray(_cached(query_path, lambda: unit("query.npy")))
    labels = {"base": np.load(KJV / "base_labels.npy"), "query": np.load(KJV / "query_labels.npy"),
              "base_sections": np.load(KJV / "base_sections.npy"),
              "query_sections": np.load(KJV / "query_sections.npy")}
    meta = json.loads((KJV / "meta.json").read_text())
    ds = Dataset("kjv", "cosine", base, qs, base_path, query_path, labels=labels,
                 description=f"kjv_books: {len(base):,} x {base.shape[1]} MiniLM verse embeddings (float16 unit "
                             f"vectors -> float32), {len(qs):,} held-out query verses, 66 books; "
                             f"{meta.get('model', '')}")
    ds.truth = ground_truth(cache / "gt-kjv.npy", ds)
    return ds


def exact_topk(base: np.ndarray, queries: np.ndarray, metric: str, k: int = 100) -> np.ndarray:
    """Exact top-k ids: the evaluator's oracle (ties broken by the lower id)."""
    return exact_search(np.asarray(base), np.asarray(queries), metric, k)[0]


def ground_truth(path: Path, ds: Dataset, k: int = 100) -> np.ndarray:
    t = time.perf_counter()
    out = np.asarray(_cached(path, lambda: exact_topk(ds.base, ds.queries, ds.metric, k)))
    if time.perf_counter() - t > 1:
        print(f"[gt] {ds.name}: {time.perf_counter() - t:.1f} s", flush=True)
    return out


def _distances(ds: Dataset, queries: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Exact distances (smaller is nearer: squared L2, or -IP for unit vectors) of ids [nq, k]; inf where -1."""
    rows = ds.base[np.maximum(ids, 0)].astype(np.float64)     # [nq, k, d]
    queries = queries.astype(np.float64)
    if ds.metric == "l2":
        d = ((rows - queries[:, None, :]) ** 2).sum(axis=2)
    else:
        d = -(rows * queries[:, None, :]).sum(axis=2)
    return np.where(ids >= 0, d, np.inf)


def recall(ds: Dataset, found: np.ndarray, k: int = 10, chunk: int = 2000) -> float:
    """Tie-aware recall@k (ann-benchmarks'; kjv has verses with identical vectors): the evaluator's
    distance_recall_at_k on the exact distances of the returned ids. Ids must be unique per row; -1 never matches."""
    out = []
    for s in range(0, len(found), chunk):
        q = ds.queries[s: s + chunk]
        f = np.asarray(found[s: s + chunk])[:, :k].astype(np.int64)
        truth_d = _distances(ds, q, ds.truth[s: s + chunk, :k])
        out.append(distance_recall_at_k(_distances(ds, q, f), truth_d, k))
    return float(np.concatenate(out).mean())


def vote_accuracy(ids: np.ndarray, base_labels: np.ndarray, query_labels: np.ndarray) -> float:
    """kjv task: majority label of the returned neighbours (ties: the label met first in rank order)."""
    correct = 0
    for row, y in zip(np.asarray(ids), query_labels):
        row = row[row >= 0]
        if len(row) == 0:
            continue
        labs, first, cnt = np.unique(base_labels[row], return_index=True, return_counts=True)
        correct += int(labs[np.lexsort((first, -cnt))[0]] == y)
    return correct / len(query_labels)


def score(ds: Dataset, ids: np.ndarray, k: int = 10) -> dict:
    out = {"recall": round(recall(ds, ids, k), 5)}
    if "base" in ds.labels:
        out["book_vote_acc@10"] = round(vote_accuracy(ids[:, :10], ds.labels["base"], ds.labels["query"]), 4)
        out["section_vote_acc@10"] = round(vote_accuracy(ids[:, :10], ds.labels["base_sections"],
                                                         ds.labels["query_sections"]), 4)
    return out
