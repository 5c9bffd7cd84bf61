"""Moving live rows out of sparse blocks of the vector file, so that the blocks can be freed (issue 13).

Deletes and overwrites leave dead rows in the append-only vector file; once a checkpoint commits them dead, the
maintenance thread punches holes where a 4 KiB block holds dead rows only (storage/vectors.py). Random deletes
leave most blocks holding a live row or two, so the maintenance thread copies those rows to new rows at the end
of the file (VectorFile.sparse_rows says which), as a logged RELOCATE record (vdb/engine/walcodec.py): replay
repeats it, an id written meanwhile is left as its write made it, and the moved rows are indexed like new writes
(their old records in postings become garbage that sweeps and compaction collect). Reads that overlap one run
again (ReadPath.unmoved). Off in a cluster (`relocate_rows`): every node there may lead or follow, and a
follower's log must hold only its primary's records, so its nodes free only blocks of dead rows.

A mixin of Collection (collection.py), whose write path logs and applies the record.
"""
from __future__ import annotations

import numpy as np

from index.rowstate import is_live
from storage.crashpoints import crashpoint
from storage.errors import CorruptionError
from vdb.engine import walcodec


class Relocation:
    def relocate(self, rows: np.ndarray) -> int:
        """Move live `rows` to new rows at the end of the vector file, vectors and payloads unchanged, so the
        blocks they leave can be freed (the maintenance thread's; see walcodec RELOCATE). An id written or
        deleted meanwhile stays as that write left it. Logged like a write: replay and replicas repeat it."""
        self._check_usable()
        idx = self.index
        # rows never change while they exist, so reading them before the log's lock is safe
        rows, vectors = _readable(idx, np.asarray(rows, np.int64))
        if len(rows) == 0:
            return self.applied_lsn
        ids = np.asarray(idx.int2ext[rows], np.int64)
        op = walcodec.Relocate(ids, rows, vectors, idx.home_heads(vectors))
        return self._log_and_apply(walcodec.RELOCATE, walcodec.encode_relocate(ids, rows), op, new_rows=len(rows))

    def _apply_relocate(self, op: walcodec.Relocate) -> None:
        """Each id still live at its row moves to a new row; the new row is in the memtable before the old one
        dies, and searches that overlap are repeated (ReadPath.unmoved), so no search misses it."""
        idx = self.index
        live = op.vectors is not None  # relocate() read them; a replayed or replicated record carries none
        if live:
            crashpoint("relocate")  # logged, not applied: recovery replays it
        with idx.lock:
            at = self.rows_of(op.ids) == op.rows
            at[at] = is_live(idx.state[op.rows[at]])
            if live:
                ids, old, vectors, heads = op.ids[at], op.rows[at], op.vectors[at], op.heads[at]
            else:  # a replay: a row damaged since it was logged stays where it is (`check` reports it)
                old, vectors = _readable(idx, op.rows[at])
                ids = np.asarray(idx.int2ext[old], np.int64)
                heads = idx.home_heads(vectors)
            if len(ids) == 0:
                return
            payloads = self.idmap.payloads_of(ids) if self._pindex is not None or self.text.enabled else None
            self._moves += 1  # odd: a search that overlaps this repeats itself (ReadPath.unmoved)
            try:
                rows = self._add_live_rows(ids, vectors, heads, payloads, old)  # before the old rows die
                self.idmap.moved(ids, rows)
                idx.delete_rows(old)
                self.changed_rows += len(ids)  # their records in postings are garbage now, as a replacement's
                self.rows_relocated += len(ids)
            finally:
                self._moves += 1
        if live:
            crashpoint("relocate-applied")


def _readable(idx, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, vectors) of those of `rows` whose checksums pass: a damaged row is left where it is rather than
    stopping the relocation of the others (or the replay of one)."""
    try:
        return rows, idx.vectors_of(rows)
    except CorruptionError:
        ok = np.array([_passes(idx, r) for r in rows.tolist()], bool)
        return rows[ok], idx.vectors_of(rows[ok])


def _passes(idx, row: int) -> bool:
    try:
        idx.vectors_of(np.array([row], np.int64))
        return True
    except CorruptionError:
        return False
