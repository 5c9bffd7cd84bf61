"""Encoding one WAL record (the layout is format.py's) and the checks a record must pass before it is logged."""
from __future__ import annotations

import zlib

from storage.wal.consumers import as_int
from storage.wal.format import MAX_PAYLOAD, MAX_USER_TYPE, MIN_USER_TYPE, RECORD_BODY, RECORD_CRC


def put_record(buf: bytearray, lsn: int, rtype: int, payload: bytes) -> None:
    """Append one encoded record to `buf` (the payload is copied once, here)."""
    body = RECORD_BODY.pack(len(payload), lsn, rtype)
    buf += RECORD_CRC.pack(zlib.crc32(payload, zlib.crc32(body)))
    buf += body
    buf += payload


def check_record(rtype, payload) -> tuple[int, bytes]:
    t = as_int(rtype)
    if t is None or not MIN_USER_TYPE <= t <= MAX_USER_TYPE:
        raise ValueError(f"record type must be an int in [{MIN_USER_TYPE}, {MAX_USER_TYPE}], got {rtype!r}")
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise TypeError(f"payload must be bytes-like, got {type(payload).__name__}")
    if not isinstance(payload, bytes):
        payload = bytes(payload)  # a private copy: the caller may reuse its buffer once we return
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds the WAL limit of {MAX_PAYLOAD} bytes")
    return t, payload
