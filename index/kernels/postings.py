"""Kernels over whole posting files: live records per posting, rows reachable through some posting."""
from __future__ import annotations

import numpy as np
from numba import njit

from storage.posting_format import RECORD_ID_OFFSET as ID, RECORD_VERSION_OFFSET as VER


@njit(nogil=True, cache=True)
def live_counts(buf_u32, buf_u8, offsets, counts, rec_size, state):
    """Records per posting whose version matches its row's state (not deleted, not a stale replica)."""
    out = np.zeros(offsets.shape[0], np.int32)
    for p in range(offsets.shape[0]):
        off = offsets[p]
        live = 0
        for r in range(counts[p]):
            base = off + r * rec_size
            if state[buf_u32[(base + ID) >> 2]] == buf_u8[base + VER]:
                live += 1
        out[p] = live
    return out


@njit(nogil=True, cache=True)
def mark_reachable(buf_u32, buf_u8, offsets, counts, rec_size, state, reached):
    """reached[row] = True for every row with a valid record (version == state) in some posting."""
    for p in range(offsets.shape[0]):
        off = offsets[p]
        for r in range(counts[p]):
            base = off + r * rec_size
            rid = buf_u32[(base + ID) >> 2]
            if state[rid] == buf_u8[base + VER]:
                reached[rid] = True
