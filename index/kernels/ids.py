"""The id map's lookup for search answers: one pass instead of a dozen numpy calls per query (index/ids.py)."""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, cache=True)
def answer_ids(rows, dense_rows, tail, state, deleted, out):
    """out[i] = the external id of rows[i] (identity below dense_rows, tail[row - dense_rows] above), or -1 where
    rows[i] < 0 (an empty answer slot) or the row's state has the `deleted` bit. Returns -1, or the first index
    i whose row is past the map (the caller raises)."""
    n = dense_rows + tail.shape[0]
    for i in range(rows.shape[0]):
        r = rows[i]
        if r < 0:
            out[i] = -1
        elif r >= n or r >= state.shape[0]:
            return i
        elif state[r] & deleted:
            out[i] = -1
        else:
            out[i] = r if r < dense_rows else tail[r - dense_rows]
    return -1
