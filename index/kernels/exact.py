"""Small exact kernels: the cache's nearest-key scan, merging two candidate lists, the memtable's top-k, the
calibration's running top-k over blocks of dot products."""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, cache=True, fastmath=True)
def nearest_key(keys, norms, slots, sigs, n, q, qnorm, sig):
    """(index, squared L2) of the nearest of keys[:n] whose slot is live (>= 0) and whose sigs equals sig, or
    (-1, inf). One pass, no temporaries: the semantic cache calls it on every lookup."""
    best, bi = np.inf, -1
    dim = q.shape[0]
    for i in range(n):
        if slots[i] < 0 or sigs[i] != sig:
            continue
        dot = 0.0
        for j in range(dim):
            dot += keys[i, j] * q[j]
        d = norms[i] + qnorm - 2.0 * dot
        if d < best:
            best, bi = d, i
    return bi, best


@njit(nogil=True, cache=True)
def merge_topk(r1, d1, r2, d2, k, out_r, out_d):
    """Per query, the k nearest distinct rows of two candidate lists (-1 / inf entries ignored; a row in both
    keeps its smaller distance). Ties in distance go to the smaller row id. Fills out_r / out_d [nq, k]."""
    n1, n2 = r1.shape[1], r2.shape[1]
    cr = np.empty(n1 + n2, np.int64)
    cd = np.empty(n1 + n2, np.float64)
    for q in range(out_r.shape[0]):
        m = 0
        for j in range(n1):
            if r1[q, j] >= 0 and d1[q, j] < np.inf:
                cr[m], cd[m] = r1[q, j], d1[q, j]
                m += 1
        for j in range(n2):
            if r2[q, j] >= 0 and d2[q, j] < np.inf:
                cr[m], cd[m] = r2[q, j], d2[q, j]
                m += 1
        by_row = np.argsort(cr[:m], kind="mergesort")
        ur = np.empty(m, np.int64)
        ud = np.empty(m, np.float64)
        u = 0
        for j in range(m):  # one entry per row, its smallest distance
            i = by_row[j]
            if u and ur[u - 1] == cr[i]:
                if cd[i] < ud[u - 1]:
                    ud[u - 1] = cd[i]
            else:
                ur[u], ud[u] = cr[i], cd[i]
                u += 1
        by_d = np.argsort(ud[:u], kind="mergesort")
        t = min(k, u)
        for j in range(t):
            out_r[q, j], out_d[q, j] = ur[by_d[j]], ud[by_d[j]]
        for j in range(t, k):
            out_r[q, j], out_d[q, j] = -1, np.inf


