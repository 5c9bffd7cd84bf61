"""Constants and byte layout of the write-ahead log (spec: docs/wal_format.md).

One constants module shared by the writer and the reader, as LevelDB does with log_format.h: if a number
below changes, both sides change together and the spec's worked example (checked by a test) shows it.

    segment file := segment_header record*
    segment_header (32 bytes):
        0   8  magic b"VDBWAL01"
        8   4  format version (u32)
        12  4  header size in bytes (u32) = 32
        16  8  first LSN stored in this segment (u64)
        24  4  reserved, zero
        28  4  CRC-32 (zlib) of bytes [0, 28)
    record (17-byte header + payload):
        0   4  CRC-32 (zlib) of bytes [4, 17 + length): length, LSN, type and payload
        4   4  payload length (u32)
        8   8  LSN (u64)
        16  1  record type (u8)
        17  .  payload
All integers are little endian.
"""
from __future__ import annotations

import re
import struct

MAGIC = b"VDBWAL01"
VERSION = 1

SEGMENT_HEADER = struct.Struct("<8sIIQ4x")   # magic, version, header size, first LSN, reserved; CRC follows
SEGMENT_HEADER_SIZE = SEGMENT_HEADER.size + 4
RECORD_CRC = struct.Struct("<I")             # written first so that it can cover every byte after it
RECORD_BODY = struct.Struct("<IQB")          # payload length, LSN, type
RECORD_HEADER_SIZE = RECORD_CRC.size + RECORD_BODY.size
LSN_OFFSET = 8                               # byte offset of the LSN inside a record (recovery scans for it)

# Record types. 0 never appears in a valid record: zero-filled space (a file extended by the kernel but
# never written) must not parse as data. 1..127 belong to the caller; 128..255 are reserved for the log
# itself (none are used by format version 1; a reader rejects them so that a newer writer cannot be
# misread silently).
INVALID_TYPE = 0
MIN_USER_TYPE = 1
MAX_USER_TYPE = 127
FIRST_INTERNAL_TYPE = 128

MAX_PAYLOAD = 256 << 20          # bytes; bounds memory at recovery and makes a garbage length detectable
DEFAULT_SEGMENT_BYTES = 64 << 20
NONE_BUFFER_BYTES = 1 << 20      # policy "none": bytes kept in process memory before a write(2)

SEGMENT_NAME = re.compile(r"^wal-(\d{20})\.log$")
CONSUMERS_FILE = "consumers.json"
CONSUMERS_VERSION = 1


def segment_name(first_lsn: int) -> str:
    """File name of the segment whose first record has LSN `first_lsn` (names sort in LSN order)."""
    return f"wal-{first_lsn:020d}.log"
