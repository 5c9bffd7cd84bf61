"""Reading the write-ahead log (spec: docs/wal_format.md): segment headers, record iteration and validation, and
the search for a valid record behind damage. Recovery's rules live in recovery.py.
"""
from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from storage.errors import CorruptionError, FormatError, StorageError
from storage.wal.fs import FileSystem
from storage.wal.format import (LSN_OFFSET, MAGIC, MAX_PAYLOAD, MAX_USER_TYPE, MIN_USER_TYPE, RECORD_BODY,
                                RECORD_CRC, RECORD_HEADER_SIZE, SEGMENT_HEADER, SEGMENT_HEADER_SIZE, VERSION)

log = logging.getLogger(__name__)
READ_CHUNK = 1 << 20  # recovery and replay read segments in 1 MiB pieces: bounded memory, few syscalls


class WalCorruptionError(CorruptionError):
    """A WAL record or segment is damaged somewhere other than a torn final write."""

    hint = ("reopen with repair=True to truncate the log at the damaged record (every record after it is "
            "lost and the error log lists them), or restore the WAL directory from a backup")


class WalFailedError(StorageError):
    """A write or fsync failed earlier; this WriteAheadLog object accepts no more work."""

    hint = "fix the cause (disk full, I/O error), then reopen the log: recovery keeps every durable record"


class LsnMismatchError(ValueError):
    """An append that had to start at a given LSN (replication) found the log at another."""


@dataclass(frozen=True, slots=True)
class WalRecord:
    lsn: int
    rtype: int
    payload: bytes


@dataclass
class _Segment:
    path: str
    first_lsn: int
    last_lsn: int  # first_lsn - 1 while the segment holds no record
    size: int      # bytes handed to the OS (records still buffered in memory are not counted)


class _Damage(Exception):
    """Bytes that do not form a valid record or header. `kind` drives recovery:
    "record" may be a torn write, "header" may be a torn segment creation, "hard" and "gap" never are.
    `cut_short`: the file ends inside the record or header, so bytes that were there may be gone."""

    def __init__(self, offset: int, length: int, reason: str, kind: str = "record", *, cut_short: bool = False):
        super().__init__(reason)
        self.offset, self.length, self.reason, self.kind = offset, length, reason, kind
        self.cut_short = cut_short


def encode_segment_header(first_lsn: int) -> bytes:
    body = SEGMENT_HEADER.pack(MAGIC, VERSION, SEGMENT_HEADER_SIZE, first_lsn)
    return body + RECORD_CRC.pack(zlib.crc32(body))


def _parse_segment_header(path: str, head: bytes) -> int:
    """First LSN of a segment; `_Damage` for a short or unreadable header, FormatError for a newer version."""
    if len(head) < SEGMENT_HEADER_SIZE:
        raise _Damage(0, len(head), f"segment header is {len(head)} of {SEGMENT_HEADER_SIZE} bytes", "header",
                      cut_short=True)
    body = head[:SEGMENT_HEADER.size]
    (crc,) = RECORD_CRC.unpack_from(head, SEGMENT_HEADER.size)
    if crc != zlib.crc32(body):
        raise _Damage(0, SEGMENT_HEADER_SIZE, "segment header checksum mismatch", "header")
    magic, version, header_size, first_lsn = SEGMENT_HEADER.unpack(body)
    if magic != MAGIC or header_size != SEGMENT_HEADER_SIZE:
        raise _Damage(0, SEGMENT_HEADER_SIZE, f"not a WAL segment header (magic {magic!r})", "hard")
    if version != VERSION:
        raise FormatError(f"{path}: WAL format version {version} is not supported (this vdb reads {VERSION})")
    return first_lsn


# ---------------------------------------------------------------------------------------------- reading

class _ChunkReader:
    """Sequential reads of [start, end) of one file through a window of at least READ_CHUNK bytes."""

    def __init__(self, fs: FileSystem, path: str, end: int):
        self._fs, self._path, self._end = fs, path, end
        self._base, self._buf = 0, b""

    def get(self, offset: int, n: int) -> memoryview:
        if offset < self._base or offset + n > self._base + len(self._buf):
            want = min(max(n, READ_CHUNK), self._end - offset)
            self._buf, self._base = self._fs.read(self._path, offset, want), offset
            if len(self._buf) < n:
                raise _Damage(offset, n, "file shrank while it was being read", "hard")
        i = offset - self._base
        return memoryview(self._buf)[i:i + n]  # views keep their buffer alive after the window moves on


