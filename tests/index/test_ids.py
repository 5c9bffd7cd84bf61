"""The row -> external id map (index/ids.py): a build given no ids keeps no per-row id array, in RAM or stored,
also once it is opened for writing and rows are appended, deleted and committed."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from index import BuildParams, SpannIndex, build_index
from index.ids import RowIds, tail_of_stored
from index.mutable import MutableSpannIndex
from index.rowstate import DELETED


class _Holder:
    def __init__(self, state):
        self.state = state


def test_row_ids_behave_like_the_array_they_stand_for():
    state = np.zeros(8, np.uint8)
    holder = _Holder(state)  # the map refers to its index weakly (no cycle keeps a closed index alive)
    ids = RowIds(5, np.array([70, 71, 72], np.int64), holder)
    full = np.array([0, 1, 2, 3, 4, 70, 71, 72])
    assert len(ids) == 8 and np.array_equal(np.asarray(ids), full) and ids.nbytes == 24
    assert np.array_equal(ids[np.array([[7, 0], [5, 4]])], [[72, 0], [70, 4]])
    assert ids[6] == 71 and ids[-1] == 72 and np.array_equal(ids[2:6], full[2:6])
    mask = np.array([1, 0, 0, 0, 0, 0, 1, 0], bool)
    assert np.array_equal(ids[mask], [0, 71])
    state[[1, 6]] |= DELETED                       # a deleted row has no id, in the prefix and in the tail
    assert np.array_equal(ids[np.array([1, 2, 6, 7])], [-1, 2, -1, 72])
    with pytest.raises(IndexError):
        ids[np.array([8])]


def test_answer_ids_map_empty_slots_and_deleted_rows_to_minus_one():
    """of_answers (the serving path's one-kernel lookup) agrees with indexing, and says -1 for an empty answer slot
    (row -1) and a row deleted after the search found it."""
    state = np.zeros(8, np.uint8)
    holder = _Holder(state)
    ids = RowIds(5, np.array([70, 71, 72], np.int64), holder)
    rows = np.array([[7, -1, 0], [5, 4, -1]])
    assert np.array_equal(ids.of_answers(rows), [[72, -1, 0], [70, 4, -1]])
    state[[0, 7]] |= DELETED
    assert np.array_equal(ids.of_answers(rows), [[-1, -1, -1], [70, 4, -1]])
    assert ids.of_answers(np.zeros((0, 10), np.int64)).shape == (0, 10)
    with pytest.raises(IndexError):
        ids.of_answers(np.array([8]))


def test_stored_tails_of_both_forms():
    assert np.array_equal(tail_of_stored(np.array([7, 8]), 3, 3, 5), [7, 8])          # rows from 3 on
    assert np.array_equal(tail_of_stored(np.array([0, -1, 2, 7, 8]), None, 3, 5), [7, 8])  # every row (legacy)
    assert len(tail_of_stored(None, 5, 5, 5)) == 0
    assert tail_of_stored(np.array([7]), 3, 3, 5) is None                            # too short: refused


def test_a_dense_build_opened_for_writing_keeps_only_appended_ids(tmp_path, base):
    """Regression: open_writable grew an int64 copy of every row's id (80 MB at 10M rows, 160 MB at the peak)."""
    path = tmp_path / "idx"
    build_index(base[:2000], path, params=BuildParams(head_ratio=0.05))
    with SpannIndex.open(path) as ro:
        assert ro.committed_array("int2ext") is not None and len(ro.committed_array("int2ext")) == 0
    idx = MutableSpannIndex.open_writable(path)
    try:
        assert idx.int2ext.nbytes == 0 and idx.resident_bytes()["id_map"] == 0
        with idx.lock:
            rows = idx.add_rows(base[2000:2010], np.arange(900, 910))
            idx.delete_rows(np.array([3, int(rows[2])]))
        assert idx.int2ext.nbytes >= 80
        assert np.array_equal(idx.int2ext[np.array([0, 3, 1999, rows[0], rows[2]])], [0, -1, 1999, 900, -1])
        with idx.maint_lock, idx.lock:
            fields, arrays = idx.snapshot()
        assert len(arrays["int2ext"]) == 10 and fields["int2ext_from"] == 2000
        idx.commit({**idx.manifest, **fields}, arrays)
    finally:
        idx.close()
    for opener in (SpannIndex.open, MutableSpannIndex.open_writable):
        with opener(path) as again:
            assert again.n_rows == 2010 and again.int2ext.nbytes == 80
            assert np.array_equal(again.int2ext[np.array([0, 3, 2001, 2002, 2009])], [0, -1, 901, -1, 909])


def test_a_commit_that_stored_every_rows_id_still_opens(tmp_path, base):
    """Directories committed before "int2ext_from" existed store the id of every row."""
    path = tmp_path / "idx"
    build_index(base[:1000], path, params=BuildParams(head_ratio=0.05))
    idx = MutableSpannIndex.open_writable(path)
    with idx.lock:
        idx.add_rows(base[1000:1004], np.arange(500, 504))
    with idx.maint_lock, idx.lock:
        fields, arrays = idx.snapshot()
    legacy = np.concatenate([np.arange(1000), np.arange(500, 504)])
    manifest = {k: v for k, v in {**idx.manifest, **fields}.items() if k != "int2ext_from"}
    idx.commit(manifest, {**arrays, "int2ext": legacy})
    idx.close()
    copy = shutil.copytree(path, tmp_path / "copy")
    with SpannIndex.open(copy) as again:
        assert np.array_equal(np.asarray(again.int2ext), legacy) and again.int2ext.nbytes == 32


def test_a_closed_index_is_freed_at_once(tmp_path, base):
    """Regression: the id map referred to its index strongly, a cycle that kept a closed index (its head index
    included) in memory until the garbage collector ran; attach held two head indexes that way."""
    import gc
    import weakref
    path = tmp_path / "idx"
    build_index(base[:1000], path, params=BuildParams(head_ratio=0.05))
    gc.disable()
    try:
        for opener in (SpannIndex.open, MutableSpannIndex.open_writable):
            idx = opener(path)
            ref = weakref.ref(idx)
            idx.close()
            del idx
            assert ref() is None
    finally:
        gc.enable()
