"""Tests of the write-ahead log (spec: docs/wal_format.md), one scenario each, after LevelDB's log_test.cc.

Byte-level damage is done with small helpers on real files; crashes are simulated with FaultyFS (which
forgets whatever was not fsync'd) and with real SIGKILLs of a child process (wal_child.py).
"""
from __future__ import annotations

import logging
import os
import random
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faultfs import FaultyFS
from storage.errors import CorruptionError, LockedError
from storage.wal import WalCorruptionError, WalFailedError, WalRecord, WriteAheadLog
from storage.wal.format import MAX_PAYLOAD
from wal_child import SEGMENT_BYTES as CHILD_SEGMENT_BYTES
from wal_child import payload_for, rtype_for

HEADER, RECORD = 32, 17  # segment header and record header sizes, from the spec
ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------- helpers

def encode(lsn: int, rtype: int, payload: bytes) -> bytes:
    """A record encoded from the spec alone (not with the writer's code)."""
    body = struct.pack("<IQB", len(payload), lsn, rtype) + payload
    return struct.pack("<I", zlib.crc32(body)) + body


def make_payloads(n: int, seed: int = 0, max_len: int = 100) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(rng.randrange(max_len)) for _ in range(n)]


def write(directory, payloads, **kw) -> list[int]:
    with WriteAheadLog(directory, **kw) as wal:
        return [wal.append(1, p) for p in payloads]


def read_all(directory, **kw) -> list[bytes]:
    with WriteAheadLog(directory, **kw) as wal:
        records = list(wal.replay())
    assert [r.lsn for r in records] == list(range(1, len(records) + 1))
    return [r.payload for r in records]


def segments(directory) -> list[Path]:
    return sorted(Path(directory).glob("wal-*.log"))


def record_offset(payloads, i: int) -> int:
    """Byte offset of record i (0-based) in a log that fits in one segment."""
    return HEADER + sum(RECORD + len(p) for p in payloads[:i])


def flip(path, offset: int, xor: int = 0x01) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b ^ xor]))


