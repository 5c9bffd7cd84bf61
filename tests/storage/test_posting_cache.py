"""The budgeted posting cache: one ring of `budget` bytes, oldest entries out first, hits copied out whole."""
from __future__ import annotations

import numpy as np

from storage.posting_cache import PostingCache


def _data(n, fill):
    return np.full(n, fill, np.uint8)


def _get(c, key):
    buf, starts = c.gather([key])
    return None if starts[0] < 0 else buf[starts[0]:]


def test_the_ring_keeps_within_the_budget_and_drops_the_oldest():
    c = PostingCache(250)
    for pid in range(3):
        c.put((pid, 0), _data(100, pid))
    assert c.bytes <= 250 and len(c) == 2 and c.evictions == 1
    assert _get(c, (0, 0)) is None                       # the oldest went first (the ring wrapped over it)
    assert _get(c, (1, 0)).tolist() == [1] * 100 and _get(c, (2, 0)).tolist() == [2] * 100
    for pid in range(3, 40):                             # many laps: always the newest that fit
        c.put((pid, 0), _data(60 + pid % 7, pid))
        assert c.bytes <= 250
        assert _get(c, (pid, 0)).tolist() == [pid] * (60 + pid % 7)
    assert c.as_dict()["hits"] > 0 and c.as_dict()["misses"] == 1


def test_gather_returns_every_hit_in_order_and_marks_misses():
    c = PostingCache(1000)
    c.put((1, 0), _data(10, 1))
    c.put((2, 0), _data(20, 2))
    buf, starts = c.gather([(2, 0), (9, 0), (1, 0)])
    assert starts[1] == -1 and len(buf) == 30
    assert buf[starts[0]: starts[0] + 20].tolist() == [2] * 20 and buf[starts[2]: starts[2] + 10].tolist() == [1] * 10


def test_entries_are_copies_and_oversized_ones_are_not_admitted():
    c = PostingCache(100)
    src = _data(50, 7)
    c.put((1, 4096), src)
    src[:] = 0
    assert _get(c, (1, 4096)).tolist() == [7] * 50       # the caller's buffer may be reused
    c.put((2, 0), _data(101, 1))
    assert _get(c, (2, 0)) is None and c.bytes == 50


def test_a_moved_posting_is_a_different_entry():
    c = PostingCache(1000)
    c.put((5, 4096), _data(10, 1))
    assert _get(c, (5, 8192)) is None                    # same posting id, new extent: not the old bytes


def test_zero_budget_caches_nothing():
    c = PostingCache(0)
    c.put((1, 0), _data(10, 1))
    assert len(c) == 0 and _get(c, (1, 0)) is None