def _iter_records(fs: FileSystem, path: str, start: int, end: int) -> Iterator[tuple[int, int, int, memoryview]]:
    """(offset, lsn, rtype, payload) of each record in [start, end); `_Damage` at the first bad one.

    LSN order is the caller's business: it knows which LSN comes next."""
    reader = _ChunkReader(fs, path, end)
    pos = start
    while pos < end:
        left = end - pos
        if left < RECORD_HEADER_SIZE:
            raise _Damage(pos, left, f"incomplete record header ({left} of {RECORD_HEADER_SIZE} bytes)",
                          cut_short=True)
        head = reader.get(pos, RECORD_HEADER_SIZE)
        (crc,) = RECORD_CRC.unpack_from(head)
        length, lsn, rtype = RECORD_BODY.unpack_from(head, RECORD_CRC.size)
        if length > MAX_PAYLOAD:
            raise _Damage(pos, left, f"record length {length} exceeds the {MAX_PAYLOAD}-byte limit")
        total = RECORD_HEADER_SIZE + length
        if total > left:
            raise _Damage(pos, left, f"record of {total} bytes runs past the end of the file ({left} bytes left)",
                          cut_short=True)
        rec = reader.get(pos, total)
        if zlib.crc32(rec[RECORD_CRC.size:]) != crc:
            raise _Damage(pos, total, "record checksum mismatch")
        if not MIN_USER_TYPE <= rtype <= MAX_USER_TYPE:
            raise _Damage(pos, total, f"record has invalid type {rtype}", "hard")
        yield pos, lsn, rtype, rec[RECORD_HEADER_SIZE:]
        pos += total


def segment_records(fs: FileSystem, seg: "_Segment", after_lsn: int) -> Iterator[WalRecord]:
    """The records of a validated segment with LSN > after_lsn; WalCorruptionError if it was damaged since."""
    expected = seg.first_lsn
    try:
        for off, lsn, rtype, payload in _iter_records(fs, seg.path, SEGMENT_HEADER_SIZE, seg.size):
            if lsn != expected:
                raise _Damage(off, RECORD_HEADER_SIZE + len(payload),
                              f"record has LSN {lsn} where {expected} was expected", "hard")
            expected += 1
            if lsn > after_lsn:
                yield WalRecord(lsn, rtype, bytes(payload))
    except _Damage as d:
        raise WalCorruptionError(seg.path, f"{d.reason} (damaged after the log was opened)",
                                 offset=d.offset, length=d.length) from None


def _record_ok(data: bytes, off: int) -> bool:
    """True if a complete record with a matching checksum and a user type starts at data[off]."""
    if off + RECORD_HEADER_SIZE > len(data):
        return False
    (crc,) = RECORD_CRC.unpack_from(data, off)
    length, _lsn, rtype = RECORD_BODY.unpack_from(data, off + RECORD_CRC.size)
    end = off + RECORD_HEADER_SIZE + length
    return (end <= len(data) and MIN_USER_TYPE <= rtype <= MAX_USER_TYPE
            and zlib.crc32(memoryview(data)[off + RECORD_CRC.size:end]) == crc)


def _valid_record_after(tail: bytes, min_lsn: int) -> int | None:
    """Offset (> 0) of a valid record in `tail` whose LSN could follow a damaged record at tail[0], or None.

    A torn write leaves nothing valid behind the damage; damage followed by a valid record is corruption
    (e.g. a flipped length field that makes a record appear to run past the end). Between the damage and a
    record with LSN min_lsn + k lie at least k records of RECORD_HEADER_SIZE bytes or more, which bounds the
    LSNs worth checking; numpy finds the candidate offsets without a Python loop over every byte."""
    max_lsn = min_lsn + len(tail) // RECORD_HEADER_SIZE
    candidates: list[int] = []
    for first in range(1, 9):  # every offset >= 1 is first + 8k for exactly one `first`
        count = (len(tail) - first - LSN_OFFSET) // 8
        if count <= 0:
            continue
        lsns = np.frombuffer(tail, dtype="<u8", count=count, offset=first + LSN_OFFSET)
        hits = np.flatnonzero((lsns >= min_lsn) & (lsns <= max_lsn))
        candidates.extend((first + 8 * hits).tolist())
    return next((off for off in sorted(candidates) if _record_ok(tail, off)), None)
