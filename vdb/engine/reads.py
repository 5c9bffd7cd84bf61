"""The read path of a collection: search (filtered, cached or not), get, count, and the port the semantic cache
searches through (vdb/cache/backend.py).

A mixin of Collection (collection.py), which holds the state these methods read: the index, the memtable, the id
map and the payload index. Reads take no collection lock: a search reads one memtable snapshot, then the index
(see memtable.py for why that order never misses a row).
"""
from __future__ import annotations

import time

import numpy as np

from index import SearchParams, SearchStats
from index.distance import as_matrix, from_kernel, prepare_base
from index.kernels import merge_candidates
from index.rowstate import is_live
from vdb.api import Record
from vdb.engine import textsearch
from vdb.engine.explain import Explain
from vdb.engine.memtable import search_exact
from vdb.engine.validate import check_ids
from vdb.errors import InvalidArgumentError, ResourceExhaustedError
from vdb.query.filters import compile_filter
from vdb.query.payloads import PayloadIndex

MAX_SEARCH_RETRIES = 3  # searches a relocation may overlap before one runs under the index lock, which it waits for


class ReadPath:
    # -- reads ------------------------------------------------------------------------------------------
    def search(self, queries, k: int = 10, *, filter=None, nprobe=None, eps=None, rerank_k=None,
               use_cache: bool = True, explain: Explain | None = None):
        """Returns (ext ids int64 [nq, k], distances float32 [nq, k]), padded with -1 / inf."""
        self._check_usable()
        q = as_matrix(queries, self.dim, name="queries")
        if len(q) > self.settings["max_batch"]:
            raise ResourceExhaustedError(f"{len(q)} queries exceed max_batch={self.settings['max_batch']}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= self.settings["max_top_k"]:
            raise InvalidArgumentError(f"top_k must be an integer in [1, {self.settings['max_top_k']}], got {k!r}")
        k = int(k)
        qs = prepare_base(q, self.metric)
        knobs = {n: v for n, v in (("nprobe", nprobe), ("eps", eps), ("rerank_k", rerank_k)) if v is not None}
        # nprobe 0 is the index's calibrated choice: made concrete here, before the cache and filters widen it
        p = SearchParams(**knobs).resolved(k)
        p = p.with_nprobe(self.index.default_nprobe(p.target_recall))
        ex = explain if explain is not None else Explain()
        node = compile_filter(filter) if filter is not None else None
        # A read epoch from the first row state read to the last vector read: the blocks of rows deleted
        # meanwhile are not reclaimed under this search (index/epochs.py)
        with self.index.epochs.reading():
            if use_cache and self.cache is not None:  # a hit reads the memtable and the row states too
                return self.unmoved(lambda: self.cache.search(self, qs, k, p, ex, node, filter))
            rows, d = self.search_rows(qs, k, p, node, ex)
            return self.to_ext(rows, d)

    def search_rows(self, qs: np.ndarray, k: int, p: SearchParams, node=None, ex: Explain | None = None):
        """Uncached search with prepared queries; (rows, kernel distances) [nq, k]."""
        with self.index.epochs.reading():  # the cache and hybrid search call this directly
            ex = ex if ex is not None else Explain()
            return self.unmoved(lambda: self._search_rows(qs, k, p, node, ex))

    def unmoved(self, read):
        """read(), as if no relocation overlapped it. A relocation (relocation.py) adds a row to the memtable
        and the text index and then kills its old one: a read that took its memtable snapshot (or row states)
        before and read the old row's state after would see neither. Such a read, rare as relocations are (one
        per maintenance step at most), runs again; after MAX_SEARCH_RETRIES under the index lock, which
        relocations apply under. A repeated cached search counts its lookup (and may admit its query) twice."""
        for _ in range(MAX_SEARCH_RETRIES):
            moves = self._moves
            if moves % 2 == 0:
                out = read()
                if self._moves == moves:
                    return out
            time.sleep(0)  # a relocation is being applied: let it finish
        with self.index.lock:
            return read()

    def _search_rows(self, qs: np.ndarray, k: int, p: SearchParams, node, ex: Explain):
        mem = self.memtable.snapshot()  # before the index: see memtable.py
        idx = self.index
        state = idx.state
        allow = None
        if node is not None:
            mask = self._filter_mask(node, len(state)) & is_live(state)
            ex.filter_matches = int(mask.sum())
            if ex.filter_matches <= self.settings["exact_filter_rows"]:
                ex.path = "exact-filter"
                return self._exact(qs, k, np.nonzero(mask)[0])
            allow = mask.astype(np.uint8)
            widen = int(np.ceil(max(1.0, self.live / max(ex.filter_matches, 1))))
            p = p.replace(nprobe=min(p.nprobe * widen, p.nprobe * 8), eps=p.eps * widen,
                          rerank_k=p.rerank_k * min(widen, 4), ef_search=p.ef_search * min(widen, 8))
        st = SearchStats()
        if idx.bootstrapped:
            ann_rows, ann_d = idx.search_rows(qs, k, p, allow=allow, stats=st)
        else:
            ann_rows, ann_d = np.full((len(qs), 0), -1, np.int64), np.full((len(qs), 0), np.inf, np.float32)
            ex.path = "memtable-only"
        # the unindexed rows of the heads probed (and of heads retired by now: read after the probe)
        retired = idx.retired_postings() if st.probe is not None else None
        mem_rows, mem_d = search_exact(mem, qs, k, self.metric, state, allow, st.probe, retired,
                                       self.settings["memtable_scan_all_rows"])
        rows, d = merge_candidates(ann_rows, ann_d, mem_rows, mem_d, k)
        ex.postings_probed += st.postings_probed
        ex.records_scanned += st.records_scanned
        ex.bytes_read += st.bytes_read
        ex.memtable_rows = len(mem)
        if allow is not None:  # a too-selective filter may leave the ANN short: finish exactly
            short = ((rows >= 0).sum(1) < min(k, ex.filter_matches))
            if short.any():
                ex.path = "exact-fallback"
                er, ed = self._exact(qs[short], k, np.nonzero(allow)[0])
                rows[short], d[short] = er, ed
        return rows, d

    def _exact(self, qs: np.ndarray, k: int, rows: np.ndarray):
        return self.index.exact_rows(qs, k, rows)

    def _filter_mask(self, node, n_rows: int) -> np.ndarray:
        if self._pindex is None:
            self._build_payload_index()
        view = self._pindex.view(n_rows)
        mask = node.mask(view)
        if view.n_rows < n_rows:  # rows a write is adding right now, whose payloads it has not recorded yet: no
            # filter may take them (as payload-less rows, a $ne or $not would)
            mask = np.concatenate([mask, np.zeros(n_rows - view.n_rows, bool)])
        return mask

    def _build_payload_index(self) -> None:
        """First filtered search: index every live payload (LMDB, then the newer overlay)."""
        with self.index.lock:
            pi = PayloadIndex(self.index.n_rows)
            items = self.idmap.live_payload_rows()
            pi.set_rows([r for r, _ in items], [p for _, p in items], self.index.n_rows)
            self._pindex = pi

    # -- the port the semantic cache searches through (vdb/cache/backend.py) ------------------------------
    def unindexed(self):
        return self.memtable.snapshot()

    def row_state(self) -> np.ndarray:
        return self.index.state

    def filter_allow(self, node, state: np.ndarray) -> np.ndarray:
        return (self._filter_mask(node, len(state)) & is_live(state)).astype(np.uint8)

    def merge_unindexed(self, view, q: np.ndarray, k: int, state: np.ndarray, allow, rows: np.ndarray,
                        dists: np.ndarray):
        mem_rows, mem_d = search_exact(view, q, k, self.metric, state, allow)
        return merge_candidates(rows, dists, mem_rows, mem_d, k)

    def vectors_of(self, rows: np.ndarray) -> np.ndarray:
        return self.index.vectors_of(rows)

    def head_vectors(self) -> np.ndarray | None:
        return self.index.head_vectors() if self.index.bootstrapped else None

    def max_vector_norm(self) -> float:
        return self.index.max_vector_norm() if self.index.n_rows else 0.0

    def to_ext(self, rows: np.ndarray, d: np.ndarray):
        int2ext = self.index.int2ext
        if len(int2ext) == 0:  # a collection with no rows yet: every answer slot is empty
            return np.full(rows.shape, -1, np.int64), np.full(rows.shape, np.inf, np.float32)
        ext = int2ext.of_answers(rows)
        d = from_kernel(np.where(ext >= 0, d, np.inf).astype(np.float32), self.metric)
        return ext, d

    def hybrid_search(self, text, vectors, k: int, **options):
        """Text (BM25), vectors, or both fused; see vdb/engine/textsearch.py. (ext ids, distances) [nq, k]."""
        self._check_usable()
        return textsearch.hybrid_search(self, text, vectors, k, **options)

    def get(self, ids) -> list[Record]:
        self._check_usable()
        ids = check_ids(ids, self.settings["max_batch"], unique=False)
        with self.index.epochs.reading():  # a row deleted after the lookup keeps its bytes until the read
            with self.index.lock:  # payloads too: an upsert and a checkpoint between would pair another version
                rows = self.rows_of(ids)
                found = rows >= 0
                payloads = self.idmap.payloads_of(ids[found])
            vecs = self.index.vectors_of(rows[found])
        return [Record(int(e), v, p) for e, v, p in zip(ids[found].tolist(), vecs, payloads)]

    def count(self) -> int:
        self._check_usable()
        return self.live
