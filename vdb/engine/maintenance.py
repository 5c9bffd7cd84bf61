"""The background worker of a collection: moves acknowledged vectors from RAM into postings, keeps postings
balanced (splits happen inside the index, sweeps merge and clean), and checkpoints.

One thread per collection. Each unit of work holds the index's maint_lock, which a checkpoint also takes,
so a checkpoint always sees a consistent index (never half a split, never rows both pending and placed).
"""
from __future__ import annotations

import logging
import threading
import time

import numpy as np

from index.rowstate import is_live
from vdb.errors import ResourceExhaustedError, translate

log = logging.getLogger(__name__)
IDLE_WAIT_S = 0.2


class Maintainer:
    def __init__(self, collection):
        self.c = collection
        self._index_changed = False           # since the last checkpoint
        self._changed_rows_at_sweep = 0       # the collection's changed_rows when the last sweep ran
        self._changed_rows_at_relocation = 0  # ... when sparse rows of the vector file were last looked for
        self._relocation_pending = False      # the last look found rows to move
        self._relocation_lock = threading.Lock()  # one look and its move at a time (a step may run on any thread)
        self._sweep_pending = False           # a sweep started and has merges or rewrites left
        self._sweep_deferrals = 0             # steps in a row that left a pending sweep for the backlog
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Condition()
        self._draining = 0
        self._last_checkpoint = time.monotonic()
        self._checkpoint_now = False          # a compaction asks for the next checkpoint at once
        self._wal_bytes_at_checkpoint = 0
        self.steps = self.errors = self.checkpoints = 0
        self.last_compaction: dict = {}       # what the last compaction (postings or vector rows) reclaimed, when
        self.bytes_reclaimed: dict[str, int] = {}  # per kind, since opening
        self.last_error = ""
        self._thread = threading.Thread(target=self._run, name=f"vdb-maint-{collection.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()

    def wake(self) -> None:
        self._wake.set()

    def drain(self, timeout: float) -> None:
        """Block until every pending vector that can be indexed is in postings."""
        deadline = time.monotonic() + timeout
        with self._idle:
            self._draining += 1
            try:
                self._wake.set()
                while not self._caught_up():
                    if self.c.failed is not None or self._stop.is_set():
                        return
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise ResourceExhaustedError(f"flush of {self.c.name!r} timed out with "
                                                     f"{len(self.c.memtable)} vectors still pending")
                    self._idle.wait(min(left, 0.5))
            finally:
                self._draining -= 1

    def _caught_up(self) -> bool:
        c, idx = self.c, self.c.index
        if len(c.memtable) == 0:
            return True
        return not idx.bootstrapped and self._live_pending().size < idx.params.bootstrap_rows

    def _live_pending(self) -> np.ndarray:
        rows = self.c.memtable.rows()
        return rows[is_live(self.c.index.state[rows])]

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.c.failed is not None:
                return
            try:
                worked = self.step()
            except Exception as e:  # keep serving reads and WAL-backed writes; retry after a pause
                self.errors += 1
                self.last_error = str(translate(e))
                log.exception("collection %s: maintenance step failed", self.c.name)
                worked = False
                self._stop.wait(1.0)
            with self._idle:
                self._idle.notify_all()
            if not worked:
                self._wake.wait(IDLE_WAIT_S)
                self._wake.clear()

    def step(self, *, compact: bool = False) -> bool:
        """One unit of work: index a batch of pending rows (or bootstrap the first heads), sweep if enough rows
        changed, compact the posting file if its garbage is due (or `compact`), and checkpoint if one is due.
        Returns whether any index work was done. Safe to call from any thread (it takes maint_lock)."""
        c, idx = self.c, self.c.index
        worked = False
        settings = c.settings
        with idx.maint_lock:
            n_chunks, rows, vecs = c.memtable.oldest(settings["maintenance_batch"])
            if n_chunks:
                if idx.bootstrapped:
                    idx.insert(rows[is_live(idx.state[rows])])
                    self._leave_memtable(n_chunks, vecs)
                    worked = True
                else:
                    mem = c.memtable.snapshot()  # one snapshot: a chunk added meanwhile stays pending
                    live = mem.rows[is_live(idx.state[mem.rows])]
                    if len(live) >= idx.params.bootstrap_rows:
                        idx.bootstrap(live)
                        if c.cache is not None:
                            c.cache.prepare(c)  # heads exist now: bucket the cache by them
                        self._leave_memtable(mem.chunks, mem.vectors)
                        worked = True
            if worked:
                self._index_changed = True
                c.room_available()
            changed = c.changed_rows - self._changed_rows_at_sweep
            if changed > settings["sweep_deleted_fraction"] * max(idx.n_rows, 1) and idx.bootstrapped:
                self._changed_rows_at_sweep = c.changed_rows
                self._sweep_pending = True
            if self._sweep_pending and self._sweep_slice_due(settings):
                self._sweep_pending = idx.sweep(settings["sweep_jobs_per_step"])
                self._index_changed = True
                worked = True
            # a due compaction waits for a pending sweep: it would drop the dead records that tell the sweep
            # which postings deletes shrank, and the sweep's merges add garbage the compaction can take too
            if (compact and idx.bootstrapped) or (not self._sweep_pending and idx.compaction_due(
                    settings["compact_min_mb"] * (1 << 20), settings["compact_garbage_fraction"])):
                freed = idx.compact_postings()  # the next checkpoint commits the new file and deletes the old one
                self._compacted("postings", freed)
                self._index_changed = True
                self._checkpoint_now = True  # until the next checkpoint both posting files are on disk
                worked = True
        self.steps += worked
        if self._checkpoint_due():
            c.checkpoint()
            self.checkpoints += 1
            self._last_checkpoint = time.monotonic()
            self._checkpoint_now = False
            self._wal_bytes_at_checkpoint = c.wal.stats().get("bytes", 0)
        freed = idx.reclaim_rows()  # rows the last checkpoint committed as dead, once no search can read them
        if freed:
            self._compacted("vector rows", freed)
        with self._relocation_lock:  # last: a full disk that refuses it must not stop the checkpoint
            if self._relocation_due(settings):
                worked = self._relocate(settings) or worked
        return worked

    def _relocate(self, settings) -> bool:
        """Move the live rows of sparse vector-file blocks (outside maint_lock: a logged write, see
        vdb/engine/relocation.py). A full disk refusing the record (nothing was logged) is counted and retried
        once more rows have died; any other failure propagates (one after the record was logged has failed the
        collection, which reopens from its files)."""
        rows = self.c.index.sparse_rows(settings["maintenance_batch"], settings["compact_min_mb"] * (1 << 20),
                                        settings["compact_garbage_fraction"])
        self._relocation_pending = False
        if len(rows) == 0:
            return False
        try:
            self.c.relocate(rows)
        except ResourceExhaustedError as e:
            self.errors += 1
            self.last_error = str(translate(e))
            log.warning("collection %s: moving %d rows out of sparse blocks failed: %s", self.c.name, len(rows),
                        self.last_error)
            return False
        self._relocation_pending = True  # look again next step until a look finds nothing
        return True

    def _relocation_due(self, settings) -> bool:
        """Look for sparse blocks of the vector file once another maintenance_batch rows died since the last
        look (or the last look found some), while indexing has caught up and no sweep is pending (moved rows are
        indexed like new writes, and a look costs a pass over the row states)."""
        c = self.c
        if not (settings["relocate_rows"] and c.index.bootstrapped and not self._sweep_pending
                and len(c.memtable) <= settings["maintenance_batch"]
                and (self._relocation_pending
                     or c.changed_rows - self._changed_rows_at_relocation >= settings["maintenance_batch"])):
            return False
        self._changed_rows_at_relocation = c.changed_rows
        return True

    def _sweep_slice_due(self, settings) -> bool:
        """A pending sweep waits while the backlog of unindexed rows is over half of max_pending_rows (writers
        are about to be throttled: indexing them comes first), but never more than sweep_max_deferred_steps
        steps in a row, so dead records are still collected under a writer that never lets up."""
        if (len(self.c.memtable) * 2 > settings["max_pending_rows"]
                and self._sweep_deferrals < settings["sweep_max_deferred_steps"]):
            self._sweep_deferrals += 1
            return False
        self._sweep_deferrals = 0
        return True

    def _compacted(self, what: str, freed: int) -> None:
        self.last_compaction = {"what": what, "bytes_reclaimed": int(freed), "unix_time": round(time.time(), 3)}
        self.bytes_reclaimed[what] = self.bytes_reclaimed.get(what, 0) + int(freed)

    def _leave_memtable(self, n_chunks: int, vectors: np.ndarray) -> None:
        """Rows now in postings leave the memtable; cache entries they could change go first (vdb/cache/)."""
        if self.c.cache is not None:
            self.c.cache.on_indexed(vectors)
        self.c.memtable.drop_front(n_chunks)

    def _checkpoint_due(self) -> bool:
        c = self.c
        if c.applied_lsn == c.checkpoint_lsn and not self._index_changed:
            return False
        if self._draining and len(c.memtable) == 0:
            return False  # flush() checkpoints itself once drained
        if self._checkpoint_now:
            return True
        grown = c.wal.stats().get("bytes", 0) - self._wal_bytes_at_checkpoint
        return (time.monotonic() - self._last_checkpoint > c.settings["checkpoint_interval_s"]
                or grown > c.settings["checkpoint_wal_mb"] << 20)

    @property
    def index_changed(self) -> bool:
        """The index changed (indexing, splits, sweeps) since the last checkpoint."""
        return self._index_changed

    def checkpointed(self) -> None:
        """A checkpoint (run by the collection, under the index's maint_lock) covered every change so far."""
        self._index_changed = False

    def stats(self) -> dict:
        return {"backlog_rows": len(self.c.memtable), "steps": self.steps, "errors": self.errors,
                "last_error": self.last_error, "checkpoints": self.checkpoints,
                "last_compaction": dict(self.last_compaction), "bytes_reclaimed": dict(self.bytes_reclaimed),
                "rows_relocated": self.c.rows_relocated,
                "seconds_since_checkpoint": round(time.monotonic() - self._last_checkpoint, 1)}
