"""Damage in WAL records that a checkpoint already covers never stops the log from opening (issue 11.3): the
records are in the checkpoint, so recovery drops them loudly and keeps every record after the checkpoint. Damage
that can reach a record after the checkpoint is still an error (or, with repair, a truncation that never leaves
the log ending below the checkpoint)."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from storage.wal import WalCorruptionError, WriteAheadLog
from test_wal import HEADER, RECORD, flip, make_payloads, record_offset, segments


def _write(directory, payloads, **kw):
    with WriteAheadLog(directory, **kw) as wal:
        for p in payloads:
            wal.append(1, p)


def _replay_after(directory, covered, **kw):
    with WriteAheadLog(directory, covered_lsn=covered, **kw) as wal:
        return [(r.lsn, r.payload) for r in wal.replay(covered)], wal.last_lsn


def test_damage_in_a_covered_middle_record_keeps_every_later_record(tmp_path, caplog):
    d = tmp_path / "wal"
    payloads = make_payloads(40, seed=1)
    _write(d, payloads)
    flip(segments(d)[0], record_offset(payloads, 9) + RECORD + 1)  # LSN 10's payload: covered by LSN 20
    with pytest.raises(WalCorruptionError):  # without the checkpoint's word it is corruption, as before
        WriteAheadLog(d)
    with caplog.at_level(logging.WARNING, logger="storage.wal"):
        got, last = _replay_after(d, covered=20)
    assert got == [(lsn, payloads[lsn - 1]) for lsn in range(21, 41)] and last == 40
    assert "covered by the checkpoint" in caplog.text
    with WriteAheadLog(d, covered_lsn=20) as wal:  # reopening again is quiet and appends continue in order
        assert wal.append(1, b"next") == 41
        assert [r.lsn for r in wal.replay(20)] == list(range(21, 42))


def test_damage_in_a_covered_sealed_segment_drops_it(tmp_path):
    d = tmp_path / "wal"
    payloads = make_payloads(60, seed=2, max_len=60)
    _write(d, payloads, segment_bytes=1024)
    segs = segments(d)
    assert len(segs) >= 3
    second_first = int(segs[1].name[4:24])
    third_first = int(segs[2].name[4:24])
    flip(segs[1], HEADER + RECORD + 2)  # a record of the second segment, all of which the checkpoint covers
    got, last = _replay_after(d, covered=third_first - 1)
    assert got == [(lsn, payloads[lsn - 1]) for lsn in range(third_first, 61)] and last == 60
    assert int(segments(d)[0].name[4:24]) == third_first > second_first


def test_damage_when_the_checkpoint_covers_the_whole_log(tmp_path):
    d = tmp_path / "wal"
    payloads = make_payloads(10, seed=3)
    _write(d, payloads)
    flip(segments(d)[0], record_offset(payloads, 7) + RECORD + 1)  # LSN 8; 9 and 10 are intact behind it
    got, last = _replay_after(d, covered=10)
    assert got == [] and last == 10
    with WriteAheadLog(d, covered_lsn=10) as wal:  # numbering goes on after the checkpoint, never below it
        assert wal.append(1, b"x") == 11


def test_damage_in_the_last_record_cannot_be_proven_harmless(tmp_path):
    """Nothing valid follows damage in the checkpoint's own last record, so the bytes there might have held
    records written after the checkpoint: opening reports it (naming file and offset) and changes nothing; an
    explicit repair continues after the checkpoint."""
    d = tmp_path / "wal"
    payloads = make_payloads(10, seed=3)
    _write(d, payloads)
    flip(segments(d)[0], record_offset(payloads, 9) + 3)  # LSN 10's checksum field
    before = segments(d)[0].read_bytes()
    with pytest.raises(WalCorruptionError, match="offset"):
        WriteAheadLog(d, covered_lsn=10)
    assert segments(d)[0].read_bytes() == before  # reported, not cut: the evidence stays for the operator
    with WriteAheadLog(d, covered_lsn=10, repair=True) as wal:
        assert wal.append(1, b"x") == 11


def test_damage_that_can_reach_a_needed_record_is_still_an_error(tmp_path):
    d = tmp_path / "wal"
    payloads = make_payloads(30, seed=4)
    _write(d, payloads)
    flip(segments(d)[0], record_offset(payloads, 24) + RECORD)  # LSN 25, after the checkpoint at 20
    with pytest.raises(WalCorruptionError) as e:
        WriteAheadLog(d, covered_lsn=20)
    assert "offset" in str(e.value)


def test_repair_never_leaves_the_log_below_the_checkpoint(tmp_path, caplog):
    d = tmp_path / "wal"
    payloads = make_payloads(30, seed=5)
    _write(d, payloads)
    # damage at LSN 15 followed by a flipped length: the rest cannot be read, and may hold needed records
    flip(segments(d)[0], record_offset(payloads, 14) + 4, xor=0x40)
    flip(segments(d)[0], record_offset(payloads, 16) + 4, xor=0x40)
    with caplog.at_level(logging.ERROR, logger="storage.wal"):
        with WriteAheadLog(d, repair=True, covered_lsn=20) as wal:
            assert wal.last_lsn >= 20
            assert wal.append(1, b"after") == wal.last_lsn and wal.last_lsn > 20
    assert "LOST" in caplog.text


def test_a_crash_while_rebasing_leaves_a_log_that_recovers(tmp_path):
    """Recovery copies the valid records after covered damage into a fresh segment before it deletes the old
    one; a crash between the two leaves both files, which the next recovery sorts out the same way."""
    d = tmp_path / "wal"
    payloads = make_payloads(40, seed=6)
    _write(d, payloads)
    old = segments(d)[0]
    flip(old, record_offset(payloads, 9) + RECORD + 1)
    damaged = old.read_bytes()
    _replay_after(d, covered=20)
    Path(old).write_bytes(damaged)  # as if the process died before the damaged segment was removed
    got, last = _replay_after(d, covered=20)
    assert got == [(lsn, payloads[lsn - 1]) for lsn in range(21, 41)] and last == 40
