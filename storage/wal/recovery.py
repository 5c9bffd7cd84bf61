"""Recovery of the write-ahead log at open (spec: docs/wal_format.md, "Recovery"): tell a torn final write (a clean
end of log) from corruption (an error naming the file, offset and bytes, or a loud truncation with repair=True),
and never let damage confined to records a checkpoint already covers stop the log from opening.

Covered damage: the caller says which LSNs its checkpoint covers (`covered_lsn`). Damage whose every possibly
affected LSN is <= covered_lsn costs nothing: the damaged segment and those before it are dropped (their records
are all in the checkpoint), or, inside the segment that also holds needed records, the valid records after the
damage are copied into a fresh segment first. The bound on the affected LSNs is exact: a damaged region of B bytes
holds at most B // RECORD_HEADER_SIZE records, and a later segment's name says where its records begin. A last
segment that ends inside a covered record was cut short: the bytes it lost cannot be counted, so that is never
covered damage.
"""
from __future__ import annotations

import logging
import os

from storage.wal.format import RECORD_HEADER_SIZE, SEGMENT_HEADER_SIZE, SEGMENT_NAME, segment_name
from storage.wal.fs import FileSystem
from storage.wal.reader import (WalCorruptionError, _Damage, _iter_records, _parse_segment_header, _Segment,
                                _valid_record_after, encode_segment_header)

log = logging.getLogger(__name__)


def _say(fs: FileSystem, level: int, msg: str, *args) -> None:
    """Log what recovery does; a dry run (vdbctl check) reports its plan itself and logs nothing."""
    if not getattr(fs, "dry_run", False):
        log.log(level, msg, *args)


