"""The scan-tier kernel: asymmetric distances (ADC) over product-quantized residual codes held in RAM.

Each entry of a posting p encodes x - b_p, the vector minus the posting's reference point b_p (its head, INT8
coded), with a product quantizer of `M` sub-codebooks; the decoded vector is x^ = b_p + r^. With per-query
tables lut[m, j] = <q_m, C_m[j]> and qb[p] = <q, b_p>,
    <q, x^>        = qb[p] + sum_m lut[m, code_m]
    |q - x^|^2     = |q|^2 + |x^|^2 - 2 <q, x^>          (|x^|^2 is stored per entry: `terms`)
so one table per query serves every posting (faiss's IVFPQ "precomputed tables", here exact because the
reference point is part of the decoded vector). Kernel distances follow index/kernels/search.py: squared L2,
or the negative inner product.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from index.kernels.search import sift_down, sift_up


@njit(nogil=True, cache=True, inline="always")
def _offer_min(hd, hi, n, d, v):
    """Bounded max-heap of (distance, row) keeping each row once at its smallest distance: the replicas of a
    vector are coded against different reference points, so their estimates differ slightly."""
    for t in range(n):
        if hi[t] == v:
            if d < hd[t]:
                hd[t] = d
                sift_down(hd, hi, n, t)
            return n
    if n < hd.shape[0]:
        hd[n], hi[n] = d, v
        sift_up(hd, hi, n)
        return n + 1
    if d >= hd[0]:
        return n
    hd[0], hi[0] = d, v
    sift_down(hd, hi, n, 0)
    return n


@njit(nogil=True, cache=True, fastmath=True)
def tier_scan(pids, start, count, rows, versions, terms, codes, lut, qb, qq, state, allow, is_l2, hd, hi):
    """Scan the entries of postings `pids` (qb[i] = <q, b_pids[i]>, qq = |q|^2) into the heap (hd, hi); an entry
    counts only if its version equals the row's state byte (deleted rows and stale replicas never do) and, with
    a non-empty `allow`, the row is allowed. Returns (heap size, entries scanned)."""
    n_sub = codes.shape[1]
    n = 0
    scanned = 0
    check_allow = allow.shape[0] > 0
    cap = hd.shape[0]
    for i in range(pids.shape[0]):
        p = pids[i]
        s = start[p]
        e_end = s + count[p]
        base = qb[i]
        scanned += e_end - s
        for e in range(s, e_end):
            acc = np.float32(0.0)
            for m in range(n_sub):
                acc += lut[m, codes[e, m]]
            ip = base + acc
            d = qq + terms[e] - 2.0 * ip if is_l2 else -ip
            # an estimate no better than the full heap's worst changes nothing (a row already held is held at
            # most that far): most entries stop here, before the random reads of the row's state byte and the
            # heap's duplicate scan (2.6x faster at 10M, nprobe 48, identical candidates)
            if n == cap and d >= hd[0]:
                continue
            row = rows[e]
            if state[row] != versions[e]:
                continue
            if check_allow and allow[row] == 0:
                continue
            n = _offer_min(hd, hi, n, d, np.int64(row))
    return n, scanned


@njit(nogil=True, cache=True, fastmath=True)
def tier_query(pids, start, count, rows, versions, terms, codes, codebook_t, base, scale, offset, q, state, allow,
               is_l2, rerank_k):
    """One query end to end without the GIL: its tables (lut from the codebook transposed to [M, dsub, 256], so
    that the innermost loop runs over 256 contiguous centroids, which vectorizes: over the stored [M, 256, dsub]
    the tables and a one-posting scan took 34 us per query on the 10M tier, now 14; qb from the INT8 base codes:
    <q, b_p> = <q, offset> + sum_j q_j scale_j code_pj), the scan, and the candidates sorted by estimate.
    Returns (rows [n], estimates [n] ascending, entries scanned)."""
    n_sub, dsub, ksub = codebook_t.shape
    dim = q.shape[0]
    lut = np.zeros((n_sub, ksub), np.float32)
    for m in range(n_sub):
        for t in range(dsub):
            d = m * dsub + t
            if d < dim:  # the last sub-space may be padded past dim (index/scancodes.py padded_dim)
                qv = q[d]
                for j in range(ksub):
                    lut[m, j] += qv * codebook_t[m, t, j]
    qs = np.empty(dim, np.float32)
    const = 0.0
    qq = 0.0
    for d in range(dim):
        qs[d] = q[d] * scale[d]
        const += np.float64(q[d]) * offset[d]
        qq += np.float64(q[d]) * q[d]
    qb = np.empty(pids.shape[0], np.float32)
    for i in range(pids.shape[0]):
        acc = np.float32(0.0)
        for d in range(dim):
            acc += qs[d] * base[pids[i], d]
        qb[i] = acc + np.float32(const)
    hd = np.empty(rerank_k, np.float32)
    hi = np.empty(rerank_k, np.int64)
    n, scanned = tier_scan(pids, start, count, rows, versions, terms, codes, lut, qb, np.float32(qq), state, allow,
                           is_l2, hd, hi)
    order = np.argsort(hd[:n], kind="mergesort")
    return hi[:n][order], hd[:n][order], scanned
