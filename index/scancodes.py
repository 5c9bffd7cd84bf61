"""Encoding the scan tier: product-quantized residual codes of every posting record (storage/scan_codes.py).

For posting p the reference point b_p is its head, INT8-coded with the index's quantizer (dim bytes per
posting, so the reference is exact in the decoded space and costs little RAM); each valid record x of p is
stored as (row, version, |x^|^2, PQ code of x - b_p). The product quantizer (faiss ProductQuantizer: `M`
sub-spaces of 256 centroids, trained on a sample of residuals) gives M bytes per entry, so 10.8M entries of
128-d vectors take 9 + M bytes each: 443 MB at the automatic M = 32 (docs/benchmarks.md: what fits which budget).

Entries are encoded in row order (the float32 rows are read near-sequentially, never in posting order) and
written in posting order in one atomic file publish. Only a built, unchanged posting is worth an entry: the
table keeps each posting's directory CRC and count as encoded, so a posting changed since is stale.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from index.types import SCAN_TRAIN_SAMPLES, resolve_scan_code_bytes
from storage.posting_format import code_bytes as int8_code_bytes
from storage.scan_codes import TABLE_DTYPE

log = logging.getLogger(__name__)
KSUB = 256          # centroids per sub-quantizer (one byte per sub-code)
ENCODE_BLOCK = 65536


def padded_dim(dim: int, m: int) -> int:
    """Sub-spaces of equal width: the vectors are zero-padded to a multiple of m."""
    return -(-dim // m) * m


def _entries(index) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(table, rows, versions): the valid records of every posting in posting order."""
    store, state = index.files.postings, index.state
    d = store.dir
    table = np.zeros(len(d), TABLE_DTYPE)
    rows_parts, ver_parts, pos = [], [], 0
    for p in range(len(d)):
        table["src_crc"][p], table["src_count"][p], table["start"][p] = d.crc[p], d.count[p], pos
        if d.count[p] == 0:
            continue
        rec = store.records(p)           # checksum-verified
        rows = rec["id"].astype(np.int64)
        keep = rec["version"] == state[rows]
        rows_parts.append(rows[keep].astype(np.uint32))
        ver_parts.append(rec["version"][keep])
        table["count"][p] = int(keep.sum())
        pos += int(keep.sum())
    cat = (lambda parts, dt: np.concatenate(parts) if parts else np.zeros(0, dt))
    return table, cat(rows_parts, np.uint32), cat(ver_parts, np.uint8)


def _train(pq, mat, rows, pids, base_f, dim: int, dpad: int, n: int, train_samples: int, seed: int) -> None:
    """Train the product quantizer on a sample of residuals (all of them on a small index)."""
    if n == 0:
        return
    rng = np.random.default_rng([seed, 29])
    take = np.sort(rng.choice(n, min(n, train_samples), replace=False))
    sample = np.zeros((len(take), dpad), np.float32)
    sample[:, :dim] = np.asarray(mat[rows[take].astype(np.int64), :dim]) - base_f[pids[take]]
    if len(take) < KSUB:  # faiss needs at least ksub points; a tiny index repeats its few residuals
        sample = np.resize(sample, (KSUB, dpad))
    pq.train(sample)


def build_scan_codes(index, code_bytes: int = -1, *, train_samples: int = SCAN_TRAIN_SAMPLES,
                     seed: int = 0) -> dict:
    """Encode every posting record of a (writable-opened or freshly built) SpannIndex and publish its scan-code
    file; code_bytes -1: automatic (index.types.scan_code_bytes). Returns what was done (entries, bytes,
    seconds). InvalidParameterError for a bad code size."""
    import faiss
    code_bytes = resolve_scan_code_bytes(code_bytes, index.dim)
    t0 = time.perf_counter()
    dim, qz = index.dim, index.quantizer
    table, rows, versions = _entries(index)
    n = len(rows)
    dpad = padded_dim(dim, code_bytes)
    base = np.zeros((len(table), int8_code_bytes(dim)), np.int8)
    if qz is not None and len(table):
        base = qz.encode(np.ascontiguousarray(index.head_vectors(), np.float32))
        base_f = qz.decode(base)
    else:
        base_f = np.zeros((len(table), dim), np.float32)
    pids = np.repeat(np.arange(len(table)), table["count"].astype(np.int64))
    mat = index.stored_matrix()
    pq = faiss.ProductQuantizer(dpad, code_bytes, 8)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # k-means on several OpenMP threads spin-waits: 10x slower on a busy machine
    try:
        _train(pq, mat, rows, pids, base_f, dim, dpad, n, train_samples, seed)
    finally:
        faiss.omp_set_num_threads(threads)
    codebook = faiss.vector_to_array(pq.centroids).reshape(code_bytes, KSUB, dpad // code_bytes)
    codes = np.zeros((n, code_bytes), np.uint8)
    terms = np.zeros(n, np.float32)
    order = np.argsort(rows, kind="stable")
    for s in range(0, n, ENCODE_BLOCK):
        e = order[s: s + ENCODE_BLOCK]
        resid = np.zeros((len(e), dpad), np.float32)
        resid[:, :dim] = np.asarray(mat[rows[e].astype(np.int64), :dim]) - base_f[pids[e]]
        c = pq.compute_codes(resid)
        decoded = pq.decode(c)[:, :dim] + base_f[pids[e]]
        codes[e] = c
        terms[e] = (decoded.astype(np.float64) ** 2).sum(1)
    index.files.write_scan_codes(dim, table, codebook, base, rows, versions, terms, codes)
    out = {"entries": int(n), "code_bytes": int(code_bytes), "train_samples": int(min(n, train_samples)),
           "seconds": round(time.perf_counter() - t0, 2)}
    log.info("scan codes: %d entries of %d bytes in %.1f s", n, code_bytes, out["seconds"])
    return out
