"""A collection: WAL + mutable SPANN index + LMDB metadata + memtable, behind one small API.

Write path: validate -> WAL append (durable under the collection's policy) -> apply to memory in LSN order ->
acknowledge. Applying puts the vectors in the vector file and the memtable, so a search right after the
acknowledgement sees them (read-your-writes); the maintenance thread later moves them into postings.

The id map and payloads changed since the last checkpoint live in front of LMDB (idmap.py); a
checkpoint writes them, the index arrays and the LSN it covers in one LMDB transaction, after which the WAL
below that LSN may be purged. Recovery loads the checkpoint and replays the WAL after it through the same
apply code, so a process killed at any moment reopens to exactly its acknowledged writes.

Mixins of this class: the read path (search, get, count, the cache's port) in reads.py, relocation.py,
report.py (stats).
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np

from index.distance import as_matrix, prepare_base
from index.mutable import MutableSpannIndex
from index.rowstate import is_live
from storage.errors import is_disk_full
from storage.wal import LsnMismatchError, WriteAheadLog
from storage.wal.format import CONSUMERS_FILE, MAX_PAYLOAD as WAL_RECORD_LIMIT
from vdb.cache import SemanticCache
from vdb.engine import walcodec
from vdb.engine.idmap import IdMap
from vdb.engine import textsearch
from vdb.engine.maintenance import Maintainer
from vdb.engine.memtable import Memtable
from vdb.engine.reads import ReadPath
from vdb.engine.relocation import Relocation
from vdb.engine.report import Reporting
from vdb.engine.validate import check_ids, check_payloads, check_record_size
from vdb.errors import DataLossError, DeadlineExceededError, InvalidArgumentError, ResourceExhaustedError, \
    UnavailableError, translate
from vdb.query.payloads import PayloadIndex

log = logging.getLogger(__name__)
CONSUMER = "index"


class Collection(ReadPath, Relocation, Reporting):
    def __init__(self, name: str, index: MutableSpannIndex, settings: dict):
        self.name, self.index, self.settings = name, index, dict(settings)
        self.path: Path = index.path
        self.dim, self.metric = index.dim, index.metric
        self.memtable = Memtable()
        self.idmap = IdMap(index)
        self._pindex: PayloadIndex | None = None
        self._seq = threading.Condition()
        self._space = threading.Lock()  # guards _inflight_rows
        self._inflight_rows = 0         # rows of writes between their reservation and their apply
        self._throttle = threading.Condition()
        self._failed: BaseException | None = None
        self._closed = False
        self.changed_rows = 0                         # rows deleted or replaced since opening (only grows)
        self._moves = 0                               # relocations applied, x2 (odd while one is applied; reads.py)
        self.rows_relocated = 0                       # rows moved by them since opening (relocation.py)
        self.on_logged = None                         # replication (vdb/cluster): fn(lsn, rtype, data) per record
        self.applied_lsn = int(index.manifest.get("checkpoint_lsn", 0))
        self.checkpoint_lsn = self.applied_lsn
        self.live = int(is_live(index.state).sum())  # from the checksummed state array, not a manifest number
        self.wal = WriteAheadLog(self.path / "wal", durability=settings["durability"],
                                 batch_delay_ms=settings["batch_delay_ms"],
                                 segment_bytes=int(settings["wal_segment_mb"]) << 20,
                                 repair=bool(settings.get("wal_repair", False)), covered_lsn=self.checkpoint_lsn)
        applied = self.wal.register_consumer(CONSUMER)
        self.text = textsearch.open_text_index(self.path, settings)  # text index: vdb/engine/textsearch.py
        try:
            self._check_log(applied)
            self._recover()
        except BaseException:
            self.wal.close()
            raise
        if settings.get("memory_budget_mb", 0) > 0:  # committed postings and rows read from disk, within it
            index.serve_from_disk(float(settings["memory_budget_mb"]))
        self.cache = SemanticCache.for_backend(self, settings) if settings.get("cache_mb", 0) > 0 else None
        self.maintainer = Maintainer(self)
        self.maintainer.start()

    # -- recovery ---------------------------------------------------------------------------------------
    def _check_log(self, applied: int) -> None:
        """The log must hold every record after the checkpoint, and its consumer mark (what the log may purge)
        must not claim more than the checkpoint covers: either one failing means a damaged consumers file or a
        metadata store older than its log (restored from a copy), and guessing would lose acknowledged writes."""
        meta, marks, first = self.path / "meta" / "data.mdb", self.path / "wal" / CONSUMERS_FILE, \
            self.wal.stats()["first_lsn"]
        if self.wal.last_lsn < self.checkpoint_lsn:
            raise DataLossError(f"{self.path}: the WAL ends at LSN {self.wal.last_lsn} but the checkpoint covers "
                                f"{self.checkpoint_lsn}; WAL files were removed or replaced")
        if first > self.checkpoint_lsn + 1:
            raise DataLossError(f"{self.path / 'wal'}: the log starts at LSN {first} but the checkpoint in {meta} "
                                f"covers only LSN {self.checkpoint_lsn}: records {self.checkpoint_lsn + 1}.."
                                f"{first - 1} were purged (is the metadata store older than its log?)")
        if applied <= self.checkpoint_lsn:
            return
        if not self.settings.get("wal_repair", False):
            raise DataLossError(f"{marks}: the index is marked as having applied LSN {applied}, but the checkpoint "
                                f"in {meta} covers only LSN {self.checkpoint_lsn}: one of the two is damaged or was "
                                f"restored from an older copy (`vdbctl repair` sets the mark back when the log "
                                f"still holds every record after the checkpoint)")
        self.wal.mark_applied(CONSUMER, self.checkpoint_lsn, back=True)

    def _recover(self) -> None:
        pending = self.index.committed_array("pending")
        if pending is not None and len(pending):
            vectors = self.index.vectors_of(pending)
            self.memtable.add(pending.astype(np.int64), vectors, self.index.home_heads(vectors))
        textsearch.recover(self.text, self.index)  # text index: up to the checkpoint, before the replay
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
        data = walcodec.encode_upsert(ids, x, payloads)
        check_record_size(len(data), WAL_RECORD_LIMIT)
        self._wait_for_room(timeout)
        # filed under their heads before the log's lock and the apply order: the head search runs in parallel
        heads = self.index.home_heads(x)
        return self._log_and_apply(walcodec.UPSERT, data, walcodec.Upsert(ids, x, payloads, heads),
                                   new_rows=len(ids))

    def delete(self, ids) -> int:
        self._check_usable()
        ids = check_ids(ids, self.settings["max_batch"])
        return self._log_and_apply(walcodec.DELETE, walcodec.encode_delete(ids), walcodec.Delete(ids))

    def _log_and_apply(self, rtype: int, data: bytes, op, *, new_rows: int = 0) -> int:
        """Log, then apply in LSN order. Everything that can fail for space is reserved before the append, so a
        full disk refuses the write before it is logged; anything else failing after the append marks the
        collection failed (the database reopens it from its files, which replays the logged write)."""
        return self._log_and_apply_many([(rtype, data, op)], new_rows=new_rows)

    def apply_replicated(self, records: list[tuple[int, int, bytes]]) -> int:
        """Log (one durable step) and apply a primary's records (lsn, type, bytes; consecutive) at its LSNs
        (vdb/cluster): the WAL refuses another next LSN, so a replica's log stays a copy. Returns the LSN applied."""
        self._check_usable()
        items = [(rtype, data, walcodec.decode(rtype, data)) for _, rtype, data in records]
        new_rows = sum(len(op.ids) for _, _, op in items if isinstance(op, (walcodec.Upsert, walcodec.Relocate)))
        return self._log_and_apply_many(items, new_rows=new_rows, first_lsn=records[0][0])

    def _log_and_apply_many(self, items: list, *, new_rows: int = 0, first_lsn: int | None = None) -> int:
        with self._space:
            self._inflight_rows += new_rows
        try:
            try:
                self.index.reserve_rows(self._inflight_rows)
                lsns = self.wal.append_many([(rtype, data) for rtype, data, _ in items], first_lsn=first_lsn)
            except LsnMismatchError:
                raise  # nothing was appended: the replica's caller sent records from the wrong place
            except Exception as e:
                if is_disk_full(e):
                    raise ResourceExhaustedError(f"collection {self.name!r}: the disk is full, so the write was not "
                                                 f"logged (nothing changed); free space and retry") from None
                self._fail(e, "writing the WAL")
                raise UnavailableError(f"collection {self.name!r}: the write-ahead log failed ({e}); the write "
                                       f"may have been logged; the collection reopens from its files on the next "
                                       f"call, and retrying is safe (upserts and deletes are idempotent)") from e
            for lsn, (rtype, data, op) in zip(lsns, items):
                self._apply_in_order(lsn, rtype, data, op)
            return lsns[-1]
        finally:
            with self._space:
                self._inflight_rows -= new_rows

    def _apply_in_order(self, lsn: int, rtype: int, data: bytes, op) -> None:
        with self._seq:  # apply in LSN order, exactly the order recovery will replay
            while self.applied_lsn != lsn - 1 and self.failed is None:
                self._seq.wait(1.0)
            if self.failed is not None:
                raise UnavailableError(f"collection {self.name!r} failed before this write was applied; the "
                                       f"write is logged (LSN {lsn}) and is applied as the collection reopens")
            try:
                self._apply(op)
            except Exception as e:
                self._fail(e, f"applying LSN {lsn}")
                raise UnavailableError(f"collection {self.name!r}: applying the logged write (LSN {lsn}) "
                                       f"failed; it is applied again as the collection reopens") from e
            finally:
                if self.failed is None:
                    self.applied_lsn = lsn
                self._seq.notify_all()
            if self.on_logged is not None:  # still under _seq: listeners see every record in LSN order
                self.on_logged(lsn, rtype, data)

    def _fail(self, exc: BaseException, doing: str) -> None:
        if self._failed is None:
            self._failed = exc
            log.error("collection %s: %s failed (%r); it is reopened from its files on the next call", self.name,
                      doing, exc, exc_info=exc)
        with self._seq:
            self._seq.notify_all()

    def _apply(self, op) -> None:
        if isinstance(op, walcodec.Relocate):
            return self._apply_relocate(op)
        idx = self.index
        with idx.lock:
            old = self.rows_of(op.ids)
            had = old >= 0
            if isinstance(op, walcodec.Delete) and not had.all():
                self.idmap.confirm_absent(op.ids[~had], idx.state)
            if had.any():
                idx.delete_rows(old[had])
            n_old = int(had.sum())
            self.changed_rows += n_old
            if isinstance(op, walcodec.Upsert):
                payloads = op.payloads or [None] * len(op.ids)
                # a replayed or replicated record has no heads yet: the search for them is derived, not logged
                heads = op.heads if op.heads is not None else idx.home_heads(op.vectors)
                rows = self._add_live_rows(op.ids, op.vectors, heads, payloads, old[had])
                self.idmap.upserted(op.ids, rows, payloads, had)
                self.live += len(rows) - n_old
            else:
                gone = op.ids[had].tolist()
                self.idmap.deleted(gone)
                self.live -= n_old
                self.text.applied(None, None, old[had], idx.n_rows)  # text index

    def _add_live_rows(self, ids, vectors, heads, payloads, dead_rows: np.ndarray) -> np.ndarray:
        """New live rows of `ids` (an upsert's, or a relocation's) in the vector file and the memtable, and in
        the payload and text indexes (`dead_rows`: the rows they replace, for the text index). Under idx.lock;
        returns the rows. The one place that knows every structure a new row enters."""
        idx = self.index
        rows = idx.add_rows(vectors, ids)
        self.memtable.add(rows, vectors, heads)
        if self._pindex is not None:
            self._pindex.set_rows(rows, payloads, idx.n_rows)
        self.text.applied(rows, payloads, dead_rows, idx.n_rows)  # text index
        return rows

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Row of each external id, -1 if absent."""
        return self.idmap.rows_of(ids)

    def recorded_rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Row of each external id as the id map records it (check: IdMap.recorded_rows_of)."""
        return self.idmap.recorded_rows_of(ids)

    def meta_ids(self):
        """Every (external id, row) the id map holds now: LMDB overlaid with the changes since the checkpoint."""
        return self.idmap.live_items()

    def orphaned_payloads(self) -> list[int]:
        """Ids whose committed payload has no live id (what check reports and repair deletes)."""
        return self.idmap.orphaned_payloads()

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

    # -- checkpoints and lifecycle ---------------------------------------------------------------------
    def checkpoint(self) -> int:
        """Persist everything applied so far; then let the WAL drop what it covers. Returns the LSN covered."""
        idx = self.index
        with idx.maint_lock:
            with self._seq, idx.lock:  # _seq: no apply is between its effects and its applied_lsn
                fields, arrays = idx.snapshot()
                lsn = self.applied_lsn
                arrays["pending"] = self.memtable.rows()
                ids, payloads = self.idmap.changes()
                live = self.live
            if lsn == self.checkpoint_lsn and not ids and not payloads and not self._index_changed(fields):
                return lsn
            self.wal.sync()  # batch/none policies: the WAL must reach at least the LSN the checkpoint claims
            self.text.checkpoint()  # text index: commit what was applied (derived data: never blocks the rest)
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
        self.wal.roll_if_covered(lsn)  # an idle log's active segment is covered too: seal it so purge frees it
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

    def repair(self) -> dict:
        """Operator repair of what can be rebuilt from the full-precision rows (damaged postings), then a
        checkpoint; see vdb/engine/repair.py."""
        self._check_usable()
        done = self.index.repair_postings(self.memtable.rows())
        with self.index.lock:
            orphans = self.idmap.drop_orphaned_payloads()
        if orphans:
            log.warning("collection %s: deleted %d payloads that belonged to no live id (first: %s)", self.name,
                        len(orphans), orphans[:5])
        done["orphaned_payloads_deleted"] = len(orphans)
        done.update(textsearch.repair(self))  # text index: rebuilt from the payloads when its files are damaged
        self.flush()
        return done

    def flush(self, timeout: float = 300.0) -> int:
        """Wait until every acknowledged write is in postings (if the index has heads) and checkpointed."""
        self._check_usable()
        self.maintainer.drain(timeout)
        return self.checkpoint()

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
            raise UnavailableError(f"collection {self.name!r} failed ({self._failed!r}); it is reopened from its "
                                   f"files (replaying its WAL) on the next call")

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
            try:
                self.text.close(commit=checkpoint and self._failed is None)  # text index
            finally:
                try:
                    self.wal.close()  # raises if the log failed earlier: the index must be released all the same
                finally:
                    self.index.close()


