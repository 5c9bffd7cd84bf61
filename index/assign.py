"""Closure assignment: put each vector into the postings of up to `max_replicas` nearby heads (RNG rule),
then cap posting lengths without ever leaving a vector in zero postings.

A bulk build knows a head near every row already (its nearest head within its clustering leaf). With
`BuildParams.leaf_assign` its candidates are that head's neighbourhood in a graph over the heads, with exact
distances: one head search per head instead of one per row (at 10M rows the per-row search took 265 of the
build's 411 s, the neighbourhoods 78 of 231 s). Fewer rows land inside the closure and recall at a given nprobe
falls by ~0.8 points at 10M, which the build's calibration absorbs (docs/benchmarks.md); on by default. Rows
without such a head (online inserts, the Ray build's partitions) always search the head index."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import faiss
import numpy as np

from index.centroids import HeadIndex
from index.kernels import cap_postings, neighbourhood_candidates, rng_select
from index.types import BuildParams

CHUNK = 32768       # rows per head-index search of the per-row assignment
LEAF_STEP_BYTES = 192 << 20  # what one step of the leaf assignment holds (rows sorted by leaf head within it)
NEIGHBOURHOOD = 2  # a head's neighbourhood holds this many times params.candidates other heads
GRAPH_CHUNK = 16384  # heads per head-index search while the head graph is built


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
    return rng_rule(x, cand, (d * d).astype(np.float32), heads, params, excluded)


def rng_rule(x: np.ndarray, cand: np.ndarray, cand_d: np.ndarray, heads: np.ndarray, params: BuildParams,
             excluded: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The RNG rule over each row's candidates (ascending squared distances); a row left without a head (its
    candidates were all missing) gets its exact nearest live head."""
    sel, sel_d, nsel = rng_select(cand, cand_d, heads, params.max_replicas, params.rng_factor, params.closure_eps)
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


def head_graph(heads: np.ndarray, head_index: HeadIndex, width: int) -> np.ndarray:
    """int32 [H, width + 1]: each head itself, then its `width` nearest other heads by the head index (-1 where
    it found fewer)."""
    n_heads = len(heads)
    width = max(0, min(width, n_heads - 1))
    graph = np.empty((n_heads, width + 1), np.int32)
    graph[:, 0] = np.arange(n_heads)
    for s in range(0, n_heads, GRAPH_CHUNK):
        e = min(n_heads, s + GRAPH_CHUNK)
        _, found = head_index.search(np.ascontiguousarray(heads[s:e]), width + 1, ef_search=max(2 * width, 64))
        others = np.where(found == np.arange(s, e)[:, None], -1, found)  # a head is not its own neighbour
        order = np.argsort(others < 0, axis=1, kind="stable")  # found heads first, in their order
        graph[s:e, 1:] = np.take_along_axis(others, order, 1)[:, :width]
    return graph