def append_raw(path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def chop(path, nbytes: int) -> None:
    os.truncate(path, os.path.getsize(path) - nbytes)


@pytest.fixture
def wal_dir(tmp_path) -> Path:
    return tmp_path / "wal"


# ---------------------------------------------------------------------------------------------- basics

def test_empty_log_replays_nothing(wal_dir):
    with WriteAheadLog(wal_dir) as wal:
        assert list(wal.replay()) == []
        assert (wal.last_lsn, wal.durable_lsn) == (0, 0)
    assert [p.name for p in segments(wal_dir)] == ["wal-00000000000000000001.log"]


def test_one_record_round_trip(wal_dir):
    with WriteAheadLog(wal_dir) as wal:
        assert wal.append(7, b"hello") == 1
        assert list(wal.replay()) == [WalRecord(1, 7, b"hello")]
    with WriteAheadLog(wal_dir) as wal:
        assert list(wal.replay()) == [WalRecord(1, 7, b"hello")]


def test_many_records_round_trip(wal_dir):
    payloads = make_payloads(2000, max_len=300)
    assert write(wal_dir, payloads) == list(range(1, 2001))
    assert read_all(wal_dir) == payloads


def test_empty_payload(wal_dir):
    write(wal_dir, [b"", b"x", b""])
    assert read_all(wal_dir) == [b"", b"x", b""]


def test_record_types_round_trip(wal_dir):
    with WriteAheadLog(wal_dir) as wal:
        wal.append_many([(1, b"a"), (127, b"b")])
    with WriteAheadLog(wal_dir) as wal:
        assert [r.rtype for r in wal.replay()] == [1, 127]


def test_numpy_integers_are_accepted_as_types_and_lsns(wal_dir):
    np = pytest.importorskip("numpy")
    with WriteAheadLog(wal_dir) as wal:
        assert wal.append(np.int64(3), b"x") == 1
        wal.register_consumer("index")
        wal.mark_applied("index", np.uint64(1))
        assert wal.stats()["consumers"] == {"index": 1}


def test_bytearray_and_memoryview_payloads_are_copied(wal_dir):
    buf = bytearray(b"abc")
    with WriteAheadLog(wal_dir) as wal:
        wal.append_many([(1, buf), (1, memoryview(b"xyz"))])
        buf[0] = ord("Z")  # the caller may reuse its buffer once append returned
    assert read_all(wal_dir) == [b"abc", b"xyz"]


def test_append_many_gets_consecutive_lsns_and_empty_list_is_a_no_op(wal_dir):
    with WriteAheadLog(wal_dir) as wal:
        assert wal.append_many([]) == []
        assert wal.append(1, b"a") == 1
        assert wal.append_many([(1, b"b"), (2, b"c"), (3, b"d")]) == [2, 3, 4]
        assert wal.stats()["appends"] == 4


def test_payload_bigger_than_a_segment_goes_alone_into_one(wal_dir):
    big = bytes(range(256)) * 20  # 5120 bytes, segments of 1 KiB
    write(wal_dir, [b"a", big, b"b"], segment_bytes=1024)
    assert read_all(wal_dir) == [b"a", big, b"b"]
    names = [p.name for p in segments(wal_dir)]
    assert names == ["wal-00000000000000000001.log", "wal-00000000000000000002.log",
                     "wal-00000000000000000003.log"]
    assert os.path.getsize(segments(wal_dir)[1]) == HEADER + RECORD + len(big)


def test_rotation_creates_new_segments_and_replay_crosses_them(wal_dir):
    payloads = make_payloads(300, seed=1)
    write(wal_dir, payloads, segment_bytes=1024)
    segs = segments(wal_dir)
    assert len(segs) > 10
    assert all(os.path.getsize(p) <= 1024 for p in segs)
    assert read_all(wal_dir, segment_bytes=1024) == payloads


def test_segment_names_carry_their_first_lsn(wal_dir):
    write(wal_dir, [b"x" * 100] * 10, segment_bytes=300)
    assert len(segments(wal_dir)) == 5
    for path in segments(wal_dir):
        first = int(re.match(r"wal-(\d{20})\.log", path.name).group(1))
        assert struct.unpack_from("<Q", path.read_bytes(), 16)[0] == first
        assert struct.unpack_from("<Q", path.read_bytes(), HEADER + 8)[0] == first


def test_replay_after_lsn_skips_older_records(wal_dir):
    write(wal_dir, [b"%d" % i for i in range(1, 51)], segment_bytes=256)
    with WriteAheadLog(wal_dir, segment_bytes=256) as wal:
        assert [r.lsn for r in wal.replay(after_lsn=37)] == list(range(38, 51))
        assert list(wal.replay(after_lsn=50)) == []
        assert list(wal.replay(after_lsn=999)) == []


def test_reopen_continues_lsns(wal_dir):
    assert write(wal_dir, [b"a", b"b"]) == [1, 2]
    assert write(wal_dir, [b"c"]) == [3]
    assert read_all(wal_dir) == [b"a", b"b", b"c"]


def test_replay_on_an_open_log_sees_every_appended_record(wal_dir):
    with WriteAheadLog(wal_dir, segment_bytes=200) as wal:
        for i in range(20):
            wal.append(1, b"%d" % i)
        it = wal.replay()
        assert next(it).lsn == 1
        wal.append(1, b"later")  # not part of the snapshot taken by the running replay
        assert [r.lsn for r in it] == list(range(2, 21))
        assert [r.lsn for r in wal.replay(after_lsn=20)] == [21]


def test_stats_report_segments_bytes_and_lsns(wal_dir):
    with WriteAheadLog(wal_dir, segment_bytes=256) as wal:
        wal.append_many([(1, b"x" * 100)] * 5)
        s = wal.stats()
    assert (s["last_lsn"], s["durable_lsn"], s["appends"], s["policy"]) == (5, 5, 5, "fsync")
    assert s["segments"] == len(segments(wal_dir)) and s["segments"] > 1
    assert s["bytes"] == sum(os.path.getsize(p) for p in segments(wal_dir))
    assert s["fsyncs"] > 0 and s["consumers"] == {}


# ---------------------------------------------------------------------------------------------- argument checks

@pytest.mark.parametrize("rtype", [0, 128, 255, -1, True, 1.0, "1"])
def test_invalid_record_type_is_refused(wal_dir, rtype):
    with WriteAheadLog(wal_dir) as wal:
        with pytest.raises(ValueError, match="record type"):
            wal.append(rtype, b"x")
        assert wal.last_lsn == 0


def test_payload_over_the_limit_is_refused(wal_dir):
    with WriteAheadLog(wal_dir) as wal:
        with pytest.raises(ValueError, match="exceeds"):
            wal.append(1, bytes(MAX_PAYLOAD + 1))  # calloc'd: no memory is touched
        with pytest.raises(TypeError):
            wal.append(1, "text")
        with pytest.raises(ValueError):  # nothing of a refused batch is written
            wal.append_many([(1, b"ok"), (0, b"bad")])
        assert wal.last_lsn == 0


@pytest.mark.parametrize("kw", [{"durability": "sometimes"}, {"segment_bytes": 10}, {"batch_delay_ms": 0}])
def test_bad_options_are_refused(wal_dir, kw):
    with pytest.raises(ValueError):
        WriteAheadLog(wal_dir, **kw)


def test_close_is_idempotent_and_later_appends_are_refused(wal_dir):
    wal = WriteAheadLog(wal_dir)
    wal.append(1, b"a")
    wal.close()
    wal.close()
    with pytest.raises(ValueError, match="closed"):
        wal.append(1, b"b")
    with pytest.raises(ValueError, match="closed"):
        wal.sync()


def test_second_open_of_the_same_directory_is_refused(wal_dir):
    with WriteAheadLog(wal_dir):
        with pytest.raises(LockedError):
            WriteAheadLog(wal_dir)
    with WriteAheadLog(wal_dir):  # released by close
        pass


# ---------------------------------------------------------------------------------------------- torn tails

def test_torn_header_at_tail_is_a_clean_end_and_the_next_append_works(wal_dir, caplog):
    write(wal_dir, [b"a", b"b", b"c"])
    append_raw(segments(wal_dir)[-1], encode(4, 1, b"dddd")[:10])
    with caplog.at_level(logging.WARNING, logger="storage.wal"):
        with WriteAheadLog(wal_dir) as wal:
            assert wal.last_lsn == 3
            assert wal.append(1, b"d") == 4
    assert "torn final write" in caplog.text and "dropping 10 bytes" in caplog.text
    assert read_all(wal_dir) == [b"a", b"b", b"c", b"d"]


def test_torn_payload_at_tail_is_a_clean_end(wal_dir, caplog):
    write(wal_dir, [b"a", b"b", b"c" * 50])
    chop(segments(wal_dir)[-1], 20)
    with caplog.at_level(logging.WARNING, logger="storage.wal"):
        assert read_all(wal_dir) == [b"a", b"b"]
    assert "dropping 47 bytes" in caplog.text  # 17 + 50 - 20
    assert write(wal_dir, [b"c"]) == [3]


def test_bad_checksum_on_the_last_record_is_a_torn_write(wal_dir):
    payloads = [b"a" * 10, b"b" * 10, b"c" * 10]
    write(wal_dir, payloads)
    flip(segments(wal_dir)[-1], record_offset(payloads, 2) + RECORD + 3)
    assert read_all(wal_dir) == payloads[:2]


def test_zero_filled_tail_is_a_torn_write(wal_dir):
    write(wal_dir, [b"a", b"b"])
    append_raw(segments(wal_dir)[-1], bytes(4096))  # space the kernel allocated but never wrote
    assert read_all(wal_dir) == [b"a", b"b"]
    assert os.path.getsize(segments(wal_dir)[-1]) == record_offset([b"a", b"b"], 2)


def test_torn_segment_creation_is_rewritten_and_used(wal_dir):
    write(wal_dir, [b"a", b"b"])
    (wal_dir / "wal-00000000000000000003.log").write_bytes(b"VDBWAL01\x01\x00")  # died mid-header
    with WriteAheadLog(wal_dir) as wal:
        assert wal.append(1, b"c") == 3
    assert read_all(wal_dir) == [b"a", b"b", b"c"]
    assert len(segments(wal_dir)) == 2


def test_empty_segment_after_rotation_is_valid(wal_dir):
    write(wal_dir, [b"a"])
    with WriteAheadLog(wal_dir) as wal:
        seg = segments(wal_dir)[0].read_bytes()
    new = bytearray(seg[:HEADER])
    new[16:24] = struct.pack("<Q", 2)
    new[28:32] = struct.pack("<I", zlib.crc32(bytes(new[:28])))
    (wal_dir / "wal-00000000000000000002.log").write_bytes(bytes(new))
    with WriteAheadLog(wal_dir) as wal:
        assert wal.append(1, b"b") == 2
    assert read_all(wal_dir) == [b"a", b"b"]


# ---------------------------------------------------------------------------------------------- corruption

def test_bad_checksum_in_the_middle_raises_naming_file_offset_and_bytes(wal_dir):
    payloads = [b"a" * 10, b"b" * 20, b"c" * 30, b"d" * 40]
    write(wal_dir, payloads)
    seg = segments(wal_dir)[0]
    flip(seg, record_offset(payloads, 1) + RECORD + 5)
    with pytest.raises(WalCorruptionError) as err:
        WriteAheadLog(wal_dir)
    e = err.value
    assert isinstance(e, CorruptionError)
    assert (e.path, e.offset, e.length) == (str(seg), record_offset(payloads, 1), RECORD + 20)
    assert f"{seg}: record checksum mismatch" in str(e)
    assert f"at byte offset {record_offset(payloads, 1)} ({RECORD + 20} bytes affected)" in str(e)
    assert "repair=True" in str(e)


def test_bad_checksum_in_the_middle_with_repair_truncates_loudly(wal_dir, caplog):
    payloads = [b"a" * 10, b"b" * 20, b"c" * 30, b"d" * 40]
    write(wal_dir, payloads)
    seg = segments(wal_dir)[0]
    flip(seg, record_offset(payloads, 1) + RECORD + 5)
    with caplog.at_level(logging.ERROR, logger="storage.wal"):
        with WriteAheadLog(wal_dir, repair=True) as wal:
            assert [r.payload for r in wal.replay()] == payloads[:1]
            assert wal.append(1, b"new") == 2
    [rec] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert str(seg) in rec and f"offset {record_offset(payloads, 1)}" in rec
    assert "LSN 2 and every later LSN" in rec and "LOST" in rec
    assert f"dropping {RECORD + 20 + RECORD + 30 + RECORD + 40} bytes" in rec
    assert read_all(wal_dir) == [payloads[0], b"new"]


def test_corrupt_length_in_the_middle_is_not_mistaken_for_a_torn_tail(wal_dir):
    payloads = [b"a" * 10, b"b" * 10, b"c" * 10]
    write(wal_dir, payloads)
    seg = segments(wal_dir)[0]
    flip(seg, record_offset(payloads, 0) + 4, xor=0x80)  # length 10 -> 138: "runs past the end of the file"
    with pytest.raises(WalCorruptionError, match="runs past the end") as err:
        WriteAheadLog(wal_dir)
    assert err.value.offset == HEADER


def test_record_with_good_checksum_but_wrong_lsn_is_corruption(wal_dir):
    write(wal_dir, [b"a", b"b"])
    append_raw(segments(wal_dir)[-1], encode(7, 1, b"c"))
    with pytest.raises(WalCorruptionError, match="LSN 7 where 3 was expected"):
        WriteAheadLog(wal_dir)


def test_reserved_record_type_is_corruption(wal_dir):
    write(wal_dir, [b"a"])
    append_raw(segments(wal_dir)[-1], encode(2, 200, b"from a newer writer"))
    with pytest.raises(WalCorruptionError, match="invalid type 200"):
        WriteAheadLog(wal_dir)


def test_flipped_byte_in_a_non_final_segment_raises(wal_dir):
    write(wal_dir, make_payloads(100, seed=2), segment_bytes=512)
    seg = segments(wal_dir)[1]
    flip(seg, os.path.getsize(seg) - 1)  # last byte of the segment: would be a "torn tail" in the last one
    with pytest.raises(WalCorruptionError) as err:
        WriteAheadLog(wal_dir, segment_bytes=512)
    assert err.value.path == str(seg)


def test_torn_end_of_a_non_final_segment_is_corruption(wal_dir):
    write(wal_dir, make_payloads(100, seed=3), segment_bytes=512)
    chop(segments(wal_dir)[0], 5)
    with pytest.raises(WalCorruptionError, match="runs past the end"):
        WriteAheadLog(wal_dir)


def test_damaged_segment_header_is_corruption(wal_dir):
    write(wal_dir, [b"a", b"b"])
    flip(segments(wal_dir)[0], 3)
    with pytest.raises(WalCorruptionError, match="segment header checksum") as err:
        WriteAheadLog(wal_dir)
    assert (err.value.offset, err.value.length) == (0, HEADER)


def test_deleted_middle_segment_raises(wal_dir):
    write(wal_dir, make_payloads(100, seed=4), segment_bytes=512)
    segs = segments(wal_dir)
    segs[2].unlink()
    with pytest.raises(WalCorruptionError, match="LSN gap") as err:
        WriteAheadLog(wal_dir)
    assert err.value.path == str(segs[3])


def test_deleted_middle_segment_with_repair_keeps_the_prefix(wal_dir, caplog):
    payloads = make_payloads(100, seed=4)
    write(wal_dir, payloads, segment_bytes=512)
    segs = segments(wal_dir)
    segs[2].unlink()
    kept = int(segs[2].name[4:24]) - 1
    with caplog.at_level(logging.ERROR, logger="storage.wal"):
        assert read_all(wal_dir, repair=True) == payloads[:kept]
    assert "WAL REPAIR" in caplog.text
    assert segments(wal_dir) == segs[:2]
    assert write(wal_dir, [b"next"]) == [kept + 1]


def test_consumers_file_without_segments_is_corruption(wal_dir):
    with WriteAheadLog(wal_dir) as wal:
        wal.register_consumer("index")
    for p in segments(wal_dir):
        p.unlink()
    with pytest.raises(WalCorruptionError, match="no segment file"):
        WriteAheadLog(wal_dir)


# ---------------------------------------------------------------------------------------------- consumers and purge

def fill(wal, n: int, size: int = 100) -> None:
    for i in range(n):
        wal.append(1, bytes([i % 256]) * size)


def test_purge_without_consumers_deletes_nothing(wal_dir):
    with WriteAheadLog(wal_dir, segment_bytes=512) as wal:
        fill(wal, 50)
        assert wal.purge() == 0
    assert len(read_all(wal_dir)) == 50


def test_purge_keeps_segments_a_lagging_consumer_needs_and_deletes_the_rest(wal_dir):
    with WriteAheadLog(wal_dir, segment_bytes=512) as wal:
        fill(wal, 50)  # 4 records of 117 bytes per segment
        assert wal.register_consumer("index") == 0
        assert wal.register_consumer("cache") == 0
        wal.mark_applied("index", 50)
        wal.mark_applied("cache", 21)
        before = wal.stats()["segments"]
        freed = wal.purge()
        assert freed == 5 * (HEADER + 4 * 117)  # LSNs 1..20 lived in five full segments
        assert wal.stats()["segments"] == before - 5
        assert [r.lsn for r in wal.replay(after_lsn=21)][0] == 22
        assert wal.stats()["first_lsn"] == 21


def test_purge_never_deletes_the_active_segment(wal_dir):
    with WriteAheadLog(wal_dir, segment_bytes=512) as wal:
        fill(wal, 10)
        wal.register_consumer("index")
        wal.mark_applied("index", 10)
        wal.purge()
        assert wal.stats()["segments"] == 1
        assert wal.append(1, b"more") == 11
    with WriteAheadLog(wal_dir) as wal:
        assert [r.lsn for r in wal.replay(after_lsn=10)] == [11]


def test_consumers_and_purge_persist_across_reopen(wal_dir):
    with WriteAheadLog(wal_dir, segment_bytes=512) as wal:
        fill(wal, 50)
        wal.register_consumer("index")
        wal.mark_applied("index", 30)
        wal.purge()
    with WriteAheadLog(wal_dir, segment_bytes=512) as wal:
        assert wal.stats()["consumers"] == {"index": 30}
        assert wal.register_consumer("index") == 30  # idempotent
        assert [r.lsn for r in wal.replay(after_lsn=30)] == list(range(31, 51))
        assert wal.last_lsn == 50
        assert wal.purge() == 0


def test_new_consumer_starts_at_the_oldest_stored_record(wal_dir):
    with WriteAheadLog(wal_dir, segment_bytes=512) as wal:
        fill(wal, 50)
        wal.register_consumer("index")
        wal.mark_applied("index", 40)
        wal.purge()
        start = wal.register_consumer("late")
        assert start == wal.stats()["first_lsn"] - 1 > 0
        assert len(list(wal.replay(after_lsn=start))) == 50 - start


def test_replay_before_the_purged_range_raises(wal_dir):
    with WriteAheadLog(wal_dir, segment_bytes=512) as wal:
        fill(wal, 50)
        wal.register_consumer("index")
        wal.mark_applied("index", 50)
        wal.purge()
        with pytest.raises(ValueError, match="purged"):
            list(wal.replay(after_lsn=0))


def test_mark_applied_refuses_unknown_consumers_going_back_and_the_future(wal_dir):
    with WriteAheadLog(wal_dir) as wal:
        fill(wal, 5)
        with pytest.raises(KeyError):
            wal.mark_applied("nobody", 1)
        wal.register_consumer("index")
        wal.mark_applied("index", 3)
        with pytest.raises(ValueError):
            wal.mark_applied("index", 2)
        with pytest.raises(ValueError):
            wal.mark_applied("index", 6)
        with pytest.raises(ValueError):
            wal.register_consumer("")


def test_purge_spares_segments_a_running_replay_still_reads(wal_dir):
    with WriteAheadLog(wal_dir, segment_bytes=512) as wal:
        fill(wal, 50)
        wal.register_consumer("index")
        it = wal.replay()
        assert next(it).lsn == 1
        wal.mark_applied("index", 50)
        assert wal.purge() == 0  # the replay still needs the first segment
        assert len(list(it)) == 49
        assert wal.purge() > 0


def test_mark_applied_makes_the_log_durable_first():
    fs = FaultyFS()
    wal = WriteAheadLog("/wal", durability="batch", batch_delay_ms=60_000, fs=fs)
    wal.register_consumer("index")
    fill(wal, 3)
    wal.mark_applied("index", 3)
    fs.crash()
    with WriteAheadLog("/wal", fs=fs) as wal:
        assert wal.last_lsn == 3 and wal.stats()["consumers"] == {"index": 3}


# ---------------------------------------------------------------------------------------------- durability

def test_group_commit_shares_fsyncs_between_concurrent_appenders():
    """While one fsync is in flight, seven more appenders write their records; the next fsync covers all seven:
    2 fsyncs for 8 acknowledged appends. Deterministic: the test holds the first flush until every record is
    written (it waits on the log's state, never on time)."""
    fs = FaultyFS()
    wal = WriteAheadLog("/wal", fs=fs)
    before = wal.stats()["fsyncs"]
    entered, release = threading.Event(), threading.Event()

    def hold():
        entered.set()
        release.wait()
    fs.fsync_hook = hold
    first = threading.Thread(target=wal.append, args=(1, b"first"))
    first.start()
    assert entered.wait(30)  # the first append leads an fsync and is held inside it
    others = [threading.Thread(target=wal.append, args=(1, b"%d" % i)) for i in range(7)]
    for t in others:
        t.start()
    for _ in range(30_000):  # until every record is handed to the OS and all seven wait for a flush
        if wal.stats()["written_lsn"] == 8:
            break
        time.sleep(0.001)
    assert wal.stats()["written_lsn"] == 8
    assert wal.durable_lsn == 0
    release.set()
    for t in [first, *others]:
        t.join()
    assert wal.durable_lsn == 8
    assert wal.stats()["fsyncs"] - before == 2
    fs.crash()
    with WriteAheadLog("/wal", fs=fs) as wal:
        assert sorted(r.payload for r in wal.replay()) == sorted([b"first", *(b"%d" % i for i in range(7))])


def test_many_concurrent_appenders_lose_nothing_across_a_crash():
    fs = FaultyFS(fsync_delay=0.002)  # a disk flush that takes time, as a real one does
    wal = WriteAheadLog("/wal", fs=fs)
    acked, not_durable = [], []

    def appender(t: int) -> None:
        for i in range(200):
            payload = b"%d:%d" % (t, i)
            lsn = wal.append(1, payload)
            if wal.durable_lsn < lsn:
                not_durable.append(lsn)
            acked.append((lsn, payload))

    threads = [threading.Thread(target=appender, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not not_durable
    assert sorted(lsn for lsn, _ in acked) == list(range(1, 1601))
    fs.crash()
    with WriteAheadLog("/wal", fs=fs) as wal:
        assert {r.lsn: r.payload for r in wal.replay()} == dict(acked)


@pytest.mark.parametrize("seed", range(4))
def test_fsync_policy_crash_keeps_every_acknowledged_lsn(seed):
    """Crash while 4 threads append across rotations; torn, un-fsync'd tails are kept at random."""
    rng = random.Random(seed)
    fs = FaultyFS(fsync_delay=0.0003)
    wal = WriteAheadLog("/wal", fs=fs, segment_bytes=2048)
    acked: dict[int, bytes] = {}
    unexpected: list[BaseException] = []

    def appender(t: int) -> None:
        for i in range(10**6):
            payload = b"%d-%d;" % (t, i) * (1 + i % 7)
            try:
                acked[wal.append(1 + t, payload)] = payload
            except WalFailedError:
                return
            except BaseException as e:
                unexpected.append(e)
                return

    threads = [threading.Thread(target=appender, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    time.sleep(rng.uniform(0.02, 0.1))
    fs.crash(rng, restart=False)  # every later call of the dead process fails
    for t in threads:
        t.join()
    fs.restart()
    assert acked and not unexpected
    with WriteAheadLog("/wal", fs=fs, segment_bytes=2048) as wal:
        got = {r.lsn: r.payload for r in wal.replay()}
        assert sorted(got) == list(range(1, len(got) + 1))
        assert all(got[lsn] == payload for lsn, payload in acked.items())
        assert wal.append(1, b"after") == len(got) + 1


def test_new_segment_is_durable_before_its_first_record_is_acknowledged():
    fs = FaultyFS()
    wal = WriteAheadLog("/wal", fs=fs, segment_bytes=200)
    fill(wal, 3)  # 117-byte records: each goes into a new segment
    fs.crash()
    with WriteAheadLog("/wal", fs=fs) as wal:
        assert wal.last_lsn == 3 and wal.stats()["segments"] == 3


def test_unacknowledged_records_are_not_required_to_survive():
    fs = FaultyFS()
    wal = WriteAheadLog("/wal", fs=fs, durability="none")
    fill(wal, 5)
    fs.crash()
    with WriteAheadLog("/wal", fs=fs) as wal:
        assert wal.last_lsn == 0  # a clean, empty log: nothing beyond the durable point was needed


def test_batch_policy_survives_a_crash_after_the_flush_interval():
    fs = FaultyFS()
    wal = WriteAheadLog("/wal", fs=fs, durability="batch", batch_delay_ms=5)
    fill(wal, 50)
    deadline = time.monotonic() + 5
    while wal.durable_lsn < 50 and time.monotonic() < deadline:
        time.sleep(0.005)
    fs.crash()
    with WriteAheadLog("/wal", fs=fs) as wal:
        assert wal.last_lsn == 50


def test_batch_policy_acknowledges_before_fsync_and_sync_makes_it_durable():
    fs = FaultyFS()
    wal = WriteAheadLog("/wal", fs=fs, durability="batch", batch_delay_ms=60_000)
    fill(wal, 10)
    assert (wal.last_lsn, wal.durable_lsn) == (10, 0)  # acknowledged, not yet durable: the loss window
    wal.sync()
    assert wal.durable_lsn == 10
    fill(wal, 5)
    fs.crash()
    with WriteAheadLog("/wal", fs=fs) as wal:
        assert wal.last_lsn == 10


def test_batch_policy_loses_nothing_on_a_process_crash():
    fs = FaultyFS()
    wal = WriteAheadLog("/wal", fs=fs, durability="batch", batch_delay_ms=60_000)
    fill(wal, 10)
    fs.process_crash()  # the data was handed to the OS before append returned
    with WriteAheadLog("/wal", fs=fs) as wal:
        assert wal.last_lsn == 10


def test_none_policy_is_lossy_on_a_process_crash():
    fs = FaultyFS()
    wal = WriteAheadLog("/wal", fs=fs, durability="none")
    fill(wal, 10)
    fs.process_crash()  # documented: acknowledged records still in process memory are gone
    with WriteAheadLog("/wal", fs=fs) as wal:
        assert wal.last_lsn == 0


def test_none_policy_sync_then_crash_keeps_everything():
    fs = FaultyFS()
    wal = WriteAheadLog("/wal", fs=fs, durability="none")
    fill(wal, 10)
    assert wal.stats()["buffered_bytes"] == 10 * 117
    wal.sync()
    fs.crash()
    with WriteAheadLog("/wal", fs=fs) as wal:
        assert wal.last_lsn == 10


def test_none_policy_writes_to_the_os_when_its_buffer_is_full():
    fs = FaultyFS()
    wal = WriteAheadLog("/wal", fs=fs, durability="none")
    fill(wal, 11, size=100_000)  # passes the 1 MiB buffer
    assert wal.stats()["written_lsn"] == 11
    fs.process_crash()
    with WriteAheadLog("/wal", fs=fs) as wal:
        assert wal.last_lsn == 11


def test_failed_fsync_fails_the_log_and_reopening_recovers(caplog):
    fs = FaultyFS()
    wal = WriteAheadLog("/wal", fs=fs)
    fill(wal, 3)
    fs.fail_fsync = True
    with caplog.at_level(logging.ERROR, logger="storage.wal"):
        with pytest.raises(WalFailedError):
            wal.append(1, b"lost?")
    fs.fail_fsync = False
    with pytest.raises(WalFailedError):  # no retry after a failed fsync, even if the disk is back
        wal.append(1, b"again")
    with pytest.raises(WalFailedError):
        wal.close()
    wal.close()
    fs.crash()
    with WriteAheadLog("/wal", fs=fs) as wal:
        assert wal.last_lsn == 3


# ---------------------------------------------------------------------------------------------- properties

record_lists = st.lists(st.tuples(st.integers(1, 127), st.binary(max_size=200)), max_size=40)


@settings(max_examples=60, deadline=None)
@given(records=record_lists, segment_bytes=st.sampled_from([64, 300, 4096]), batch=st.integers(1, 5))
def test_round_trip_property(records, segment_bytes, batch):
    fs = FaultyFS()
    with WriteAheadLog("/wal", fs=fs, segment_bytes=segment_bytes) as wal:
        lsns = []
        for i in range(0, len(records), batch):
            lsns += wal.append_many(records[i:i + batch])
    assert lsns == list(range(1, len(records) + 1))
    with WriteAheadLog("/wal", fs=fs, segment_bytes=segment_bytes) as wal:
        assert [(r.rtype, r.payload) for r in wal.replay()] == records


def build_log(fs: FaultyFS, payloads: list[bytes]) -> list[str]:
    with WriteAheadLog("/wal", fs=fs, segment_bytes=300) as wal:
        for p in payloads:
            wal.append(1, p)
    return sorted("/wal/" + n for n in fs.listdir("/wal") if n.startswith("wal-"))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payloads=st.lists(st.binary(min_size=1, max_size=80), min_size=1, max_size=25), data=st.data())
def test_any_flipped_byte_is_reported_or_drops_only_the_last_record(payloads, data):
    fs = FaultyFS()
    segs = build_log(fs, payloads)
    path = data.draw(st.sampled_from(segs))
    offset = data.draw(st.integers(0, fs.size(path) - 1))
    fs.corrupt(path, offset, xor=data.draw(st.integers(1, 255)))
    last_record = fs.size(segs[-1]) - RECORD - len(payloads[-1])
    if path != segs[-1] or offset < last_record:
        with pytest.raises(WalCorruptionError):
            WriteAheadLog("/wal", fs=fs)
    else:
        with WriteAheadLog("/wal", fs=fs) as wal:
            assert [r.payload for r in wal.replay()] == payloads[:-1]


@settings(max_examples=100, deadline=None)
@given(payloads=st.lists(st.binary(max_size=80), min_size=1, max_size=25), data=st.data())
def test_any_cut_of_the_last_segment_leaves_a_clean_prefix(payloads, data):
    fs = FaultyFS()
    segs = build_log(fs, payloads)
    size = fs.size(segs[-1])
    keep = data.draw(st.integers(0, size - 1))
    f = fs.open(segs[-1])
    f.truncate(keep)
    f.fsync()
    with WriteAheadLog("/wal", fs=fs) as wal:
        got = [r.payload for r in wal.replay()]
    assert got == payloads[:len(got)]
    # the records of the last segment that ended at or before the cut are all there
    first_in_last = int(os.path.basename(segs[-1])[4:24]) - 1
    ends = [HEADER]
    for p in payloads[first_in_last:]:
        ends.append(ends[-1] + RECORD + len(p))
    assert len(got) == first_in_last + sum(1 for e in ends[1:] if e <= keep)


# ---------------------------------------------------------------------------------------------- spec

def test_spec_worked_example_matches_the_writer():
    fs = FaultyFS()
    with WriteAheadLog("/wal", fs=fs) as wal:
        wal.append(1, b"hello")
        wal.append(2, b"")
    written = fs.read("/wal/wal-00000000000000000001.log")
    spec = (ROOT / "docs" / "wal_format.md").read_text()
    block = re.search(r"```hex\n(.*?)```", spec, re.S).group(1)
    example = bytearray()
    for line in block.splitlines():
        offset, _, rest = line.split("#")[0].partition(":")
        assert int(offset, 16) == len(example), line
        example += bytes.fromhex(rest)
    assert bytes(example) == written


def test_spec_worked_example_damage_scenarios(wal_dir, caplog):
    write(wal_dir, [b"hello"])
    with WriteAheadLog(wal_dir) as wal:
        wal.append(2, b"")
    seg = segments(wal_dir)[0]
    append_raw(seg, b"\xa1\x0b\x00")
    with caplog.at_level(logging.WARNING, logger="storage.wal"):
        with WriteAheadLog(wal_dir) as wal:
            assert wal.append(1, b"x") == 3
    assert "at byte offset 71" in caplog.text and "dropping 3 bytes" in caplog.text
    chop(seg, RECORD + 1)  # back to the 71 bytes of the example
    flip(seg, 0x33)
    with pytest.raises(WalCorruptionError) as err:
        WriteAheadLog(wal_dir)
    assert (err.value.path, err.value.offset, err.value.length) == (str(seg), 32, 22)


# ---------------------------------------------------------------------------------------------- SIGKILL

def test_sigkill_loses_no_acknowledged_record(wal_dir):
    """A real process appends with policy fsync and is killed at random moments, five times in a row."""
    rng = random.Random(20240611)
    printed: list[int] = []
    for _ in range(5):
        child = subprocess.Popen([sys.executable, str(Path(__file__).with_name("wal_child.py")), str(wal_dir)],
                                 stdout=subprocess.PIPE, cwd=ROOT, text=True)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(child.stdout))  # drains the pipe until EOF
        reader.start()
        deadline = time.monotonic() + 30
        while not lines and time.monotonic() < deadline:  # wait for "ready"
            time.sleep(0.01)
        assert lines and lines[0] == "ready\n", "the child did not start"
        time.sleep(rng.uniform(0.05, 0.3))
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        reader.join()
        printed += [int(line) for line in lines[1:] if line.endswith("\n")]
    assert len(printed) > 5
    with WriteAheadLog(wal_dir, segment_bytes=CHILD_SEGMENT_BYTES) as wal:
        got = {r.lsn: (r.rtype, r.payload) for r in wal.replay()}
    assert sorted(got) == list(range(1, len(got) + 1))
    for lsn in printed:
        assert got[lsn] == (rtype_for(lsn), payload_for(lsn)), f"acknowledged LSN {lsn} lost or wrong"


def test_a_covered_active_segment_rolls_and_purges_and_an_uncovered_one_stays(tmp_path):
    wal = WriteAheadLog(tmp_path / "w", segment_bytes=1 << 20)
    wal.register_consumer("c")
    for i in range(300):
        wal.append(1, b"x" * 1000)
    assert not wal.roll_if_covered(299)  # record 300 is not covered: the segment stays active
    wal.mark_applied("c", 300)
    assert wal.purge() == 0              # purge never deletes the active segment
    assert not wal.roll_if_covered(300, min_bytes=1 << 20)  # covered, but smaller than min_bytes: it stays
    assert wal.roll_if_covered(300) and not wal.roll_if_covered(300)  # an empty active segment never rolls
    assert wal.purge() > 300_000
    wal.append(1, b"after")
    wal.close()
    wal = WriteAheadLog(tmp_path / "w", segment_bytes=1 << 20)
    assert [(r.lsn, r.payload) for r in wal.replay(300)] == [(301, b"after")]
    assert wal.stats()["segments"] == 1
    wal.close()
