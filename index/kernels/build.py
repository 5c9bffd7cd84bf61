"""Build-time kernels: closure assignment with the RNG rule, the posting cap, balanced k-means pieces."""
from __future__ import annotations

import numpy as np
from numba import njit


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
    (second-best minus best distance), so that points with most to lose choose first: each takes its nearest
    column that still has room."""
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
        best = -1
        best_d = np.inf
        for c in range(k):  # a scan of k, not a sort of the row: k is small and most columns have room
            if counts[c] < capacity and (best < 0 or D[i, c] < best_d):
                best = c
                best_d = D[i, c]
        if best < 0:  # every column full: only if capacity * k < n, which callers never ask
            best = np.argmin(D[i])
        labels[i] = best
        counts[best] += 1
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


@njit(nogil=True, cache=True, fastmath=True)
def _sq_dist_to(x, v, out):
    """out[i] = |x[i] - v|^2, accumulated in float32 (vectorised)."""
    n, dim = x.shape
    for i in range(n):
        acc = np.float32(0.0)
        for t in range(dim):
            diff = x[i, t] - v[t]
            acc += diff * diff
        out[i] = acc


@njit(nogil=True, cache=True)
def kmeans_pp_init(x, k, seed):
    """k-means++ seeding (D^2 sampling), deterministic for a given seed."""
    np.random.seed(seed)
    n, dim = x.shape
    centers = np.empty((k, dim), np.float32)
    first = np.random.randint(n)
    centers[0] = x[first]
    best = np.empty(n, np.float32)
    _sq_dist_to(x, centers[0], best)
    dist = np.empty(n, np.float32)
    for c in range(1, k):
        total = 0.0  # the sampling sums in float64: float32 would lose the small terms of a large total
        for i in range(n):
            total += best[i]
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
        _sq_dist_to(x, centers[c], dist)
        for i in range(n):
            if dist[i] < best[i]:
                best[i] = dist[i]
    return centers


@njit(nogil=True, cache=True, fastmath=True)
def neighbourhood_candidates(x, heads, start, graph, cand, cand_d):
    """The nearest heads of each row of x among its start head's neighbourhood, exactly.

    start: int [n] a head near each row (its nearest head within its clustering leaf); graph: int [H, K] each
    head's neighbourhood (itself first, then its nearest heads; -1 = none). Fills cand int64 [n, C] and
    cand_d float32 [n, C] (squared distances) with the C nearest of the K, ascending, padded (-1, inf)."""
    n, dim = x.shape
    width = graph.shape[1]
    C = cand.shape[1]
    for i in range(n):
        m = 0
        g = graph[start[i]]
        for t in range(width):
            h = g[t]
            if h < 0:
                continue
            acc = np.float32(0.0)
            for j in range(dim):
                diff = x[i, j] - heads[h, j]
                acc += diff * diff
            if m == C and acc >= cand_d[i, C - 1]:
                continue
            p = m if m < C else C - 1  # insertion into the sorted top C
            while p > 0 and cand_d[i, p - 1] > acc:
                cand_d[i, p] = cand_d[i, p - 1]
                cand[i, p] = cand[i, p - 1]
                p -= 1
            cand_d[i, p] = acc
            cand[i, p] = h
            if m < C:
                m += 1
        for p in range(m, C):
            cand[i, p] = -1
            cand_d[i, p] = np.inf
