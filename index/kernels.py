"""numba kernels. All run with nogil=True so searches on several threads use several cores.

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
def _sift_down(hd, hi, n, pos):
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
def _offer(hd, hi, n, d, v):
    cap = hd.shape[0]
    if n == cap and d >= hd[0]:
        return n
    for t in range(n):  # replicas carry identical codes, so a repeat id always arrives with the same distance
        if hi[t] == v:
            return n
    if n < cap:
        pos = n
        n += 1
        while pos > 0:
            parent = (pos - 1) // 2
            if hd[parent] >= d:
                break
            hd[pos], hi[pos] = hd[parent], hi[parent]
            pos = parent
        hd[pos], hi[pos] = d, v
        return n
    hd[0], hi[0] = d, v
    _sift_down(hd, hi, n, 0)
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
@njit(nogil=True, cache=True, fastmath=True)
def exact_rows(mat, mat_u32, rows, q, is_l2, out):
    """Exact distances of `rows` to q (squared L2 or -IP). Returns -1, or the first row whose checksum fails."""
    dim = q.shape[0]
    for t in range(rows.shape[0]):
        row = rows[t]
        vec = mat[row]
        words = mat_u32[row]
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
        if (s & np.uint64(MASK32)) != np.uint64(words[dim]):
            return row
        out[t] = acc
    return -1


@njit(nogil=True, cache=True)
def search_one(buf_i8, buf_u32, buf_u8, offsets, counts, pids, rec_size, is_l2, qa, qw, qc, q, state, allow,
               mat, mat_u32, k, rerank_k, rerank):
    """One query: scan `pids`, keep rerank_k candidates, re-rank them exactly, return the best k.

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
def search_many(buf_i8, buf_u32, buf_u8, offsets, counts, P, rec_size, is_l2, QA, qw, QC, Q, state, allow,
                mat, mat_u32, k, rerank_k, rerank, out_ids, out_d, out_scanned):
    """search_one for each row of P / QA / QC / Q. Returns -1 or the first corrupt row met."""
    for i in range(P.shape[0]):
        ids, d, scanned, bad = search_one(buf_i8, buf_u32, buf_u8, offsets, counts, P[i], rec_size, is_l2,
                                          QA[i], qw, QC[i], Q[i], state, allow, mat, mat_u32, k, rerank_k,
                                          rerank)
        if bad >= 0:
            return bad
        out_ids[i] = ids
        out_d[i] = d
        out_scanned[i] = scanned
    return -1


# -- build-time kernels ---------------------------------------------------------------------------------------
@njit(nogil=True, cache=True, fastmath=True)
def rng_select(cand, cand_d, heads, max_replicas, factor, closure):
    """Closure assignment with the RNG rule.

    cand: int64 [n, C] nearest heads of each vector in ascending distance (-1 = none); cand_d: their squared
    head-space distances. Head c is a candidate only if d(x, c) <= (1 + closure) d(x, c_1) (SPANN's closure:
    only boundary vectors are replicated), and is accepted unless an accepted head a has
    factor * d(c, a) < d(x, c) (the RNG rule: replicas go in different directions).
    Returns (sel int64 [n, R] padded -1, sel_d float32 [n, R], nsel int32 [n]).
    """
    n, C = cand.shape
    dim = heads.shape[1]
    sel = np.full((n, max_replicas), -1, np.int64)
    sel_d = np.full((n, max_replicas), np.inf, np.float32)
    nsel = np.zeros(n, np.int32)
    f2 = np.float32(factor * factor)
    c2 = np.float32((1.0 + closure) * (1.0 + closure))
    for i in range(n):
        m = 0
        limit = np.float32(np.inf)
        for t in range(C):
            c = cand[i, t]
            if c < 0:
                continue
            dxc = cand_d[i, t]
            if m == 0:
                limit = dxc * c2
            elif dxc > limit:
                break
            ok = True
            for s in range(m):
                a = sel[i, s]
                dca = np.float32(0.0)
                for j in range(dim):
                    diff = heads[c, j] - heads[a, j]
                    dca += diff * diff
                if f2 * dca < dxc:
                    ok = False
                    break
            if ok:
                sel[i, m] = c
                sel_d[i, m] = dxc
                m += 1
                if m == max_replicas:
                    break
        nsel[i] = m
    return sel, sel_d, nsel


@njit(nogil=True, cache=True)
def cap_postings(vec, starts, replicas, cap):
    """Trim postings longer than `cap`, dropping their farthest records only while those vectors still have
    another replica, so no vector ever ends in zero postings. Records of posting h are vec[starts[h]:starts[h+1]],
    ordered nearest first. Returns a keep mask; `replicas` is updated in place."""
    keep = np.ones(vec.shape[0], np.bool_)
    for h in range(starts.shape[0] - 1):
        s, e = starts[h], starts[h + 1]
        length = e - s
        r = e - 1
        while length > cap and r >= s:
            v = vec[r]
            if replicas[v] > 1:
                keep[r] = False
                replicas[v] -= 1
                length -= 1
            r -= 1
    return keep


