"""The budgeted posting cache: bytes never exceed the budget, least recently used out first."""
from __future__ import annotations

import numpy as np

from storage.posting_cache import PostingCache


def _data(n, fill):
    return np.full(n, fill, np.uint8)


def test_lru_eviction_keeps_within_the_budget():
    c = PostingCache(250)
    for pid in range(3):
        c.put((pid, 0), _data(100, pid))
    assert c.bytes <= 250 and len(c) == 2 and c.evictions == 1
    assert c.get([(0, 0)]) == [None]                      # the oldest went first
    c.get([(1, 0)])                                        # 1 is now the most recently used
    c.put((3, 0), _data(100, 3))
    got = c.get([(1, 0), (2, 0), (3, 0)])
    assert got[1] is None and got[0] is not None and got[2] is not None
    assert c.as_dict()["hits"] == 3 and c.as_dict()["misses"] == 2


def test_entries_are_copies_and_oversized_ones_are_not_admitted():
    c = PostingCache(100)
    src = _data(50, 7)
    c.put((1, 4096), src)
    src[:] = 0
    assert c.get([(1, 4096)])[0].tolist() == [7] * 50      # the caller's buffer may be reused
    c.put((2, 0), _data(101, 1))
    assert c.get([(2, 0)]) == [None] and c.bytes == 50


def test_a_moved_posting_is_a_different_entry():
    c = PostingCache(1000)
    c.put((5, 4096), _data(10, 1))
    assert c.get([(5, 8192)]) == [None]                    # same posting id, new extent: not the old bytes


def test_zero_budget_caches_nothing():
    c = PostingCache(0)
    c.put((1, 0), _data(10, 1))
    assert len(c) == 0 and c.get([(1, 0)]) == [None]
