"""Id maps an index keeps in RAM."""
from __future__ import annotations

import numpy as np


class DenseIds:
    """The identity id map (external id == row) of a build that was given no ids: indexable like the int64
    array it stands for, without its 8 bytes per row in RAM. np.asarray() materializes it (the mutable index
    grows a real array from it)."""

    dtype = np.dtype(np.int64)

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, rows):
        if isinstance(rows, slice):
            return np.arange(self.n, dtype=np.int64)[rows]
        rows = np.asarray(rows)
        if rows.dtype == np.bool_:  # a mask selects the rows where it is True, as on the array
            if rows.shape != (self.n,):
                raise IndexError(f"boolean index of shape {rows.shape} for {self.n} rows")
            return np.nonzero(rows)[0].astype(np.int64)
        return rows.astype(np.int64)  # external id == row (a fresh array: callers may write into it)

    def __array__(self, dtype=None, copy=None):
        return np.arange(self.n, dtype=dtype or np.int64)

    @property
    def nbytes(self) -> int:
        return 0
