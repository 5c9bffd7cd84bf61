"""The search kernels: posting scans straight from the mmap, exact re-ranking with inline row checksums.

The posting scan reads records straight out of the mmap'd posting file (no copies): record r of a posting at
byte `off` starts at off + r * rec_size with a u32 internal id, a u8 version and then the int8 code
(storage/posting_format.py). A record counts only if its version equals the row's current state byte, which
also hides deleted rows (their state has the high bit set) and stale replicas left behind by reassignment.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from storage.posting_format import RECORD_CODE_OFFSET as CODE, RECORD_ID_OFFSET as ID, \
    RECORD_VERSION_OFFSET as VER
from storage.vectors import ROW_SALT

MASK32 = 0xFFFFFFFF


# -- a bounded max-heap of (distance, id) that ignores repeated ids (replicas of one vector) --------------
@njit(nogil=True, cache=True, inline="always")
def sift_down(hd, hi, n, pos):
    """Restore the max-heap (distances hd, ids hi, first n entries) below `pos` (also the tier's heap)."""
    d, v = hd[pos], hi[pos]
    while True:
        c = 2 * pos + 1
        if c >= n:
            break
        if c + 1 < n and hd[c + 1] > hd[c]:
            c += 1
        if hd[c] <= d:
            break
        hd[pos], hi[pos] = hd[c], hi[c]
        pos = c
    hd[pos], hi[pos] = d, v


@njit(nogil=True, cache=True, inline="always")
def sift_up(hd, hi, pos):
    """Move entry `pos` of the max-heap (distances hd, ids hi) up to its place (also the tier's heap)."""
    d, v = hd[pos], hi[pos]
    while pos > 0:
        parent = (pos - 1) // 2
        if hd[parent] >= d:
            break
        hd[pos], hi[pos] = hd[parent], hi[parent]
        pos = parent
    hd[pos], hi[pos] = d, v


@njit(nogil=True, cache=True, inline="always")
def _offer(hd, hi, n, d, v):
    cap = hd.shape[0]
    if n == cap and d >= hd[0]:
        return n
    for t in range(n):  # replicas carry identical codes, so a repeat id always arrives with the same distance
        if hi[t] == v:
            return n
    if n < cap:
        hd[n], hi[n] = d, v
        sift_up(hd, hi, n)
        return n + 1
    hd[0], hi[0] = d, v
    sift_down(hd, hi, n, 0)
    return n


# -- posting scans ------------------------------------------------------------------------------------------
@njit(nogil=True, cache=True, fastmath=True)
def scan_l2(buf_i8, buf_u32, buf_u8, offsets, counts, pids, rec_size, dim, u, w, state, allow, hd, hi):
    """Approximate squared L2 of every live record in `pids`; keep the best len(hd). Returns the heap size.

    The distance is computed before the record's id and state are looked at: most records lose against the
    heap's worst entry, and for them the random access into the state array is skipped."""
    n = 0
    cap = hd.shape[0]
    use_allow = allow.shape[0] > 0
    for p in pids:
        if p < 0:
            continue
        off = offsets[p]
        for r in range(counts[p]):
            base = off + r * rec_size
            code = buf_i8[base + CODE: base + CODE + dim]  # a slice, not buf[i + j]: lets LLVM vectorize the loop
            acc = np.float32(0.0)
            for j in range(dim):
                t = u[j] - np.float32(code[j])
                acc += w[j] * t * t
            if n == cap and acc >= hd[0]:
                continue
            rid = buf_u32[(base + ID) >> 2]
            if state[rid] != buf_u8[base + VER]:
                continue
            if use_allow and allow[rid] == 0:
                continue
            n = _offer(hd, hi, n, acc, np.int64(rid))
    return n


@njit(nogil=True, cache=True, fastmath=True)
def scan_ip(buf_i8, buf_u32, buf_u8, offsets, counts, pids, rec_size, dim, v, const, state, allow, hd, hi):
    """Approximate negative inner product; otherwise as scan_l2."""
    n = 0
    cap = hd.shape[0]
    use_allow = allow.shape[0] > 0
    for p in pids:
        if p < 0:
            continue
        off = offsets[p]
        for r in range(counts[p]):
            base = off + r * rec_size
            code = buf_i8[base + CODE: base + CODE + dim]
            acc = np.float32(0.0)
            for j in range(dim):
                acc += v[j] * np.float32(code[j])
            d = -(const + acc)
            if n == cap and d >= hd[0]:
                continue
            rid = buf_u32[(base + ID) >> 2]
            if state[rid] != buf_u8[base + VER]:
                continue
            if use_allow and allow[rid] == 0:
                continue
            n = _offer(hd, hi, n, d, np.int64(rid))
    return n


# -- exact re-ranking with inline row checksum ----------------------------------------------------------------
@njit(nogil=True, cache=True, fastmath=True, inline="always")
def _exact_one(vec, words, row, q, is_l2):
    """(distance of vector `vec` to q, whether its checksum word matches row `row`)."""
    dim = q.shape[0]
    acc = np.float32(0.0)
    if is_l2:
        for j in range(dim):
            diff = q[j] - vec[j]
            acc += diff * diff
    else:
        for j in range(dim):
            acc += q[j] * vec[j]
        acc = -acc
    s = np.uint64(0)
    for j in range(dim):
        s += np.uint64(words[j]) * np.uint64(2 * j + 1)
    s += np.uint64(row) * np.uint64(ROW_SALT)
    return acc, (s & np.uint64(MASK32)) == np.uint64(words[dim])


@njit(nogil=True, cache=True, fastmath=True)
def exact_rows(mat, mat_u32, rows, q, is_l2, out):
    """Exact distances of `rows` to q (squared L2 or -IP). Returns -1, or the first row whose checksum fails."""
    for t in range(rows.shape[0]):
        row = rows[t]
        acc, ok = _exact_one(mat[row], mat_u32[row], row, q, is_l2)
        if not ok:
            return row
        out[t] = acc
    return -1


@njit(nogil=True, cache=True, fastmath=True)
def exact_at(buf_f32, buf_u32, at, rows, q, is_l2, out):
    """exact_rows over rows already read into a buffer: row rows[t] of the vector file (dim floats, checksum word
    last) starts at word at[t] of `buf_f32` / `buf_u32` (two views of the buffer). Returns -1, or the first row
    whose checksum fails."""
    width = q.shape[0] + 1
    for t in range(rows.shape[0]):
        s = at[t]
        acc, ok = _exact_one(buf_f32[s: s + width], buf_u32[s: s + width], rows[t], q, is_l2)
        if not ok:
            return rows[t]
        out[t] = acc
    return -1


@njit(nogil=True, cache=True)
def search_one(buf_i8, buf_u32, buf_u8, offsets, counts, pids, rec_size, is_l2, qa, qw, qc, q, state, allow,
               mat, mat_u32, k, rerank_k, rerank, rerank_eps=0.0):
    """One query: scan `pids`, keep rerank_k candidates, re-rank them exactly, return the best k.

    With rerank_eps > 0 only the candidates whose INT8 distance is within rerank_eps * |d_k| of the k-th INT8
    distance d_k are re-ranked (at least k; `rerank_cut`), the rest are dropped.

    Returns (ids int64[k] padded with -1, dists float32[k] padded with inf, scanned records, bad row or -1).
    """
    dim = q.shape[0]
    hd = np.empty(rerank_k, np.float32)
    hi = np.empty(rerank_k, np.int64)
    if is_l2:
        n = scan_l2(buf_i8, buf_u32, buf_u8, offsets, counts, pids, rec_size, dim, qa, qw, state, allow, hd, hi)
    else:
        n = scan_ip(buf_i8, buf_u32, buf_u8, offsets, counts, pids, rec_size, dim, qa, qc, state, allow, hd, hi)
    cand, cd = hi[:n], hd[:n]
    bad = -1
    if rerank and rerank_eps > 0 and n > k:
        first = np.argsort(cd, kind="mergesort")
        cand, cd = cand[first], cd[first]
        n = rerank_cut(cd, k, rerank_eps)
        cand, cd = cand[:n], cd[:n]
    if rerank and n > 0:
        exact = np.empty(n, np.float32)
        bad = exact_rows(mat, mat_u32, cand, q, is_l2, exact)
        cd = exact
    order = np.argsort(cd, kind="mergesort")
    ids = np.full(k, -1, np.int64)
    dists = np.full(k, np.inf, np.float32)
    m = min(k, n)
    for t in range(m):
        ids[t] = cand[order[t]]
        dists[t] = cd[order[t]]
    scanned = 0
    for p in pids:
        if p >= 0:
            scanned += counts[p]
    return ids, dists, scanned, bad


@njit(nogil=True, cache=True)
def rerank_cut(cd, k, rerank_eps):
    """How many of the ascending INT8 distances `cd` to re-rank: those <= d_k + rerank_eps * |d_k|, >= k."""
    n = cd.shape[0]
    if rerank_eps <= 0 or n <= k:
        return n
    limit = cd[k - 1] + rerank_eps * abs(cd[k - 1])
    m = k
    while m < n and cd[m] <= limit:
        m += 1
    return m


@njit(nogil=True, cache=True)
def search_many(buf_i8, buf_u32, buf_u8, offsets, counts, P, rec_size, is_l2, QA, qw, QC, Q, state, allow,
                mat, mat_u32, k, rerank_k, rerank, out_ids, out_d, out_scanned, rerank_eps=0.0):
    """search_one for each row of P / QA / QC / Q. Returns -1 or the first corrupt row met."""
    for i in range(P.shape[0]):
        ids, d, scanned, bad = search_one(buf_i8, buf_u32, buf_u8, offsets, counts, P[i], rec_size, is_l2,
                                          QA[i], qw, QC[i], Q[i], state, allow, mat, mat_u32, k, rerank_k,
                                          rerank, rerank_eps)
        if bad >= 0:
            return bad
        out_ids[i] = ids
        out_d[i] = d
        out_scanned[i] = scanned
    return -1
