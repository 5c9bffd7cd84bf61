"""A full disk refuses a WAL record cleanly, before it is logged, and the log goes on once there is room
(issue 11.6). The space for records is allocated ahead of them (WriteAheadLog._reserve), so a full disk is never a
half-written record or a failed log."""
from __future__ import annotations

import pytest

from faultfs import FaultyFS
from storage.errors import DiskFullError
from storage.wal import WriteAheadLog


def test_a_record_that_does_not_fit_is_refused_and_the_log_stays_usable():
    fs = FaultyFS()
    wal = WriteAheadLog("/wal", fs=fs)
    fs.capacity = fs.used() + 200  # room for the first record (not for a whole reservation chunk), then not
    assert wal.append(1, b"a" * 100) == 1
    with pytest.raises(DiskFullError):
        wal.append(1, b"b" * 1000)
    assert wal.last_lsn == 1 and wal.stats()["buffered_bytes"] == 0  # nothing of it was taken
    fs.capacity = None  # the operator freed space
    assert wal.append(1, b"c") == 2  # no LSN was burnt by the refusal
    fs.crash()
    with WriteAheadLog("/wal", fs=fs) as again:
        assert [(r.lsn, r.payload) for r in again.replay()] == [(1, b"a" * 100), (2, b"c")]


def test_no_room_for_the_next_segment_keeps_the_current_one_active():
    fs = FaultyFS()
    wal = WriteAheadLog("/wal", fs=fs, segment_bytes=256)
    for i in range(5):
        wal.append(1, b"%d" % i * 40)
    segments_before = len(fs.listdir("/wal"))
    fs.capacity = fs.used()  # not even a segment header fits now
    with pytest.raises(DiskFullError):
        for i in range(10):  # the segment fills up; the rotation then meets the full disk
            wal.append(1, b"x" * 40)
    assert len(fs.listdir("/wal")) == segments_before  # no stub segment left behind
    lsn = wal.last_lsn
    fs.capacity = None
    assert wal.append(1, b"after") == lsn + 1
    fs.crash()
    with WriteAheadLog("/wal", fs=fs) as again:
        lsns = [r.lsn for r in again.replay()]
    assert lsns == list(range(1, lsn + 2))


def test_an_acknowledged_record_never_depends_on_space_found_later():
    """Every byte of an acknowledged record was reserved (and written, and fsync'd) before the ack: filling the
    disk afterwards and crashing loses nothing acknowledged."""
    fs = FaultyFS()
    wal = WriteAheadLog("/wal", fs=fs)
    acked = [wal.append(1, b"r%d" % i) for i in range(20)]
    fs.capacity = fs.used()
    with pytest.raises(DiskFullError):
        while True:
            acked.append(wal.append(1, b"y" * 2000))
    fs.crash()
    fs.capacity = None
    with WriteAheadLog("/wal", fs=fs) as again:
        assert [r.lsn for r in again.replay()] == acked