def _list_segments(fs: FileSystem, directory: str) -> list[tuple[int, str]]:
    found = []
    for name in fs.listdir(directory):
        m = SEGMENT_NAME.match(name)
        if m:
            found.append((int(m.group(1)), os.path.join(directory, name)))
        elif name.startswith("wal-"):
            _say(fs, logging.WARNING, "%s: ignoring %s, which is not named like a WAL segment", directory, name)
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
    _say(fs, logging.ERROR, "WAL REPAIR: %s: %s at byte offset %d (%d bytes): truncated the log there, dropping %d bytes "
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


def _drop(fs: FileSystem, directory: str, paths: list[str]) -> None:
    """Remove segments oldest first, one durable step each: a crash in between leaves a contiguous suffix."""
    for path in paths:
        fs.remove(path)
        fs.fsync_dir(directory)


def _new_segment(fs: FileSystem, directory: str, first_lsn: int, body: bytes = b"") -> _Segment:
    """A segment starting at `first_lsn` holding `body` (whole, valid records), durable before it is used."""
    path = os.path.join(directory, segment_name(first_lsn))
    if fs.exists(path):
        fs.remove(path)  # left by a crash during an earlier rebase
    f = fs.create(path)
    try:
        f.pwrite(encode_segment_header(first_lsn) + body, 0)
        f.fsync()
    finally:
        f.close()
    fs.fsync_dir(directory)
    return _Segment(path, first_lsn, first_lsn - 1, SEGMENT_HEADER_SIZE + len(body))


def _valid_tail(fs: FileSystem, seg: _Segment, damage: _Damage) -> tuple[int, int, int] | None:
    """(offset, first LSN, last LSN) of a run of valid, consecutive records that starts after the damage and runs
    to the end of the segment, or None."""
    tail = fs.read(seg.path, damage.offset)
    off = _valid_record_after(tail, seg.last_lsn + 1)
    if off is None:
        return None
    start, size, first, last = damage.offset + off, fs.size(seg.path), None, None
    try:
        for _off, lsn, _t, _p in _iter_records(fs, seg.path, start, size):
            if first is not None and lsn != last + 1:
                return None
            first, last = (lsn if first is None else first), lsn
    except _Damage:
        return None
    return (start, first, last) if first is not None else None


def _covered_damage(fs: FileSystem, directory: str, seg: _Segment, damage: _Damage, before: list[_Segment],
                    later: list[tuple[int, str]], covered_lsn: int) -> _Segment | None:
    """If the damage can only affect LSNs <= covered_lsn, make the log whole again without them and return the
    segment to continue from (None if the damage may touch needed records: the ordinary rules apply)."""
    if damage.kind == "gap" or covered_lsn <= 0:
        return None
    older = [s.path for s in before]
    if later:  # the records this segment could hold end where the next segment's name says it begins
        if later[0][0] - 1 > covered_lsn:
            return None
        _say(fs, logging.WARNING, "%s: %s at byte offset %d: every record it could hold (up to LSN %d) is covered by the "
                    "checkpoint at LSN %d; dropping it and %d older segment(s)", seg.path, damage.reason,
                    damage.offset, later[0][0] - 1, covered_lsn, len(older))
        _drop(fs, directory, older + [seg.path])
        return _Segment("", later[0][0], later[0][0] - 1, 0)  # the caller scans the next segment next
    if damage.cut_short:
        # The file ends inside a record (or header) the checkpoint covers, which was durable (a checkpoint syncs
        # the log first): the file was cut short, and what followed, records the checkpoint may not cover, left
        # no bytes to count. Never a torn write: reported, or repaired on request.
        return None
    tail = _valid_tail(fs, seg, damage) if damage.kind == "record" else None
    lost_up_to = tail[1] - 1 if tail else seg.last_lsn + (fs.size(seg.path) - damage.offset) // RECORD_HEADER_SIZE
    if lost_up_to > covered_lsn:
        return None
    if tail is not None:  # keep the valid records after the damage: they may be needed
        body = fs.read(seg.path, tail[0])
        fresh = _new_segment(fs, directory, tail[1], body)
        fresh.last_lsn = tail[2]
    else:
        fresh = _new_segment(fs, directory, max(covered_lsn, seg.last_lsn) + 1)
    _say(fs, logging.WARNING, "%s: %s at byte offset %d: the LSNs it can affect (%d..%d) are all covered by the checkpoint at "
                "LSN %d; the log continues in %s", seg.path, damage.reason, damage.offset, seg.last_lsn + 1,
                lost_up_to, covered_lsn, os.path.basename(fresh.path))
    _drop(fs, directory, older + ([seg.path] if fresh.path != seg.path else []))
    return fresh


def _cut_torn_tail(fs: FileSystem, seg: _Segment, damage: _Damage) -> None:
    _say(fs, logging.WARNING, "%s: %s at byte offset %d: treating it as a torn final write; dropping %d bytes, the log ends at "
                "LSN %d", seg.path, damage.reason, damage.offset, fs.size(seg.path) - damage.offset, seg.last_lsn)
    _cut(fs, seg, damage.offset)


def _recover(fs: FileSystem, directory: str, *, repair: bool = False, covered_lsn: int = 0) -> list[_Segment]:
    """Validate every segment in LSN order; drop a torn tail; tolerate damage the checkpoint covers (see the
    module docstring); raise (or repair) on any other corruption."""
    found = _list_segments(fs, directory)
    segments: list[_Segment] = []
    i = 0
    expected_next = None  # after covered damage was dropped: the LSN the next segment must start at
    while i < len(found):
        name_lsn, path = found[i]
        expected = segments[-1].last_lsn + 1 if segments else (expected_next or name_lsn)
        seg, damage = _scan_segment(fs, path, name_lsn, expected)
        i += 1
        if damage is None:
            segments.append(seg)
            continue
        later = found[i:]
        if not later and seg.last_lsn >= covered_lsn and _is_torn_tail(fs, seg, damage):
            _cut_torn_tail(fs, seg, damage)
            segments.append(seg)
            break
        fixed = _covered_damage(fs, directory, seg, damage, segments, later, covered_lsn)
        if fixed is not None:
            if fixed.path:  # a fresh segment holds the rest of the log
                segments = [fixed]
                break
            segments, expected_next = [], fixed.first_lsn
            continue
        # Damage that reaches below the checkpoint is never a torn write (what the checkpoint covers was fsync'd
        # first), so nothing is cut here: it is reported, or repaired on request.
        later_paths = [p for _, p in later]
        if not repair:
            raise _corruption(fs, seg, damage, later_paths)
        if _repair(fs, directory, seg, damage, later_paths, expected if damage.kind == "gap" else seg.last_lsn + 1):
            segments.append(seg)
        if covered_lsn and (not segments or segments[-1].last_lsn < covered_lsn):
            # the records repair dropped below the checkpoint are in it: the log goes on after it
            _drop(fs, directory, [s.path for s in segments])
            segments = [_new_segment(fs, directory, covered_lsn + 1)]
        break
    return segments


def inspect_log(directory: str, covered_lsn: int = 0) -> dict:
    """What recovery would find and do at the next open, without changing a byte (recovery's own code, run over
    DryRunFS): {"segments", "first_lsn", "last_lsn", "actions", "error", "records_readable"}."""
    from storage.wal.fs import DryRunFS
    fs = DryRunFS()
    out = {"actions": fs.actions, "error": None, "segments": [], "first_lsn": None, "last_lsn": None}
    try:
        segments = _recover(fs, directory, covered_lsn=covered_lsn)
    except WalCorruptionError as e:
        out["error"] = str(e)
        return out
    out["segments"] = [s.path for s in segments if os.path.exists(s.path)]
    if segments:
        out["first_lsn"], out["last_lsn"] = segments[0].first_lsn, segments[-1].last_lsn
    out["records_readable"] = all(os.path.exists(s.path) for s in segments) and not any(
        a.startswith("create") for a in fs.actions)
    out["segment_objects"] = segments
    return out
