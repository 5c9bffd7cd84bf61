"""The 4 KiB header page shared by vdb's binary files (vectors, heads, postings).

    offset size  field
    0      8     magic (identifies the file kind, e.g. b"VDBVEC01")
    8      4     format version (u32, little endian)
    12     4     header size in bytes (u32) = 4096: data starts on the second page
    16     4     dim (u32)
    20     4     record size in bytes (u32)
    24     4     flags (u32, kind specific)
    28     32    reserved, zero
    60     4     CRC-32 (zlib) of bytes [0, 60)
    64..4096     zero
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from storage.errors import CorruptionError, FormatError, TruncatedError

HEADER_SIZE = 4096
_LAYOUT = struct.Struct("<8sIIIII32s")  # 60 bytes, followed by the CRC
_CRC = struct.Struct("<I")


@dataclass(frozen=True)
class FileHeader:
    magic: bytes
    version: int
    dim: int
    record_size: int
    flags: int = 0

    def pack(self) -> bytes:
        body = _LAYOUT.pack(self.magic, self.version, HEADER_SIZE, self.dim, self.record_size, self.flags, b"")
        page = body + _CRC.pack(zlib.crc32(body))
        return page + b"\0" * (HEADER_SIZE - len(page))


def unpack_header(path, data: bytes, *, magic: bytes, versions: tuple[int, ...]) -> FileHeader:
    """Parse and validate a header page; raise a typed error naming `path` on any mismatch."""
    if len(data) < _LAYOUT.size + _CRC.size:
        raise TruncatedError(path, f"file is {len(data)} bytes, shorter than its {HEADER_SIZE}-byte header")
    body = data[: _LAYOUT.size]
    got_magic, version, header_size, dim, record_size, flags, _ = _LAYOUT.unpack(body)
    if got_magic != magic:
        raise FormatError(f"{path}: not a {magic.decode(errors='replace')} file (magic {got_magic!r})")
    (crc,) = _CRC.unpack_from(data, _LAYOUT.size)
    if crc != zlib.crc32(body):
        raise CorruptionError(path, "header checksum mismatch", offset=0, length=_LAYOUT.size)
    if version not in versions:
        raise FormatError(f"{path}: format version {version} is not supported (this vdb reads {versions})")
    if header_size != HEADER_SIZE:
        raise CorruptionError(path, f"header size {header_size}, expected {HEADER_SIZE}", offset=12, length=4)
    return FileHeader(got_magic, version, dim, record_size, flags)
