"""Constants and record layout of the posting file (spec: docs/storage_format.md).

One constants module shared by the writer and the reader, as LevelDB does with log_format.h.
"""
from __future__ import annotations

import numpy as np

MAGIC = b"VDBPOST1"
VERSION = 1
PAGE_SIZE = 4096          # extents start on page boundaries and span whole pages
RECORD_HEADER = 8         # u32 internal id, u8 version, 3 reserved bytes
RECORD_ID_OFFSET = 0      # byte offsets inside a record (the numba kernels read records straight from the mmap)
RECORD_VERSION_OFFSET = 4
RECORD_CODE_OFFSET = RECORD_HEADER
FLAG_RETIRED = 1          # directory flag: the posting was split or merged away; its head is gone
FLAG_PACKED = 2           # directory flag: the extent is exactly capacity * record_size bytes, not whole pages
RECORD_ALIGN = 4          # packed extents start on a multiple of this (the kernels read u32 ids in place)

# Directory entry as persisted in the metadata store (key "directory"): one row per posting id.
DIRECTORY_DTYPE = np.dtype([("offset", "<u8"), ("capacity", "<u4"), ("count", "<u4"),
                            ("crc", "<u4"), ("flags", "<u4")])


def code_bytes(dim: int) -> int:
    """INT8 codes are padded to a multiple of 4 bytes so every record (and its id) stays 4-byte aligned."""
    return (dim + 3) // 4 * 4


def record_size(dim: int) -> int:
    return RECORD_HEADER + code_bytes(dim)


def record_dtype(dim: int) -> np.dtype:
    return np.dtype([("id", "<u4"), ("version", "u1"), ("reserved", "u1", (3,)),
                     ("code", "i1", (code_bytes(dim),))])


def page_ceil(offset: int) -> int:
    """The first page boundary at or after `offset` (after packed postings the file's end may be mid-page)."""
    return -(-offset // PAGE_SIZE) * PAGE_SIZE


def pages_for(capacity, rec_size: int):
    """Whole pages for `capacity` records (at least one); scalars or arrays."""
    return np.maximum(1, -(-np.asarray(capacity, np.int64) * rec_size // PAGE_SIZE))


def extent_bytes(capacity, flags, rec_size: int):
    """Bytes an extent occupies: whole pages, or for a packed extent exactly its records (numpy-vectorized)."""
    capacity = np.asarray(capacity, np.int64)
    exact = capacity * rec_size
    pages = np.maximum(-(-exact // PAGE_SIZE), 1) * PAGE_SIZE
    return np.where((np.asarray(flags) & FLAG_PACKED) != 0, exact, pages)


def capacity_of(pages: int, rec_size: int) -> int:
    """Records that fit in `pages` whole pages: the slack after `count` is free append space."""
    return pages * PAGE_SIZE // rec_size
