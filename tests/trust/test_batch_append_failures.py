"""A maintenance step's batch append (PostingStore.append_many) that fails (full disk, I/O error, a damaged posting it
must move) publishes nothing and keeps no space: the step is retried with the same rows, so anything a failed attempt
published is placed twice, and any extent it kept turns the space an operator frees into garbage, so that on a full
disk indexing never resumes. Found by review of the batch append (issue 13)."""
from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from storage import CorruptionError, mapped
from storage import posting_format as fmt
from storage.postings import PostingStore

GROUPS, PER_GROUP = 200, 3


def _records(store, n, rng):
    r = np.zeros(n, store.record_dtype)
    r["id"] = rng.integers(0, 1 << 30, n)
    r["code"] = rng.integers(-128, 128, (n, fmt.code_bytes(store.dim)))
    return r


def _store(path, rng):
    s = PostingStore.create(path, 64)
    s.add_postings([_records(s, 20, rng) for _ in range(GROUPS // 2)])                      # packed: they move
    s.add_postings([_records(s, 20, rng) for _ in range(GROUPS // 2)], [40] * (GROUPS // 2))  # slack: in place
    return s


def _batch(s, rng):
    return (np.arange(GROUPS, dtype=np.int64), np.arange(GROUPS + 1, dtype=np.int64) * PER_GROUP,
            _records(s, GROUPS * PER_GROUP, rng))


@pytest.mark.parametrize("fail_at", [0, 1, 50, 99, 100, 101, 150])
@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO])
def test_a_failed_batch_publishes_nothing_and_keeps_no_extent(tmp_path, monkeypatch, fail_at, err):
    rng = np.random.default_rng(fail_at)
    s = _store(tmp_path / "p", rng)
    pids, starts, recs = _batch(s, rng)
    before, end = s.dir.copy(), s.file_bytes
    real, calls = os.pwrite, []

    def pwrite(fd, data, off):
        calls.append(off)
        if len(calls) == fail_at + 1:
            raise OSError(err, os.strerror(err))
        return real(fd, data, off)

    monkeypatch.setattr(mapped.os, "pwrite", pwrite)
    with pytest.raises(OSError):
        s.append_many(pids, starts, recs, grow_to=41)
    monkeypatch.setattr(mapped.os, "pwrite", real)
    for f in ("offset", "capacity", "count", "crc", "flags"):
        assert np.array_equal(getattr(s.dir, f), getattr(before, f)), f
    assert s.file_bytes == end
    s.append_many(pids, starts, recs, grow_to=41)  # the retry
    assert (s.dir.count == 20 + PER_GROUP).all()   # each record once
    assert s.verify_all() == []
    s.close()


def test_a_batch_that_must_move_a_damaged_posting_appends_nothing(tmp_path):
    rng = np.random.default_rng(7)
    s = _store(tmp_path / "p", rng)
    pids, starts, recs = _batch(s, rng)
    directory, at = s.dir.to_array(), int(s.dir.offset[0])
    s.sync()
    s.close()
    with open(tmp_path / "p", "r+b") as f:  # posting 0 (packed, so the batch must move it): one flipped byte
        f.seek(at + 9)
        byte = f.read(1)
        f.seek(at + 9)
        f.write(bytes([byte[0] ^ 0x40]))
    s = PostingStore.open(tmp_path / "p", directory, writable=True, verify="lazy")
    before = s.dir.copy()
    for _ in range(3):  # the maintenance thread retries the step
        with pytest.raises(CorruptionError):
            s.append_many(pids, starts, recs, grow_to=41)
    assert np.array_equal(s.dir.count, before.count)  # no in-place group was appended, once or three times
    s.close()


def test_space_freed_bit_by_bit_on_a_full_disk_lets_the_retried_batch_through(small_disk):
    """The operator frees 128 KB at a time while the step retries the same batch, which needs 100 fresh one-page
    extents (400 KB): it must succeed long before 4x that is freed (it never did when failed attempts kept theirs)."""
    disk = small_disk
    rng = np.random.default_rng(0)
    s = _store(disk.path / "p", rng)
    s.sync()
    filler = disk.path / "filler"
    size = disk.free_bytes() - 16 * 1024
    filler.write_bytes(b"\0" * size)
    pids, starts, recs = _batch(s, rng)
    freed = 0
    while True:
        try:
            s.append_many(pids, starts, recs, grow_to=41)
            break
        except OSError as e:
            assert e.errno == errno.ENOSPC
            assert freed < 4 * 400 * 1024, f"still failing after {freed >> 10} KB were freed"
            freed += 128 * 1024
            os.truncate(filler, size - freed)
    assert (s.dir.count == 20 + PER_GROUP).all()
    assert s.verify_all() == []
    s.close()


@pytest.mark.parametrize("starts", [[0, 3, 2, 6], [-1, 1, 2, 3], [0, 1, 2, 99]])
def test_a_batch_with_bad_group_bounds_is_refused(tmp_path, starts):
    rng = np.random.default_rng(1)
    s = _store(tmp_path / "p", rng)
    before = s.dir.copy()
    with pytest.raises(ValueError):
        s.append_many(np.array([100, 101, 102]), np.array(starts), _records(s, 6, rng))
    assert np.array_equal(s.dir.count, before.count)
    s.close()
