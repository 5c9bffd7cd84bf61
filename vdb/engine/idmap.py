"""The id map and payloads of a collection: external id -> row and external id -> payload.

The committed state lives in LMDB (written by each checkpoint, read through the index's committed_* methods);
the changes since the last checkpoint live in two overlay dicts in front of it, which win because they are
newer. Not thread-safe by itself: the collection calls it under the index's lock.
"""
from __future__ import annotations

import numpy as np

from index.rowstate import is_live
from storage.errors import CorruptionError

_MISSING = object()
UNKNOWN = -2  # internal: "not in the overlay, ask LMDB"
SCAN_BLOCK_ROWS = 1 << 16  # rows per block of a pass over every row (its temporaries: ~24 bytes a row)


class IdMap:
    def __init__(self, index):
        self._index = index                           # MutableSpannIndex: the committed id map and payloads
        self._rows: dict[int, int] = {}               # ext id -> row (-1: deleted) since the last checkpoint
        self._payloads: dict[int, dict | None] = {}   # ext id -> payload (None: none) since the last checkpoint
        self._max_id: int | None = None               # >= every id LMDB or a live row holds (see max_id)

    # -- changes (the write path, in LSN order) ---------------------------------------------------------
    def upserted(self, ext_ids: np.ndarray, rows: np.ndarray, payloads: list, existed: np.ndarray) -> None:
        """`existed`: bool per id, live before this upsert. A new id without a payload is not recorded as one:
        LMDB holds no payload of an id that is not live (its delete removed it, in the overlay or at a
        checkpoint), and each None recorded cost the next checkpoint one LMDB delete, 150K per checkpoint under
        5,000 inserts/s, a GIL-bound loop that searches waited behind (issue 13)."""
        ids = ext_ids.tolist()
        self._rows.update(zip(ids, rows.tolist()))
        self._saw(ext_ids)
        changed: dict = {}
        for e, p, old in zip(ids, payloads, existed.tolist()):
            if p is not None or old or e in changed:  # a repeated id (a replicated record is not checked): last wins
                changed[e] = p
        self._payloads.update(changed)

    def moved(self, ext_ids: np.ndarray, rows: np.ndarray) -> None:
        """Live ids now at other rows, payloads unchanged (a relocation)."""
        self._rows.update(zip(ext_ids.tolist(), rows.tolist()))
        self._saw(ext_ids)

    def deleted(self, ext_ids: list[int]) -> None:
        self._rows.update(dict.fromkeys(ext_ids, -1))
        self._payloads.update(dict.fromkeys(ext_ids, None))

    def drop_orphaned_payloads(self) -> list[int]:
        """Record the deletion of every orphaned payload (orphaned_payloads); returns their ids."""
        orphans = self.orphaned_payloads()
        self._payloads.update(dict.fromkeys(orphans, None))
        return orphans

    # -- reads ------------------------------------------------------------------------------------------
    def rows_of(self, ext_ids: np.ndarray) -> np.ndarray:
        """Row of each external id, -1 if absent."""
        return self._rows_of(ext_ids, from_rows=True)

    def recorded_rows_of(self, ext_ids: np.ndarray) -> np.ndarray:
        """rows_of from the map's own records only (the overlay, then LMDB), never from the rows: what a check
        compares the rows against (an entry missing from LMDB is damage rows_of would not see)."""
        return self._rows_of(ext_ids, from_rows=False)

    def _rows_of(self, ext_ids: np.ndarray, *, from_rows: bool) -> np.ndarray:
        out = np.fromiter((self._rows.get(e, UNKNOWN) for e in ext_ids.tolist()), np.int64, len(ext_ids))
        miss = np.nonzero(out == UNKNOWN)[0]
        if len(miss):
            if from_rows:
                out[miss] = self._known_rows(ext_ids[miss])
            ask = miss[out[miss] == UNKNOWN]
            if len(ask):
                committed = self._index.committed_rows(ext_ids[ask])
                self._cross_check(ext_ids[ask], committed)
                out[ask] = committed
        return out

    def _known_rows(self, ext_ids: np.ndarray) -> np.ndarray:
        """What the rows themselves say about ids the overlay does not hold (UNKNOWN where they cannot tell):
        an id above max_id has no entry, and id e of a dense build is on row e while that row is live (ids are
        unique among live rows). An entry LMDB holds is for a row still live (a later delete is in the overlay),
        so these answers are the ones LMDB would give. They spare the write path one LMDB get
        per id, a GIL-bound loop that the searches of issue 13 waited behind: 512 per batch of inserts of new
        ids and deletes of bulk-built ones."""
        out = np.full(len(ext_ids), UNKNOWN, np.int64)
        out[ext_ids > self.max_id()] = -1
        dense = self._index.int2ext.dense_rows
        inside = np.nonzero((ext_ids >= 0) & (ext_ids < dense))[0]  # (ids are validated >= 0; -1 is "none")
        if len(inside):
            live = inside[is_live(self._index.state[ext_ids[inside]])]
            out[live] = ext_ids[live]
        return out

    def max_id(self) -> int:
        """No live row and no LMDB entry holds an id above this: the largest id of a live row (dense ids:
        dense_rows - 1) when first asked, raised by every id given a row since (an entry LMDB holds is for a row
        still live, or the overlay has its delete)."""
        if self._max_id is None:
            ids = self._index.int2ext
            self._max_id = max(ids.dense_rows - 1, int(ids.tail.max()) if len(ids.tail) else -1)
        return self._max_id

    def _saw(self, ext_ids: np.ndarray) -> None:
        if self._max_id is not None and len(ext_ids):
            self._max_id = max(self._max_id, int(ext_ids.max()))

    def confirm_absent(self, ext_ids: np.ndarray, state: np.ndarray) -> None:
        """Ids the map does not know must be on no live row. LMDB pages carry no checksum: a damaged key can hide
        an entry, and a delete that trusted the miss would leave the id live. Costs one pass over the rows, paid
        only by deletes of unknown ids, in blocks (whole-array temporaries were ~24 bytes per row: 240 MB at
        10M rows for one delete). Ids above max_id are on no row: the pass cannot find them."""
        ext_ids = ext_ids[ext_ids <= self.max_id()]
        if not len(ext_ids):
            return
        int2ext = self._index.int2ext
        hidden = np.zeros(0, np.int64)
        for lo in range(0, len(state), SCAN_BLOCK_ROWS):
            live = lo + np.nonzero(is_live(state[lo: lo + SCAN_BLOCK_ROWS]))[0]
            hidden = live[np.isin(np.asarray(int2ext[live], np.int64), ext_ids)]
            if len(hidden):
                break
        if len(hidden):
            raise CorruptionError(self._index.path / "meta" / "data.mdb",
                                  f"id {int(int2ext[hidden[0]])} is on live row {int(hidden[0])} but the id map "
                                  f"has no entry for it ({len(hidden)} such ids): the id map is damaged")

    def _cross_check(self, ext_ids: np.ndarray, rows: np.ndarray) -> None:
        """A committed entry must point at a row that carries the same external id (the per-row id array is
        checksummed separately): a mismatch is damage, never another id's vector."""
        found = rows >= 0
        if not found.any():
            return
        int2ext = self._index.int2ext
        r = rows[found]
        bad = (r >= len(int2ext)) | (int2ext[np.minimum(r, len(int2ext) - 1)] != ext_ids[found])
        if bad.any():
            e = int(ext_ids[found][bad][0])
            raise CorruptionError(self._index.path / "meta" / "data.mdb",
                                  f"the id map sends id {e} to row {int(r[bad][0])}, which holds another id")

    def payloads_of(self, ext_ids: np.ndarray) -> list[dict | None]:
        """The payload of each external id: the overlay's where it has one (newer), else LMDB's."""
        out = [self._payloads.get(e, _MISSING) for e in ext_ids.tolist()]
        need = [i for i, p in enumerate(out) if p is _MISSING]
        if need:
            for i, p in zip(need, self._index.committed_payloads(ext_ids[need])):
                out[i] = p
        return out

    def orphaned_payloads(self) -> list[int]:
        """Ids of committed payloads whose id is not live. A delete removes its id's payload, so such a payload is
        damage (or a tool older than that rule); left alone it would come back when its id is upserted without
        one (upserted records nothing for a new id)."""
        stored = [e for e in self._index.iter_committed_payload_ids() if e not in self._payloads]
        rows = self.rows_of(np.array(stored, np.int64)).tolist() if stored else []
        return [e for e, r in zip(stored, rows) if r < 0]

    def live_items(self) -> list[tuple[int, int]]:
        """Every (external id, row) of a live id: LMDB overlaid with the changes since the checkpoint."""
        merged = dict(self._index.iter_committed_ids())
        merged.update(self._rows)
        return [(e, r) for e, r in merged.items() if r >= 0]

    def live_payload_rows(self) -> list[tuple[int, dict]]:
        """(row, payload) of every live id that has a payload (what the payload index is built from). Only the
        ids with a payload are looked up: a dict of every id was ~100 bytes per row (1 GB at 10M rows)."""
        stored = dict(self._index.iter_committed_payloads())
        stored.update(self._payloads)
        ids = [e for e, p in stored.items() if p is not None]
        rows = self.rows_of(np.array(ids, np.int64)).tolist() if ids else []
        unmapped = [e for e, r in zip(ids, rows) if r < 0]
        if unmapped:  # a payload whose id the map does not know: an orphan, or a damaged key hiding the entry
            # (a filter would silently miss that row: a wrong answer); one pass over the rows tells them apart
            self.confirm_absent(np.array(unmapped, np.int64), self._index.state)
        return [(r, stored[e]) for e, r in zip(ids, rows) if r >= 0]

    # -- checkpoints --------------------------------------------------------------------------------------
    def changes(self) -> tuple[dict[int, int], dict[int, dict | None]]:
        """Copies of the overlays, for a checkpoint to commit."""
        return dict(self._rows), dict(self._payloads)

    def committed(self, rows: dict[int, int], payloads: dict[int, dict | None]) -> None:
        """A checkpoint stored these changes: drop them from the overlays, unless they changed meanwhile."""
        for e, r in rows.items():
            if self._rows.get(e) == r:
                del self._rows[e]
        for e, p in payloads.items():
            if e in self._payloads and self._payloads[e] is p:
                del self._payloads[e]

    def __len__(self) -> int:
        return len(self._rows)