def neighbourhood_heads(x: np.ndarray, start: np.ndarray, heads: np.ndarray, graph: np.ndarray,
                        params: BuildParams, threads: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RNG-rule head choice for rows x whose nearby head `start` is known: candidates are the start head's
    neighbourhood (`head_graph`), with exact distances. Returns what select_heads does."""
    n = len(x)
    cand = np.empty((n, min(params.candidates, graph.shape[1])), np.int64)
    cand_d = np.empty(cand.shape, np.float32)

    def run(lo: int, hi: int) -> None:
        neighbourhood_candidates(x[lo:hi], heads, start[lo:hi], graph, cand[lo:hi], cand_d[lo:hi])

    bounds = np.linspace(0, n, max(1, threads) + 1).astype(int)
    if threads <= 1 or n < 2 * threads:
        run(0, n)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(run, bounds[:-1], bounds[1:]))
    return rng_rule(x, cand, cand_d, heads, params)


def closure_assign(data, n_rows: int, heads: np.ndarray, head_index: HeadIndex, params: BuildParams,
                   progress: Callable[[int], None] | None = None, owner: np.ndarray | None = None) -> Assignment:
    """Assign rows [0, n_rows) of `data` (head-space, array-like) to postings. With `owner` (a nearby head of
    each row, -1 for none: `HeadClustering.owner`) and an approximate head index, candidates come from the
    owners' neighbourhoods; an exact (flat) head index is searched, as cheap at its size and exact."""
    neighbourhoods = owner is not None and head_index.kind != "flat"
    graph = head_graph(heads, head_index, NEIGHBOURHOOD * params.candidates) if neighbourhoods else None
    threads = faiss.omp_get_max_threads()
    vecs, hs, ds = [], [], []
    # a step holds its rows twice (as read, sorted), their candidates and their choices twice (sorted, in
    # row order): 1.6 KB a row at dim 128, so 125K rows a step
    per_row = 8 * heads.shape[1] + 12 * params.candidates + 24 * params.max_replicas
    step = CHUNK if graph is None else max(CHUNK, LEAF_STEP_BYTES // per_row)
    for s in range(0, n_rows, step):
        x = np.ascontiguousarray(data[s: s + step], dtype=np.float32)
        if graph is None:
            sel, sel_d, _ = select_heads(x, heads, head_index, params)
        else:
            sel, sel_d = _leaf_select(x, owner[s: s + len(x)], heads, head_index, graph, params, threads)
        ok = sel >= 0
        rows = np.broadcast_to(np.arange(s, s + len(x))[:, None], sel.shape)
        vecs.append(rows[ok]), hs.append(sel[ok]), ds.append(sel_d[ok])
        if progress:
            progress(len(x))
    return assignment_from_records(np.concatenate(vecs), np.concatenate(hs), np.concatenate(ds), n_rows,
                                   len(heads), params)


def _leaf_select(x: np.ndarray, start: np.ndarray, heads: np.ndarray, head_index: HeadIndex, graph: np.ndarray,
                 params: BuildParams, threads: int) -> tuple[np.ndarray, np.ndarray]:
    """(sel, sel_d) of rows x (in their order) from the neighbourhoods of their leaf heads `start`; rows without
    one (-1) search the head index. The rows are visited grouped by leaf head: a leaf's heads are numbered
    together and neighbouring heads share most of their neighbourhoods, so the head rows one row reads are
    still in cache for the next (a 10M build's 200K heads are 100 MB; in row order the kernels waited on memory:
    2.7x slower in steps of 32K rows, 3.5x in steps of 131K, measured on the 10M build's heads)."""
    order = np.argsort(start, kind="stable")
    x, start = x[order], start[order]
    sel = np.empty((len(x), params.max_replicas), np.int64)
    sel_d = np.empty(sel.shape, np.float32)
    known = start >= 0
    if known.all():  # the bulk build: every row has a leaf head (no third copy of the step's rows)
        sel[:], sel_d[:], _ = neighbourhood_heads(x, start, heads, graph, params, threads)
    else:
        sel[known], sel_d[known], _ = neighbourhood_heads(x[known], start[known], heads, graph, params, threads)
        sel[~known], sel_d[~known], _ = select_heads(x[~known], heads, head_index, params)
    unsorted_sel, unsorted_d = np.empty_like(sel), np.empty_like(sel_d)
    unsorted_sel[order], unsorted_d[order] = sel, sel_d
    return unsorted_sel, unsorted_d


def assignment_from_records(vec: np.ndarray, head: np.ndarray, dist: np.ndarray, n_rows: int, n_heads: int,
                            params: BuildParams) -> Assignment:
    """Posting membership from (row, head, distance) records in row order: sorted by head, nearest first (ties
    keep row order), then capped. Shared with the Ray build's merge."""
    order = np.lexsort((dist, head))
    vec, head, dist = vec[order], head[order], dist[order]
    starts = np.searchsorted(head, np.arange(n_heads + 1)).astype(np.int64)
    cap = auto_cap(len(vec), n_heads, params)
    replicas = np.bincount(vec, minlength=n_rows).astype(np.int32)
    keep = cap_postings(vec, starts, replicas, cap)
    vec, head, dist = vec[keep], head[keep], dist[keep]
    starts = np.searchsorted(head, np.arange(n_heads + 1)).astype(np.int64)
    return Assignment(vec, dist, starts, cap, int((np.diff(starts) > cap).sum()))


def auto_cap(n_records: int, n_heads: int, params: BuildParams) -> int:
    """The posting cap: given, or (resolved params) the online split limit, so that a bulk-built index is
    already within the limit its first online insert would enforce."""
    return params.posting_cap or params.split_limit or max(64, int(np.ceil(3.0 * n_records / max(n_heads, 1))))