@njit(nogil=True, cache=True, fastmath=True)
def small_exact_topk(vecs, rows, dead, qs, k, is_l2, out_r, out_d, heads, probes, nearest_heads, retired):
    """Exact top-k of the memtable rows for a few queries: kernel distances (squared L2 or -dot) computed
    directly, dead rows skipped, ties to the earlier row. Fills out_r / out_d [nq, k]. One pass per query
    keeping the k best in a sorted buffer (no [nq, n] distance matrix, no BLAS threads), without the GIL: a
    search scanning tens of thousands of unindexed rows no longer stalls, or is stalled by, the writer and
    the maintenance thread (issue 13).

    With `heads` (int64 [n, 2]: the head each row was filed under at write time and the first head id that
    filing could not see; no rows: scan every row), query q scans only the rows whose head is among probes[q]
    (posting ids nearest first, -1 ignored), is retired (retired[h]: its rows were filed before a split or
    merge took it away) or is unknown (-1, or past `retired`), and the rows filed before the query's nearest
    head (nearest_heads[q], which may be newer than the probed postings; -1: unknown, scan every row)
    existed: the rows of the heads the search probes, as for the indexed rows, and a row is always found by a
    query equal to it (its nearest live head is then the one it was filed under, or newer)."""
    n, dim = vecs.shape
    best_d = np.empty(max(k, 1), np.float64)
    best_i = np.empty(max(k, 1), np.int64)
    by_head = heads.shape[0] == n and n > 0
    n_known = retired.shape[0]
    probed = np.zeros(n_known if by_head else 0, np.bool_)
    for q in range(qs.shape[0]):
        nearest = -1
        if by_head:
            nearest = nearest_heads[q]
            for j in range(probes.shape[1]):
                if 0 <= probes[q, j] < n_known:
                    probed[probes[q, j]] = True
        filled = 0
        for i in range(n):
            if dead[i]:
                continue
            if by_head:
                h = heads[i, 0]
                if 0 <= h < n_known and not probed[h] and not retired[h] and 0 <= nearest < heads[i, 1]:
                    continue  # filed under a live head this query does not probe
            acc = 0.0
            if is_l2:
                for j in range(dim):
                    t = vecs[i, j] - qs[q, j]
                    acc += t * t
            else:
                for j in range(dim):
                    acc -= vecs[i, j] * qs[q, j]
            if filled == k and acc >= best_d[k - 1]:
                continue  # not better than the k-th (a tie keeps the earlier row)
            pos = filled if filled < k else k - 1
            while pos > 0 and best_d[pos - 1] > acc:
                if pos < k:
                    best_d[pos], best_i[pos] = best_d[pos - 1], best_i[pos - 1]
                pos -= 1
            best_d[pos], best_i[pos] = acc, i
            if filled < k:
                filled += 1
        for j in range(k):
            if j < filled:
                out_r[q, j], out_d[q, j] = rows[best_i[j]], best_d[j]
            else:
                out_r[q, j], out_d[q, j] = -1, np.inf
        if by_head:
            for j in range(probes.shape[1]):
                if 0 <= probes[q, j] < n_known:
                    probed[probes[q, j]] = False


@njit(nogil=True, cache=True)
def fold_block_topk(dots, block_norms, first_row, exclude, is_l2, best_d, best_i):
    """Fold one block of base rows into running per-query top-k lists: dots [nq, nb] are query . row for rows
    first_row .. first_row + nb - 1, block_norms their squared norms; the kernel distance is |row|^2 - 2 dot for
    L2 (the query's own norm ranks nothing) and -dot otherwise. Row exclude[q] never enters query q's list.
    best_d / best_i [nq, k] (inf / -1 where empty) are kept sorted, ties to the earlier row."""
    nq, nb = dots.shape
    k = best_d.shape[1]
    for q in range(nq):
        worst = best_d[q, k - 1]
        for j in range(nb):
            v = block_norms[j] - 2.0 * dots[q, j] if is_l2 else -dots[q, j]
            if v >= worst or first_row + j == exclude[q]:
                continue
            pos = k - 1
            while pos > 0 and best_d[q, pos - 1] > v:
                best_d[q, pos], best_i[q, pos] = best_d[q, pos - 1], best_i[q, pos - 1]
                pos -= 1
            best_d[q, pos], best_i[q, pos] = v, first_row + j
            worst = best_d[q, k - 1]


def merge_candidates(r1: np.ndarray, d1: np.ndarray, r2: np.ndarray, d2: np.ndarray, k: int):
    """Per query, the k nearest distinct rows of two candidate lists [nq, n1] / [nq, n2] (a row may be in both;
    either list may have no columns): (rows int64 [nq, k] padded -1, distances float32 [nq, k] padded inf)."""
    nq = max(len(r1), len(r2))
    rows, d = np.empty((nq, k), np.int64), np.empty((nq, k), np.float32)
    if r2.shape[1] == 0:
        r2, d2 = np.full((nq, 0), -1, np.int64), np.full((nq, 0), np.inf, np.float32)
    if r1.shape[1] == 0:
        r1, d1 = np.full((nq, 0), -1, np.int64), np.full((nq, 0), np.inf, np.float32)
    merge_topk(r1, d1, r2, d2, k, rows, d)
    return rows, d
