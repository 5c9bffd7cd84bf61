"""A collection: WAL + mutable SPANN index + LMDB metadata + memtable, behind one small API.

Write path: validate -> WAL append (durable under the collection's policy) -> apply to memory in LSN order ->
acknowledge. Applying puts the vectors in the vector file and the memtable, so a search right after the
acknowledgement sees them (read-your-writes); the maintenance thread later moves them into postings.

The id map and payloads changed since the last checkpoint live in front of LMDB (idmap.py); a
checkpoint writes them, the index arrays and the LSN it covers in one LMDB transaction, after which the WAL
below that LSN may be purged. Recovery loads the checkpoint and replays the WAL after it through the same
apply code, so a process killed at any moment reopens to exactly its acknowledged writes.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np

from index import SearchParams, SearchStats
from index.kernels import merge_candidates
from index.distance import as_matrix, from_kernel, prepare_base
from index.mutable import MutableSpannIndex
from index.rowstate import is_live
from storage.wal import WriteAheadLog
from vdb.engine import walcodec
from vdb.errors import (DataLossError, DeadlineExceededError, InvalidArgumentError, ResourceExhaustedError,
                        UnavailableError, translate)
from vdb.query.filters import compile_filter
from vdb.cache import SemanticCache
from vdb.engine.maintenance import Maintainer
from vdb.engine.memtable import Memtable, search_exact
from vdb.query.payloads import PayloadIndex
from vdb.engine.explain import Explain
from vdb.engine.idmap import IdMap
from vdb.api import Record
from vdb.engine.validate import check_ids, check_payloads

log = logging.getLogger(__name__)
CONSUMER = "index"


class Collection:
    def __init__(self, name: str, index: MutableSpannIndex, settings: dict):
        self.name, self.index, self.settings = name, index, dict(settings)
        self.path: Path = index.path
        self.dim, self.metric = index.dim, index.metric
        self.memtable = Memtable()
        self.idmap = IdMap(index)
        self._pindex: PayloadIndex | None = None
        self._seq = threading.Condition()
        self._throttle = threading.Condition()
        self._failed: BaseException | None = None
        self._closed = False
        self.changed_rows = 0                         # rows deleted or replaced since opening (only grows)
        self.applied_lsn = int(index.manifest.get("checkpoint_lsn", 0))
        self.checkpoint_lsn = self.applied_lsn
        self.live = int(index.manifest.get("live", int(is_live(index.state).sum())))
        self.wal = WriteAheadLog(self.path / "wal", durability=settings["durability"],
                                 batch_delay_ms=settings["batch_delay_ms"],
                                 segment_bytes=int(settings["wal_segment_mb"]) << 20,
                                 repair=bool(settings.get("wal_repair", False)))
        self.wal.register_consumer(CONSUMER)
        self._recover()
        self.cache = SemanticCache.for_backend(self, settings) if settings.get("cache_mb", 0) > 0 else None
        self.maintainer = Maintainer(self)
        self.maintainer.start()

    # -- recovery ---------------------------------------------------------------------------------------
    def _recover(self) -> None:
        pending = self.index.committed_array("pending")
        if pending is not None and len(pending):
            self.memtable.add(pending.astype(np.int64), self.index.vectors_of(pending))
        if self.wal.last_lsn < self.checkpoint_lsn:
            raise DataLossError(f"{self.path}: the WAL ends at LSN {self.wal.last_lsn} but the checkpoint covers "
                                f"{self.checkpoint_lsn}; WAL files were removed or replaced")
        replayed = 0
        for rec in self.wal.replay(self.checkpoint_lsn):
            self._apply(walcodec.decode(rec.rtype, rec.payload))
            self.applied_lsn = rec.lsn
            replayed += 1
        if replayed:
            log.info("collection %s: replayed %d WAL records after checkpoint LSN %d (now at %d)", self.name,
                     replayed, self.checkpoint_lsn, self.applied_lsn)

    # -- writes -----------------------------------------------------------------------------------------
    def upsert(self, ids, vectors, payloads=None, *, timeout: float | None = None) -> int:
        self._check_usable()
        ids = check_ids(ids, self.settings["max_batch"])
        x = prepare_base(as_matrix(vectors, self.dim), self.metric)
        if len(x) != len(ids):
            raise InvalidArgumentError(f"{len(ids)} ids but {len(x)} vectors")
        payloads = check_payloads(payloads, len(ids))
        self._wait_for_room(timeout)
        return self._log_and_apply(walcodec.UPSERT, walcodec.encode_upsert(ids, x, payloads),
                                   walcodec.Upsert(ids, x, payloads))

    def delete(self, ids) -> int:
        self._check_usable()
        ids = check_ids(ids, self.settings["max_batch"])
        return self._log_and_apply(walcodec.DELETE, walcodec.encode_delete(ids), walcodec.Delete(ids))

    def _log_and_apply(self, rtype: int, data: bytes, op) -> int:
        lsn = self.wal.append(rtype, data)
        with self._seq:  # apply in LSN order, exactly the order recovery will replay
            while self.applied_lsn != lsn - 1 and self.failed is None:
                self._seq.wait(1.0)
            try:
                self._check_usable()
                self._apply(op)
            except BaseException as e:
                self._failed = self._failed or e
                log.exception("collection %s: applying LSN %d failed; the collection must be reopened",
                              self.name, lsn)
                raise
            finally:
                self.applied_lsn = lsn
                self._seq.notify_all()
        return lsn

    def _apply(self, op) -> None:
        idx = self.index
        with idx.lock:
            old = self.rows_of(op.ids)
            had = old >= 0
            if had.any():
                idx.delete_rows(old[had])
            n_old = int(had.sum())
            self.changed_rows += n_old
            if isinstance(op, walcodec.Upsert):
                rows = idx.add_rows(op.vectors, op.ids)
                payloads = op.payloads or [None] * len(rows)
                self.idmap.upserted(op.ids, rows, payloads)
                self.memtable.add(rows, op.vectors)
                self.live += len(rows) - n_old
                if self._pindex is not None:
                    self._pindex.set_rows(rows, payloads, idx.n_rows)
            else:
                gone = op.ids[had].tolist()
                self.idmap.deleted(gone)
                self.live -= n_old

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Row of each external id, -1 if absent."""
        return self.idmap.rows_of(ids)

    def meta_ids(self):
        """Every (external id, row) the id map holds now: LMDB overlaid with the changes since the checkpoint."""
        return self.idmap.live_items()

    def _wait_for_room(self, timeout: float | None = None) -> None:
        """Throttle writers while maintenance is behind, instead of failing them or growing RAM forever."""
        limit = self.settings["max_pending_rows"]
        if len(self.memtable) <= limit:
            return
        wait = self.settings["write_timeout_s"]
        caller_deadline = timeout is not None and timeout < wait
        deadline = time.monotonic() + (timeout if caller_deadline else wait)
        self.maintainer.wake()
        with self._throttle:
            while len(self.memtable) > limit:
                self._check_usable()
                left = deadline - time.monotonic()
                if left <= 0:
                    if caller_deadline:
                        raise DeadlineExceededError(f"collection {self.name!r}: the deadline passed while the "
                                                    f"write waited for indexing to catch up")
                    raise ResourceExhaustedError(f"collection {self.name!r}: {len(self.memtable)} writes wait "
                                                 f"for indexing (max_pending_rows={limit}); retry later")
                self._throttle.wait(min(left, 0.2))

    def room_available(self) -> None:
        with self._throttle:
            self._throttle.notify_all()

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
        if use_cache and self.cache is not None:
            return self.cache.search(self, qs, k, p, ex, node, filter)
        rows, d = self.search_rows(qs, k, p, node, ex)
        return self.to_ext(rows, d)

    def search_rows(self, qs: np.ndarray, k: int, p: SearchParams, node=None, ex: Explain | None = None):
        """Uncached search with prepared queries; (rows, kernel distances) [nq, k]."""
        ex = ex if ex is not None else Explain()
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
        mem_rows, mem_d = search_exact(mem, qs, k, self.metric, state, allow)
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
        pi = self._pindex
        if pi.n_rows < n_rows:
            pi.set_rows([], [], n_rows)
        return node.mask(pi)[:n_rows]

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
        ext = np.where(rows >= 0, self.index.int2ext[np.maximum(rows, 0)], -1)
        d = from_kernel(np.where(ext >= 0, d, np.inf).astype(np.float32), self.metric)
        return ext, d

    def get(self, ids) -> list[Record]:
        self._check_usable()
        ids = check_ids(ids, self.settings["max_batch"], unique=False)
        with self.index.lock:
            rows = self.rows_of(ids)
            found = rows >= 0
            overlay = self.idmap.overlay_payloads(ids[found].tolist())
        vecs = self.index.vectors_of(rows[found])
        payloads = self.idmap.payloads_of(ids[found], overlay)
        return [Record(int(e), v, p) for e, v, p in zip(ids[found].tolist(), vecs, payloads)]

    def count(self) -> int:
        self._check_usable()
        return self.live

    # -- checkpoints and lifecycle ---------------------------------------------------------------------
    def checkpoint(self) -> int:
        """Persist everything applied so far; then let the WAL drop what it covers. Returns the LSN covered."""
        idx = self.index
        with idx.maint_lock:
            with idx.lock:
                fields, arrays = idx.snapshot()
                lsn = self.applied_lsn
                arrays["pending"] = self.memtable.rows()
                ids, payloads = self.idmap.changes()
                live = self.live
            if lsn == self.checkpoint_lsn and not ids and not payloads and not self._index_changed(fields):
                return lsn
            self.wal.sync()  # batch/none policies: the WAL must reach at least the LSN the checkpoint claims
            puts = [(e, r) for e, r in ids.items() if r >= 0]
            manifest = {**idx.manifest, **fields, "checkpoint_lsn": lsn, "live": live}
            idx.commit(manifest, arrays,
                             id_puts=(np.array([e for e, _ in puts], np.int64), np.array([r for _, r in puts])),
                             id_deletes=np.array([e for e, r in ids.items() if r < 0], np.int64),
                             payload_puts=(np.array(list(payloads), np.int64), list(payloads.values())))
            with idx.lock:  # drop what is now in LMDB, unless it changed meanwhile
                self.idmap.committed(ids, payloads)
            self.checkpoint_lsn = lsn
            self.maintainer.checkpointed()
        self.wal.mark_applied(CONSUMER, lsn)
        self.wal.purge()
        return lsn

    def _index_changed(self, fields: dict) -> bool:
        m = self.index.manifest
        return fields["n_rows"] != m.get("n_rows") or fields["n_heads"] != m.get("n_heads") or \
            fields["postings_file"] != m.get("postings_file", "postings.dat") or self.maintainer.index_changed

    def maintain(self, *, compact: bool = False) -> bool:
        """Run one maintenance step now (see Maintainer.step); `compact` rewrites the posting file regardless
        of its garbage. Returns whether any work was done."""
        self._check_usable()
        return self.maintainer.step(compact=compact)

    def flush(self, timeout: float = 300.0) -> int:
        """Wait until every acknowledged write is in postings (if the index has heads) and checkpointed."""
        self._check_usable()
        self.maintainer.drain(timeout)
        return self.checkpoint()

    def stats(self) -> dict:
        idx = self.index
        wal = self.wal.stats()
        return {
            "name": self.name, "dim": self.dim, "metric": self.metric.value, "count": self.live,
            "rows": idx.n_rows, "pending_rows": len(self.memtable), "applied_lsn": self.applied_lsn,
            "checkpoint_lsn": self.checkpoint_lsn, "bootstrapped": idx.bootstrapped,
            "wal": wal, "maintenance": {**idx.maintenance_stats(), **self.maintainer.stats()},
            "index": idx.info() if idx.bootstrapped else {}, "settings": dict(self.settings),
            "cache": self.cache.stats() if self.cache is not None else {"enabled": False},
        }

    @property
    def failed(self) -> BaseException | None:
        """The error that made this collection unusable (an apply that failed), or None."""
        return self._failed

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_usable(self) -> None:
        if self._closed:
            raise UnavailableError(f"collection {self.name!r} is closed")
        if self._failed is not None:
            raise UnavailableError(f"collection {self.name!r} failed ({self._failed!r}); reopen the database "
                                   f"to recover it from its WAL")

    def close(self, checkpoint: bool = True) -> None:
        if self._closed:
            return
        self.maintainer.stop()
        try:
            if checkpoint and self._failed is None:
                self.checkpoint()
        except Exception as e:  # closing must release files even if the last checkpoint fails
            log.error("collection %s: final checkpoint failed: %s", self.name, translate(e))
        finally:
            self._closed = True
            self.wal.close()
            self.index.close()


