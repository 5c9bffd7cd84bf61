"""Reading and recovering the write-ahead log (spec: docs/wal_format.md): segment listing, record iteration,
and the recovery rules that tell a torn final write (a clean end of log) from corruption (an error naming the
file, offset and bytes, or a loud truncation with repair=True).
"""
from __future__ import annotations

import logging
import os
import zlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from storage.errors import CorruptionError, FormatError, StorageError
from storage.wal.fs import FileSystem
from storage.wal.format import (LSN_OFFSET, MAGIC, MAX_PAYLOAD, MAX_USER_TYPE, MIN_USER_TYPE, RECORD_BODY,
                                RECORD_CRC, RECORD_HEADER_SIZE, SEGMENT_HEADER, SEGMENT_HEADER_SIZE,
                                SEGMENT_NAME, VERSION)

log = logging.getLogger(__name__)
READ_CHUNK = 1 << 20  # recovery and replay read segments in 1 MiB pieces: bounded memory, few syscalls


class WalCorruptionError(CorruptionError):
    """A WAL record or segment is damaged somewhere other than a torn final write."""

    hint = ("reopen with repair=True to truncate the log at the damaged record (every record after it is "
            "lost and the error log lists them), or restore the WAL directory from a backup")


class WalFailedError(StorageError):
    """A write or fsync failed earlier; this WriteAheadLog object accepts no more work."""

    hint = "fix the cause (disk full, I/O error), then reopen the log: recovery keeps every durable record"


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
    "record" may be a torn write, "header" may be a torn segment creation, "hard" and "gap" never are."""

    def __init__(self, offset: int, length: int, reason: str, kind: str = "record"):
        super().__init__(reason)
        self.offset, self.length, self.reason, self.kind = offset, length, reason, kind


def encode_segment_header(first_lsn: int) -> bytes:
    body = SEGMENT_HEADER.pack(MAGIC, VERSION, SEGMENT_HEADER_SIZE, first_lsn)
    return body + RECORD_CRC.pack(zlib.crc32(body))


def _parse_segment_header(path: str, head: bytes) -> int:
    """First LSN of a segment; `_Damage` for a short or unreadable header, FormatError for a newer version."""
    if len(head) < SEGMENT_HEADER_SIZE:
        raise _Damage(0, len(head), f"segment header is {len(head)} of {SEGMENT_HEADER_SIZE} bytes", "header")
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
            raise _Damage(pos, left, f"incomplete record header ({left} of {RECORD_HEADER_SIZE} bytes)")
        head = reader.get(pos, RECORD_HEADER_SIZE)
        (crc,) = RECORD_CRC.unpack_from(head)
        length, lsn, rtype = RECORD_BODY.unpack_from(head, RECORD_CRC.size)
        if length > MAX_PAYLOAD:
            raise _Damage(pos, left, f"record length {length} exceeds the {MAX_PAYLOAD}-byte limit")
        total = RECORD_HEADER_SIZE + length
        if total > left:
            raise _Damage(pos, left, f"record of {total} bytes runs past the end of the file ({left} bytes left)")
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


# ---------------------------------------------------------------------------------------------- recovery

def _list_segments(fs: FileSystem, directory: str) -> list[tuple[int, str]]:
    found = []
    for name in fs.listdir(directory):
        m = SEGMENT_NAME.match(name)
        if m:
            found.append((int(m.group(1)), os.path.join(directory, name)))
        elif name.startswith("wal-"):
            log.warning("%s: ignoring %s, which is not named like a WAL segment", directory, name)
    return sorted(found)


def _scan_segment(fs: FileSystem, path: str, name_lsn: int, expected: int) -> tuple[_Segment, _Damage | None]:
    """Validate one segment. The returned segment describes its valid prefix, up to the damage if any."""
    seg = _Segment(path, name_lsn, name_lsn - 1, SEGMENT_HEADER_SIZE)
    size = fs.size(path)
    try:
        if name_lsn != expected:
            why = "a segment is missing" if name_lsn > expected else "segments overlap"
            raise _Damage(0, size, f"LSN gap: the log before this segment ends at LSN {expected - 1} but it "
                                   f"starts at LSN {name_lsn} ({why})", "gap")
        first = _parse_segment_header(path, fs.read(path, 0, SEGMENT_HEADER_SIZE))
        if first != name_lsn:
            raise _Damage(0, SEGMENT_HEADER_SIZE, f"header says first LSN {first}, file name says {name_lsn}",
                          "hard")
        for off, lsn, _rtype, payload in _iter_records(fs, path, SEGMENT_HEADER_SIZE, size):
            if lsn != seg.last_lsn + 1:
                raise _Damage(off, RECORD_HEADER_SIZE + len(payload),
                              f"record has LSN {lsn} where {seg.last_lsn + 1} was expected", "hard")
            seg.last_lsn, seg.size = lsn, off + RECORD_HEADER_SIZE + len(payload)
    except _Damage as damage:
        return seg, damage
    return seg, None


def _is_torn_tail(fs: FileSystem, seg: _Segment, damage: _Damage) -> bool:
    """Could `damage` in the last segment be a write that never completed? (spec: "Torn tail or corruption")"""
    if damage.kind == "header":
        return fs.size(seg.path) <= SEGMENT_HEADER_SIZE  # the creation was torn before any record went in
    if damage.kind != "record":
        return False
    return _valid_record_after(fs.read(seg.path, damage.offset), seg.last_lsn + 1) is None


def _cut(fs: FileSystem, seg: _Segment, offset: int) -> None:
    """Make `offset` the durable end of the segment (rewriting its header if that was damaged)."""
    f = fs.open(seg.path)
    try:
        if offset < SEGMENT_HEADER_SIZE:
            f.truncate(0)
            f.pwrite(encode_segment_header(seg.first_lsn), 0)
            seg.size, seg.last_lsn = SEGMENT_HEADER_SIZE, seg.first_lsn - 1
        else:
            f.truncate(offset)
        f.fsync()
    finally:
        f.close()


def _repair(fs: FileSystem, directory: str, seg: _Segment, damage: _Damage, later: list[str],
            first_lost: int) -> bool:
    """Truncate the log at the damage; return False if the damaged segment itself had to go."""
    lost = fs.size(seg.path) - damage.offset + sum(fs.size(p) for p in later)
    last_start = SEGMENT_NAME.match(os.path.basename(later[-1])).group(1).lstrip("0") if later else None
    for path in reversed(later):  # newest first, one durable step each: a crash here can never leave a hole
        fs.remove(path)
        fs.fsync_dir(directory)
    keep = damage.kind != "gap"
    if keep:
        _cut(fs, seg, damage.offset)
    else:
        fs.remove(seg.path)
        fs.fsync_dir(directory)
    log.error("WAL REPAIR: %s: %s at byte offset %d (%d bytes): truncated the log there, dropping %d bytes "
              "(the rest of this file and %d later segment file(s)); LSN %d and every later LSN%s are LOST",
              seg.path, damage.reason, damage.offset, damage.length, lost, len(later), first_lost,
              f" (the last dropped segment started at LSN {last_start})" if last_start else "")
    return keep


def _corruption(fs: FileSystem, seg: _Segment, damage: _Damage, later: list[str]) -> WalCorruptionError:
    after = fs.size(seg.path) - damage.offset - damage.length + sum(fs.size(p) for p in later)
    if damage.kind == "gap":
        detail = f"{damage.reason}; segments are created in order, so this is not a torn write"
    else:
        why = ("the bytes are complete but wrong, which a torn write cannot produce" if damage.kind == "hard"
               else f"{after} more bytes of log follow it, so it is not a torn final write")
        detail = f"{damage.reason}; {why} (the last valid record before it is LSN {seg.last_lsn})"
    return WalCorruptionError(seg.path, detail, offset=damage.offset, length=damage.length)


def _recover(fs: FileSystem, directory: str, *, repair: bool = False) -> list[_Segment]:
    """Validate every segment in LSN order; drop a torn tail; raise (or repair) on corruption."""
    found = _list_segments(fs, directory)
    segments: list[_Segment] = []
    for i, (name_lsn, path) in enumerate(found):
        expected = segments[-1].last_lsn + 1 if segments else name_lsn
        seg, damage = _scan_segment(fs, path, name_lsn, expected)
        if damage is None:
            segments.append(seg)
            continue
        later = [p for _, p in found[i + 1:]]
        if not later and _is_torn_tail(fs, seg, damage):
            dropped = fs.size(path) - damage.offset
            log.warning("%s: %s at byte offset %d: treating it as a torn final write; dropping %d bytes, the log "
                        "ends at LSN %d", path, damage.reason, damage.offset, dropped, seg.last_lsn)
            _cut(fs, seg, damage.offset)
            segments.append(seg)
            break
        if not repair:
            raise _corruption(fs, seg, damage, later)
        if _repair(fs, directory, seg, damage, later, expected if damage.kind == "gap" else seg.last_lsn + 1):
            segments.append(seg)
        break
    return segments
