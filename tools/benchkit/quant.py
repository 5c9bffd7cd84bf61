"""INT8 variants: exact search over the INT8 reconstruction, per-dimension affine (`Int8Quantizer`, what the index
stores) vs per-vector symmetric (`PerVectorInt8`, Aeon's scale = max|x| / 127).

The per-dimension quantizer is trained as `build_index` trains it (a sorted sample of min(n, 100K) rows drawn
with numpy's default_rng(0)). Ranking: squared L2 for l2 data; q . x^ for cosine data (the base is unit-norm
before quantization, the reconstruction is not re-normalised: that is what the posting scan computes).
recall@10 is against exact float32 search (ties counted); kjv adds the task metric.
"""
from __future__ import annotations

import time

import faiss
import numpy as np

from benchkit import datasets as D
from index.quantize import Int8Quantizer, PerVectorInt8

CHUNK = 100_000


def _per_dim(base: np.ndarray) -> tuple[np.ndarray, int]:
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(len(base), min(len(base), 100_000), replace=False))
    qz = Int8Quantizer.train(np.asarray(base[rows], dtype=np.float32))
    out = np.empty(base.shape, np.float32)
    for s in range(0, len(base), CHUNK):
        out[s: s + CHUNK] = qz.decode(qz.encode(np.asarray(base[s: s + CHUNK], dtype=np.float32)))
    return out, base.shape[1]


def _per_vector(base: np.ndarray) -> tuple[np.ndarray, int]:
    out = np.empty(base.shape, np.float32)
    for s in range(0, len(base), CHUNK):
        codes, scale = PerVectorInt8.encode(np.asarray(base[s: s + CHUNK], dtype=np.float32))
        out[s: s + CHUNK] = PerVectorInt8.decode(codes, scale)
    return out, base.shape[1] + 4


def _search(ds: D.Dataset, recon: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    index = faiss.IndexFlatL2(recon.shape[1]) if ds.metric == "l2" else faiss.IndexFlatIP(recon.shape[1])
    index.add(recon)
    return index.search(queries, k)[1].astype(np.int64)


def _rel_error(base: np.ndarray, recon: np.ndarray) -> float:
    n = min(len(base), 100_000)
    x = np.asarray(base[:n], dtype=np.float32)
    return float(np.mean(np.linalg.norm(x - recon[:n], axis=1) / np.maximum(np.linalg.norm(x, axis=1), 1e-12)))


def study(ds: D.Dataset, n_queries: int, threads: int = 2, k: int = 10) -> dict:
    faiss.omp_set_num_threads(threads)
    sub = D.Dataset(ds.name, ds.metric, ds.base, ds.queries[:n_queries], ds.base_path, ds.query_path,
                    truth=ds.truth[:n_queries], labels=_sub_labels(ds.labels, n_queries))
    rows = {"float32 (exact)": {**D.score(sub, sub.truth[:, :k]), "bytes_per_vector": 4 * ds.base.shape[1],
                                "mean_relative_error": 0.0}}
    for name, make in (("int8 per-dimension affine (Int8Quantizer)", _per_dim),
                       ("int8 per-vector symmetric (PerVectorInt8)", _per_vector)):
        t = time.perf_counter()
        recon, nbytes = make(ds.base)
        ids = _search(sub, recon, sub.queries, k)
        rows[name] = {**D.score(sub, ids), "bytes_per_vector": nbytes,
                      "mean_relative_error": round(_rel_error(ds.base, recon), 5),
                      "seconds": round(time.perf_counter() - t, 1)}
        del recon
    return {"dataset": ds.name, "metric": ds.metric, "queries": n_queries, "k": k, "rows": rows}


def _sub_labels(labels: dict, n: int) -> dict:
    return {key: (v[:n] if key.startswith("query") else v) for key, v in labels.items()}