@njit(nogil=True, cache=True)
def balanced_assign(D, capacity):
    """Assign each row of D [n, k] to a column, at most `capacity` rows per column, greedily in order of regret
    (second-best minus best distance), so that points with most to lose choose first."""
    n, k = D.shape
    regret = np.empty(n, np.float32)
    for i in range(n):
        b1 = np.inf
        b2 = np.inf
        for c in range(k):
            d = D[i, c]
            if d < b1:
                b2 = b1
                b1 = d
            elif d < b2:
                b2 = d
        regret[i] = b2 - b1 if k > 1 else 0.0
    order = np.argsort(-regret)
    counts = np.zeros(k, np.int64)
    labels = np.empty(n, np.int64)
    for i in order:
        prefs = np.argsort(D[i])
        for c in prefs:
            if counts[c] < capacity:
                labels[i] = c
                counts[c] += 1
                break
    return labels


@njit(nogil=True, cache=True, fastmath=True)
def sq_dists(x, c):
    """Squared L2 distances [n, k] (small problems; BLAS is used for big ones)."""
    n, dim = x.shape
    k = c.shape[0]
    out = np.empty((n, k), np.float32)
    for i in range(n):
        for j in range(k):
            acc = np.float32(0.0)
            for t in range(dim):
                diff = x[i, t] - c[j, t]
                acc += diff * diff
            out[i, j] = acc
    return out


@njit(nogil=True, cache=True)
def cluster_means(x, labels, k, old):
    """Mean of each cluster; clusters that lost every point keep their old centroid."""
    n, dim = x.shape
    sums = np.zeros((k, dim), np.float64)
    counts = np.zeros(k, np.int64)
    for i in range(n):
        c = labels[i]
        counts[c] += 1
        for t in range(dim):
            sums[c, t] += x[i, t]
    out = old.copy()
    for c in range(k):
        if counts[c] > 0:
            for t in range(dim):
                out[c, t] = sums[c, t] / counts[c]
    return out


@njit(nogil=True, cache=True)
def kmeans_pp_init(x, k, seed):
    """k-means++ seeding (D^2 sampling), deterministic for a given seed."""
    np.random.seed(seed)
    n, dim = x.shape
    centers = np.empty((k, dim), np.float32)
    first = np.random.randint(n)
    centers[0] = x[first]
    best = np.empty(n, np.float64)
    for i in range(n):
        acc = 0.0
        for t in range(dim):
            diff = x[i, t] - centers[0, t]
            acc += diff * diff
        best[i] = acc
    for c in range(1, k):
        total = best.sum()
        if total <= 0:
            pick = np.random.randint(n)
        else:
            r = np.random.random() * total
            acc = 0.0
            pick = n - 1
            for i in range(n):
                acc += best[i]
                if acc >= r:
                    pick = i
                    break
        centers[c] = x[pick]
        for i in range(n):
            acc = 0.0
            for t in range(dim):
                diff = x[i, t] - centers[c, t]
                acc += diff * diff
            if acc < best[i]:
                best[i] = acc
    return centers


@njit(nogil=True, cache=True)
def live_counts(buf_u32, buf_u8, offsets, counts, rec_size, state):
    """Records per posting whose version matches its row's state (not deleted, not a stale replica)."""
    out = np.zeros(offsets.shape[0], np.int32)
    for p in range(offsets.shape[0]):
        off = offsets[p]
        live = 0
        for r in range(counts[p]):
            base = off + r * rec_size
            if state[buf_u32[(base + ID) >> 2]] == buf_u8[base + VER]:
                live += 1
        out[p] = live
    return out


@njit(nogil=True, cache=True)
def mark_reachable(buf_u32, buf_u8, offsets, counts, rec_size, state, reached):
    """reached[row] = True for every row with a valid record (version == state) in some posting."""
    for p in range(offsets.shape[0]):
        off = offsets[p]
        for r in range(counts[p]):
            base = off + r * rec_size
            rid = buf_u32[(base + ID) >> 2]
            if state[rid] == buf_u8[base + VER]:
                reached[rid] = True


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
def small_exact_topk(vecs, rows, dead, qs, k, is_l2, out_r, out_d):
    """Exact top-k of a few rows (the memtable between maintenance steps): kernel distances (squared L2 or
    -dot) computed directly, dead rows skipped, ties to the earlier row. Fills out_r / out_d [nq, k]."""
    n, dim = vecs.shape
    d = np.empty(n, np.float64)
    for q in range(qs.shape[0]):
        for i in range(n):
            if dead[i]:
                d[i] = np.inf
                continue
            acc = 0.0
            if is_l2:
                for j in range(dim):
                    t = vecs[i, j] - qs[q, j]
                    acc += t * t
            else:
                for j in range(dim):
                    acc -= vecs[i, j] * qs[q, j]
            d[i] = acc
        order = np.argsort(d, kind="mergesort")
        for j in range(k):
            if j < n and d[order[j]] < np.inf:
                out_r[q, j], out_d[q, j] = rows[order[j]], d[order[j]]
            else:
                out_r[q, j], out_d[q, j] = -1, np.inf
