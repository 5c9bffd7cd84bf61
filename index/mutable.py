"""MutableSpannIndex: a SPANN index that takes inserts and deletes without a rebuild (SPFresh's LIRE protocol).

Rows (internal ids) are appended, never reused. Each row has a state byte: the high bit marks it deleted, the
low 7 bits are its version. A posting record counts only if its version equals its row's state, so

  * deleting a row hides every replica at once (the records are removed physically at the next split,
    merge or garbage collection of the posting);
  * reassigning a row writes new copies with version v+1 first and then bumps the state: the old copies
    disappear and the new ones appear in one byte store, so a concurrent search sees exactly one set.

Two threads touch an instance: writers (rows and state, under `lock`) and one maintenance thread (postings,
heads, head index; each unit of work under `maint_lock`, which checkpoints also take so that they never see a
half-done split). Searches take no lock: they read one directory snapshot and the state array.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field

import numpy as np

from index.assign import select_heads
from index.centroids import HeadIndex
from index.clustering import hierarchical_heads
from index.epochs import ReadEpochs
from index.distance import head_space
from index.quantize import Int8Quantizer
from index.rebalance import Rebalancing
from index.rowstate import DELETED, grown, is_live, version_of
from index.ids import RowIds
from index.livedisk import LiveDiskServing
from index.spann import SpannIndex, release_free_memory
from index.types import BuildParams, Metric
from storage import IndexDir
from storage.postings import PostingStore
from storage.crashpoints import crashpoint
from storage.posting_format import FLAG_RETIRED

log = logging.getLogger(__name__)
HOME_EF_SEARCH = 16  # head-index effort when the write path files a row under its nearest head (home_heads)


@dataclass
class MaintenanceStats:
    rows_indexed: int = 0
    splits: int = 0
    merges: int = 0
    reassigned: int = 0
    garbage_collected: int = 0
    records_dropped: int = 0
    bootstraps: int = 0
    head_index_rebuilds: int = 0
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "extra"} | self.extra


class MutableSpannIndex(Rebalancing, LiveDiskServing, SpannIndex):
    def __init__(self, files: IndexDir):
        super().__init__(files)
        self.params = self.build_params.resolved(self.dim)
        self.lock = threading.RLock()
        self.maint_lock = threading.RLock()
        self.stats = MaintenanceStats()
        # The state array is this process's own copy already: rows appended later grow it (and the ids of
        # appended rows); the dense prefix of a build's ids is never materialized (index/ids.py)
        self._state_buf = self.state
        self._dense_rows = self.int2ext.dense_rows
        self._tail_buf = self.int2ext.tail
        self._excluded = self._retired_mask()
        self._pending_file: tuple[str, int] | None = None   # a compacted posting file not yet checkpointed
        self._old_store: PostingStore | None = None         # the store a compaction replaced
        self.epochs = ReadEpochs()                          # readers hold one while they may read a row
        self._reclaimable: tuple[np.ndarray, int] | None = None  # (committed dead rows, epoch) for reclaim_rows
        # (head index, its changes) as the last commit stored it: the one read at open is stored already
        self._committed_head = (self.head_index, 0) if self.head_index is not None else None

    @classmethod
    def open_writable(cls, path: str | os.PathLike, *, verify: str = "lazy") -> "MutableSpannIndex":
        """Open an index directory for writing (exclusive lock); verify as for SpannIndex.open."""
        files = IndexDir.open(path, writable=True, verify=verify)
        try:
            index = cls(files)
        except BaseException:
            files.close()
            raise
        release_free_memory()
        return index

    @classmethod
    def create(cls, path: str | os.PathLike, dim: int, params: BuildParams,
               extra_manifest: dict | None = None) -> "MutableSpannIndex":
        """A new, empty index directory (no heads until `bootstrap_rows` vectors have arrived)."""
        params = params.resolved(dim)
        manifest = {"dim": dim, "metric": Metric.parse(params.metric).value, "build_params": params.to_dict(),
                    **(extra_manifest or {})}
        files = IndexDir.create_empty(path, manifest)
        try:
            return cls(files)
        except BaseException:
            files.close()
            raise

    # -- rows (writers, under self.lock) ---------------------------------------------------------------
    @property
    def n_rows(self) -> int:
        """Rows ever stored (deleted ones included)."""
        return len(self.state)

    def add_rows(self, vectors: np.ndarray, ext_ids: np.ndarray) -> np.ndarray:
        """Append prepared (stored-form) vectors as new live rows; return their row ids. Not yet in postings."""
        with self.lock:
            first = self.files.vectors.append(vectors)
            n = first + len(vectors)
            t_first, t_n = first - self._dense_rows, n - self._dense_rows
            if n > len(self._state_buf):
                self._state_buf = grown(self._state_buf[:first], n)
            if t_n > len(self._tail_buf):
                self._tail_buf = grown(self._tail_buf[:t_first], t_n, fill=-1)
            self._state_buf[first:n] = 0
            self._tail_buf[t_first:t_n] = ext_ids
            self._publish_rows(n)
            return np.arange(first, n, dtype=np.int64)

    def _publish_rows(self, n: int) -> None:
        # the state first: an id map is never longer than the state array it reads the deleted bits from
        self.state = self._state_buf[:n]
        self.int2ext = RowIds(self._dense_rows, self._tail_buf[: n - self._dense_rows], self)

    def reserve_rows(self, extra: int) -> None:
        """Allocate space for `extra` rows beyond the current ones, so appending them cannot fail for space (a
        writer reserves before it logs: a full disk refuses the write cleanly). DiskFullError if full."""
        with self.lock:
            self.files.vectors.reserve(self.n_rows + extra)

    def delete_rows(self, rows: np.ndarray) -> None:
        """Mark rows deleted: every record of theirs stops counting at once."""
        with self.lock:
            self.state[rows] |= DELETED
            appended = rows[rows >= self._dense_rows] - self._dense_rows
            self._tail_buf[appended] = -1  # the stored form says so too (the dense prefix: the state does)

    def home_heads(self, vectors: np.ndarray) -> np.ndarray:
        """Where the engine's memtable files each prepared vector until it is indexed, so that a search scans
        only the unindexed rows of the heads it probes: int64 [n, 2] of (its nearest live head, the first head
        id this choice could not see). -1 heads before the index has any. Any thread: a search also scans the
        rows filed under a head retired since, and those whose query's nearest head is newer than their
        filing (index/kernels/exact.py small_exact_topk), so a vector is found by a query equal to it."""
        out = np.full((len(vectors), 2), -1, np.int64)
        head_index, excluded = self.head_index, self._excluded
        if head_index is None or head_index.size == 0 or len(vectors) == 0:
            return out
        out[:, 1] = head_index.next_id  # read before the search: heads added later have larger ids
        extra = min(int(excluded.sum()), 8)
        _, near = head_index.search(head_space(vectors, self.metric), 1 + extra, HOME_EF_SEARCH)
        unknown = (near < 0) | (near >= len(excluded))  # -1, or a head added after `excluded` was read
        dead = unknown | excluded[np.where(unknown, 0, near)]
        out[:, 0] = np.take_along_axis(near, np.argsort(dead, axis=1, kind="stable")[:, :1], 1)[:, 0]
        return out

    def truncate_rows(self, n: int) -> None:
        """Recovery: forget rows >= n (written after the checkpoint; the WAL replay writes them again)."""
        with self.lock:
            self.files.vectors.set_rows(n)
            if n < self._dense_rows:
                raise ValueError(f"cannot truncate to {n} rows: the build's {self._dense_rows} rows are committed")
            self._publish_rows(n)

    def vectors_of(self, rows: np.ndarray) -> np.ndarray:
        """Prepared float32 vectors of rows, checksums verified."""
        return self.files.vectors.read(rows)

    # -- maintenance (one thread, each call under maint_lock) -----------------------------------------
    @property
    def bootstrapped(self) -> bool:
        """True once the index has heads (an empty collection gets them at bootstrap_rows vectors)."""
        return self.head_index is not None and self.head_index.size > 0

    def bootstrap(self, rows: np.ndarray) -> None:
        """Train the quantizer and the first heads on `rows` (live vectors of a collection that had none)."""
        with self.maint_lock:
            x = self.vectors_of(rows)
            rng = np.random.default_rng(self.params.seed)
            sample = x[rng.choice(len(x), min(len(x), 100_000), replace=False)]
            quantizer = Int8Quantizer.train(sample)
            n_heads = max(1, int(round(self.params.head_ratio * len(x))))
            heads = hierarchical_heads(head_space(x, self.metric), n_heads, self.params, spherical=self.metric.angular)
            empty = [np.zeros(0, self.files.postings.record_dtype)] * len(heads)
            with self.files.new_heads_or_none():  # a full disk under heads.append must not leave new postings
                pids = self.files.postings.add_postings(empty, [self.params.split_limit] * len(heads))
                self.files.heads.append(heads)
                head_index = HeadIndex.build(heads, angular=self.metric.angular, kind=self.params.head_index,
                                             m=self.params.hnsw_m, ids=pids,
                                             ef_construction=self.params.hnsw_ef_construction)
            self.head_index, self.quantizer = head_index, quantizer
            self._excluded = self._retired_mask()
            self.stats.bootstraps += 1
            log.info("bootstrapped %d heads from %d vectors", len(heads), len(x))
            self.insert(rows)

    def insert(self, rows: np.ndarray) -> None:
        """Put rows into the postings of their RNG-chosen heads, then split whatever overflowed."""
        with self.maint_lock:
            if len(rows) == 0:
                return
            overflow = self._place(rows, version_of(self.state[rows]))
            self.stats.rows_indexed += len(rows)
            self._settle(overflow)

    def _place(self, rows: np.ndarray, versions: np.ndarray, excluded: np.ndarray | None = None) -> set[int]:
        """Append (row, version) records to the RNG-chosen postings; return postings now over the limit."""
        x = self.vectors_of(rows)
        hs = head_space(x, self.metric)
        sel, _, _ = select_heads(hs, self._heads_matrix(), self.head_index, self.params,
                                 excluded if excluded is not None else self._excluded,
                                 None if excluded is not None else self._retired_in_head_index)
        codes = self.quantizer.encode(x)
        owner, slot = np.nonzero(sel >= 0)
        pids = sel[owner, slot]
        order = np.argsort(pids, kind="stable")  # by posting, in row order within one
        owner, pids = owner[order], pids[order]
        store = self.files.postings
        recs = np.zeros(len(owner), store.record_dtype)
        recs["id"], recs["version"], recs["code"] = rows[owner], versions[owner], codes[owner]
        groups, first = np.unique(pids, return_index=True)
        store.append_many(groups, np.append(first, len(pids)), recs, grow_to=self.params.split_limit + 1)
        return set(groups[store.dir.count[groups] > self.params.split_limit].tolist())

    def compact_postings(self) -> int:
        """Rewrite every live posting, live records only, into a new posting file (generation N+1) and serve
        from it; the next checkpoint makes it the committed file and deletes the old one. Returns the bytes
        the old file held beyond what the new one needs."""
        with self.maint_lock:
            old = self.files.postings
            gen = max(int(self.files.manifest.get("postings_gen", 0)),
                      self._pending_file[1] if self._pending_file else 0) + 1
            new = PostingStore.create(self.path / f"postings-{gen}.dat", self.dim)
            pid = 0
            retired = (old.dir.flags & FLAG_RETIRED) != 0
            while pid < old.n_postings:
                run = pid
                while run < old.n_postings and retired[run] == retired[pid]:
                    run += 1
                if retired[pid]:
                    new.add_retired(run - pid)
                else:
                    lists = [self._live_records(q).copy() for q in range(pid, run)]
                    new.add_postings(lists, [max(len(r) + len(r) // 4 + 1, 1) for r in lists])
                pid = run
            new.sync()
            crashpoint("compact-written")  # the new file is complete but unnamed by any commit: it is removed
            self.files.sync_names()  # the new file's name is durable before any commit names it
            before, after = old.file_bytes, new.file_bytes
            replaced = self.files.swap_postings(new)
            # Searches in flight may still read the old store: close it only at the next compaction or close.
            if self._old_store is not None:
                self._old_store.close()
            self._old_store = replaced
            self._renew_disk()  # a disk searcher reads the new file from now on (index/livedisk.py)
            self._pending_file = (f"postings-{gen}.dat", gen)
            crashpoint("compact")
            self.stats.extra["compactions"] = self.stats.extra.get("compactions", 0) + 1
            log.info("compacted postings: %d -> %d bytes", before, after)
            return before - after

    def rebuild_head_index(self) -> None:
        """Re-index only live heads (faiss HNSW cannot delete; retired heads otherwise cost probes)."""
        with self.maint_lock:
            live = np.nonzero(~self._excluded)[0]
            heads = self._heads_matrix()[live]
            self.head_index = HeadIndex.build(heads, angular=self.metric.angular, kind=self.params.head_index,
                                              m=self.params.hnsw_m, ids=live,
                                              ef_construction=self.params.hnsw_ef_construction)
            self._retired_in_head_index = 0
            self.stats.head_index_rebuilds += 1

    def _heads_matrix(self) -> np.ndarray:
        return self.files.heads.matrix()[:, : self.dim]

    def retired_postings(self) -> np.ndarray:
        """bool per posting id: split or merged away (its head is gone)."""
        return self._excluded.copy()

    def posting_rows(self, pid: int) -> np.ndarray:
        """Rows with a valid record (version == state) in posting `pid`."""
        return self._live_records(pid)["id"].astype(np.int64)

    def _retired_mask(self) -> np.ndarray:
        return (self.files.postings.dir.flags & FLAG_RETIRED) != 0

    # -- checkpoints ----------------------------------------------------------------------------------------
    def snapshot(self) -> tuple[dict, dict]:
        """(manifest fields, arrays) describing the current state; call with maint_lock and lock held."""
        arrays = {"directory": self.files.postings.dir.to_array(), "state": self.state.copy(),
                  "int2ext": self.int2ext.tail.copy()}  # the rows from "int2ext_from" on (index/ids.py)
        if self.quantizer is not None:
            arrays["quantizer"] = self.quantizer.to_array()
            if self._head_index_changed():  # serialized it is a copy of the head index (82 MB at 10M rows),
                arrays["head_index"] = self.head_index.to_bytes()  # and LMDB copies it again: only when changed
        fields_ = {"n_rows": int(self.n_rows), "n_heads": int(self.files.heads.rows),
                   "int2ext_from": self._dense_rows,
                   "postings_file": self.files.postings.path.name,
                   "postings_gen": int(self._pending_file[1]) if self._pending_file else
                   int(self.files.manifest.get("postings_gen", 0))}
        return fields_, arrays

    def _head_index_changed(self) -> bool:
        """The head index differs from the one the last commit stored (or read): another object, or edited."""
        committed = self._committed_head
        return committed is None or committed[0] is not self.head_index or committed[1] != self.head_index.changes

    def commit(self, manifest: dict, arrays: dict, *, id_puts=None, id_deletes=None, payload_puts=None) -> None:
        """Make a checkpoint durable: the data files are fsync'd, then one LMDB transaction stores the manifest,
        the arrays (those of snapshot() and any of the caller's own) and the caller's id map and payload changes.
        id_puts: (ext ids, rows); id_deletes: ext ids; payload_puts: (ext ids, list of dict or None)."""
        epoch = self.epochs.advance()  # readers from now on see at least the snapshot's deletes
        head = (self.head_index, self.head_index.changes) if "head_index" in arrays else None
        self.files.commit(manifest, arrays, id_puts=id_puts, id_deletes=id_deletes, payload_puts=payload_puts)
        if head is not None:
            self._committed_head = head
        if "state" in arrays:
            dead = ~is_live(arrays["state"])
            pending = arrays.get("pending")
            if pending is not None and len(pending):
                dead[np.asarray(pending, np.int64)] = False  # recovery reads pending rows back into RAM
            self._reclaimable = (dead, epoch)

    def reclaim_rows(self) -> int:
        """Free the blocks of the vector file that hold only rows dead in the last commit, once no search that
        could have seen them alive is still running (index/epochs.py). Row numbers do not change; returns the
        bytes freed (0 if there is nothing to do yet). Maintenance thread, under maint_lock."""
        with self.maint_lock:
            if self._reclaimable is None or not self.epochs.quiet_since(self._reclaimable[1]):
                return 0
            dead, _ = self._reclaimable
            self._reclaimable = None
            crashpoint("reclaim-rows")
            freed = self.files.vectors.reclaim(dead)
            self.stats.extra["rows_reclaimed_bytes"] = self.stats.extra.get("rows_reclaimed_bytes", 0) + freed
            return freed

    def copy_committed(self, dest) -> list[str]:
        """Copy the files of the last commit into the new directory `dest` (see IndexDir.copy_committed); call
        under maint_lock right after a commit. Returns the paths written, relative to `dest`."""
        return self.files.copy_committed(dest)

    def repair_postings(self, pending: np.ndarray) -> dict:
        """Operator repair: retire every posting that fails its checksum and put the live rows left in no posting
        (and not `pending` in the caller's memtable) back into postings from their full-precision rows.
        Returns {"damaged_postings": [...], "rows_reindexed": n}."""
        with self.maint_lock:
            bad = self.files.postings.verify_all()
            if not bad:
                return {"damaged_postings": [], "rows_reindexed": 0}
            self._retire(bad)
            reached = self.reachable_rows(self.state)
            reached[np.asarray(pending, dtype=np.int64)] = True
            lost = np.nonzero(is_live(self.state) & ~reached)[0]
            self.insert(lost)
            log.warning("repair: retired %d damaged postings %s; re-indexed %d rows", len(bad), bad[:10], len(lost))
            return {"damaged_postings": bad, "rows_reindexed": int(len(lost))}

    def sparse_rows(self, max_rows: int, min_garbage: float, fraction: float) -> np.ndarray:
        """Live rows to copy to new rows so that blocks of dead rows can be freed (VectorFile.sparse_rows)."""
        return self.files.vectors.sparse_rows(is_live(self.state), max_rows, min_garbage, fraction)

    def compaction_due(self, min_bytes: float, fraction: float) -> bool:
        """True when the posting file's garbage exceeds both min_bytes (a floor, so that small files do not
        churn) and `fraction` of the file (see compact_postings)."""
        store = self.files.postings
        return store.garbage_bytes() > max(min_bytes, fraction * store.file_bytes)

    def close(self) -> None:
        """Release the files (and the posting file a compaction replaced)."""
        if self._old_store is not None:
            self._old_store.close()
            self._old_store = None
        self._close_replaced_disk()
        super().close()

    def disk_usage(self) -> dict:
        """Allocated bytes per file of the directory (and "total"), and the garbage: dead rows, dead rows' bytes
        in vector-file blocks that also hold a live row, and posting bytes no live extent uses."""
        live = is_live(self.state)
        return {"files": self.files.allocated_bytes(),
                "garbage": {"dead_rows": int(len(live) - live.sum()),
                            "posting_bytes": self.files.postings.garbage_bytes(),
                            "vector_row_bytes": self.files.vectors.garbage_bytes(live)}}

    def maintenance_stats(self) -> dict:
        """Counters of the maintenance work (splits, merges, reassignments, ...) and posting-file garbage."""
        d = self.files.postings.dir
        alive = (d.flags & FLAG_RETIRED) == 0
        return {**self.stats.as_dict(), "postings": int(alive.sum()), "retired_postings": int((~alive).sum()),
                "posting_garbage_bytes": self.files.postings.garbage_bytes()}
