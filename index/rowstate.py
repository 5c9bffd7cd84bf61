"""The state byte every row (internal id) carries: the one definition of the deleted bit and the version.

    bit 7      DELETED: the row was deleted or replaced by a newer row of the same external id
    bits 0..6  version: a posting record counts only if its version byte equals the row's whole state byte,
               so one store of the state hides deleted rows and stale replicas at once (index/mutable.py)
"""
from __future__ import annotations

import numpy as np

DELETED = np.uint8(0x80)
VERSION_MASK = np.uint8(0x7F)


def is_live(state: np.ndarray) -> np.ndarray:
    """True where the row is not deleted (works on the whole array or a gathered part of it)."""
    return (state & DELETED) == 0


def version_of(state: np.ndarray) -> np.ndarray:
    return state & VERSION_MASK


def next_version(state: np.ndarray) -> np.ndarray:
    """The version a reassignment gives a row (wraps within 7 bits; the deleted bit is not set)."""
    return ((state & VERSION_MASK) + 1) & VERSION_MASK


def grown(a: np.ndarray, n: int, fill=0) -> np.ndarray:
    """A copy of the per-row array `a` with room for n rows and a quarter more (not double: at 10M rows the
    state array alone is 10 MB), the new slots set to `fill`."""
    out = np.full(n + n // 4 + 1024, fill, dtype=a.dtype)
    out[: len(a)] = a
    return out
