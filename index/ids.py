"""The external id of every row, as an index keeps it in RAM.

A build given no ids numbers its vectors 0..n-1 (external id == row: manifest "id_map": "dense", "dense_rows":
n). Materializing that as an int64 array costs 8 bytes per row (80 MB at 10M rows, and twice that while a
mutable index grew a copy of it), so `RowIds` stores only the rows appended after the dense prefix and computes
the rest. The stored form is the same: the array "int2ext" holds the rows from manifest "int2ext_from" on
(a commit written before that field existed holds every row; `tail_of_stored` reads both).
"""
from __future__ import annotations

import weakref

import numpy as np

from index.kernels.ids import answer_ids
from index.rowstate import DELETED


class RowIds:
    """Indexable like the int64 array int2ext[row] it stands for: identity below `dense_rows`, `tail[row -
    dense_rows]` above, and -1 for a row whose state byte says deleted (read from `holder.state` at each lookup,
    so a delete hides the id as soon as it hides the row). `np.asarray()` / `copy()` materialize it (checks and
    tools that walk every row; never the serving path)."""

    dtype = np.dtype(np.int64)

    def __init__(self, dense_rows: int, tail: np.ndarray, holder):
        # a weak reference: the index holds this map, and a cycle would keep a closed index (its head index
        # included) in memory until the garbage collector ran
        self.dense_rows, self.tail, self._holder = int(dense_rows), tail, weakref.ref(holder)
        self.n = self.dense_rows + len(tail)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, rows):
        if isinstance(rows, slice):
            rows = np.arange(self.n, dtype=np.int64)[rows]
        scalar = np.ndim(rows) == 0
        rows = np.asarray(rows)
        if rows.dtype == bool:
            if rows.shape != (self.n,):
                raise IndexError(f"boolean index of shape {rows.shape} for {self.n} rows")
            rows = np.nonzero(rows)[0]
        flat = rows.astype(np.int64).ravel()
        if len(flat) and (flat.min() < -self.n or flat.max() >= self.n):
            raise IndexError(f"row index out of range for {self.n} rows")
        flat = np.where(flat < 0, flat + self.n, flat)
        out = flat.copy()
        above = flat >= self.dense_rows
        if above.any():
            out[above] = self.tail[flat[above] - self.dense_rows]
        holder = self._holder()
        if holder is None:
            raise ReferenceError("the index this id map belongs to is gone")
        out[(holder.state[flat] & DELETED) != 0] = -1
        return int(out[0]) if scalar else out.reshape(rows.shape)

    def of_answers(self, rows: np.ndarray) -> np.ndarray:
        """The external ids of a search answer's rows (any shape, int64), -1 for an empty slot (row < 0) or a row
        deleted meanwhile: the serving path's lookup, in one kernel pass."""
        holder = self._holder()
        if holder is None:
            raise ReferenceError("the index this id map belongs to is gone")
        flat = np.ascontiguousarray(rows, dtype=np.int64).ravel()
        out = np.empty(len(flat), np.int64)
        bad = answer_ids(flat, self.dense_rows, self.tail, holder.state, DELETED, out)
        if bad >= 0:
            raise IndexError(f"row {int(flat[bad])} out of range for {self.n} rows")
        return out.reshape(np.shape(rows))

    def __array__(self, dtype=None, copy=None):
        out = self[np.arange(self.n, dtype=np.int64)]
        return out if dtype is None else out.astype(dtype)

    def copy(self) -> np.ndarray:
        """Every row's id as an int64 array (-1 for deleted rows)."""
        return np.asarray(self)

    def astype(self, dtype, copy: bool = True) -> np.ndarray:
        return np.asarray(self).astype(dtype, copy=False)

    @property
    def nbytes(self) -> int:
        """RAM held: the appended rows only."""
        return int(self.tail.nbytes)


def tail_of_stored(stored: np.ndarray | None, stored_from: int | None, dense_rows: int, n_rows: int) -> np.ndarray | None:
    """The ids of rows dense_rows..n_rows-1 from the stored "int2ext" array, which starts at row `stored_from`
    (None: a commit that stored every row). None if the array does not have the length the manifest implies."""
    start = 0 if stored_from is None else int(stored_from)
    if stored is None:
        stored = np.zeros(0, np.int64) if n_rows - start == 0 else None
    if stored is None or len(stored) != n_rows - start or start > dense_rows:
        return None
    return np.array(stored[dense_rows - start:], dtype=np.int64)  # a copy: `stored` may be LMDB's mapping
