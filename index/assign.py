"""Closure assignment: put each vector into the postings of up to `max_replicas` nearby heads (RNG rule),
then cap posting lengths without ever leaving a vector in zero postings."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import faiss
import numpy as np

from index.centroids import HeadIndex
from index.kernels import cap_postings, rng_select
from index.types import BuildParams

CHUNK = 32768


@dataclass
class Assignment:
    """Posting membership: records of posting h are vec[starts[h]:starts[h+1]], nearest first."""

    vec: np.ndarray      # int64 [R] internal row ids
    dist: np.ndarray     # float32 [R] squared head-space distance to the posting's head
    starts: np.ndarray   # int64 [H + 1]
    cap: int             # the posting cap applied
    over_cap: int        # postings still over the cap because all their far members are single-copy

    def members(self, h: int) -> np.ndarray:
        return self.vec[self.starts[h]: self.starts[h + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.starts)

    def without_empty(self) -> "Assignment":
        """The same membership with empty postings removed (posting ids renumbered in order)."""
        lengths = self.lengths()
        starts = np.concatenate([[0], np.cumsum(lengths[lengths > 0])]).astype(np.int64)
        return Assignment(self.vec, self.dist, starts, self.cap, self.over_cap)


def select_heads(x: np.ndarray, heads: np.ndarray, head_index: HeadIndex, params: BuildParams,
                 excluded: np.ndarray | None = None, excluded_in_index: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RNG-rule head choice for head-space vectors x; returns (sel [n, R] padded -1, sel_d, nsel).

    `heads` is indexed by posting id; `excluded` (bool per posting id) marks retired heads, never chosen;
    `excluded_in_index` says how many of them the head index still holds (None: all of them)."""
    extra = int(excluded.sum()) if excluded is not None else 0
    held = extra if excluded_in_index is None else min(extra, excluded_in_index)
    n_cand = params.candidates + over_fetch(params.candidates, held, head_index.size)
    d, cand = head_index.search(x, n_cand, ef_search=max(2 * n_cand, 64))
    if extra:
        dead = (cand < 0) | excluded[np.maximum(cand, 0)]
        order = np.argsort(dead, axis=1, kind="stable")
        d = np.take_along_axis(np.where(dead, np.inf, d), order, 1)
        cand = np.take_along_axis(np.where(dead, -1, cand), order, 1)
    sel, sel_d, nsel = rng_select(cand, (d * d).astype(np.float32), heads, params.max_replicas,
                                  params.rng_factor, params.closure_eps)
    lost = np.nonzero(nsel == 0)[0]
    if len(lost):  # the approximate head search found nothing: fall back to an exact scan, never drop a vector
        live = np.nonzero(~excluded)[0] if excluded is not None else np.arange(len(heads))
        flat = faiss.IndexFlatL2(heads.shape[1])
        flat.add(np.ascontiguousarray(heads[live], dtype=np.float32))
        fd, fi = flat.search(np.ascontiguousarray(x[lost]), 1)
        sel[lost, 0], sel_d[lost, 0], nsel[lost] = live[fi[:, 0]], fd[:, 0], 1
    return sel, sel_d, nsel


def over_fetch(wanted: int, retired_held: int, size: int) -> int:
    """Candidates to fetch beyond `wanted` so that about `wanted` live ones remain when `retired_held` of the
    index's `size` heads are retired: twice the expected number among them, plus two, at most `wanted`. (A fixed
    `wanted` extra doubled the head search's effort, the maintenance thread's largest cost, issue 13.)"""
    if retired_held <= 0:
        return 0
    return min(wanted, int(np.ceil(2.0 * wanted * retired_held / max(size, 1))) + 2)


def closure_assign(data, n_rows: int, heads: np.ndarray, head_index: HeadIndex, params: BuildParams,
                   progress: Callable[[int], None] | None = None) -> Assignment:
    """Assign rows [0, n_rows) of `data` (head-space, array-like) to postings."""
    vecs, hs, ds = [], [], []
    for s in range(0, n_rows, CHUNK):
        x = np.ascontiguousarray(data[s: s + CHUNK], dtype=np.float32)
        sel, sel_d, _ = select_heads(x, heads, head_index, params)
        ok = sel >= 0
        rows = np.broadcast_to(np.arange(s, s + len(x))[:, None], sel.shape)
        vecs.append(rows[ok]), hs.append(sel[ok]), ds.append(sel_d[ok])
        if progress:
            progress(len(x))
    vec, head, dist = np.concatenate(vecs), np.concatenate(hs), np.concatenate(ds)
    order = np.lexsort((dist, head))  # by head, nearest first
    vec, head, dist = vec[order], head[order], dist[order]
    starts = np.searchsorted(head, np.arange(len(heads) + 1)).astype(np.int64)
    cap = auto_cap(len(vec), len(heads), params)
    replicas = np.bincount(vec, minlength=n_rows).astype(np.int32)
    keep = cap_postings(vec, starts, replicas, cap)
    vec, head, dist = vec[keep], head[keep], dist[keep]
    starts = np.searchsorted(head, np.arange(len(heads) + 1)).astype(np.int64)
    over = int((np.diff(starts) > cap).sum())
    return Assignment(vec, dist, starts, cap, over)


def auto_cap(n_records: int, n_heads: int, params: BuildParams) -> int:
    """The posting cap: given, or (resolved params) the online split limit, so that a bulk-built index is
    already within the limit its first online insert would enforce."""
    return params.posting_cap or params.split_limit or max(64, int(np.ceil(3.0 * n_records / max(n_heads, 1))))
