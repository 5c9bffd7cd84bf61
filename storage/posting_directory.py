"""The posting directory: per-posting (offset, capacity, count, crc, flags) arrays that say where each posting's
records are in the posting file (storage/postings.py), and the check that a stored one is consistent with it."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from storage import posting_format as fmt
from storage.errors import CorruptionError, TruncatedError
from storage.fileheader import HEADER_SIZE


@dataclass
class PostingDirectory:
    """Per-posting arrays. Replaced as a whole on structural change; `count`/`crc` grow in place on append."""

    offset: np.ndarray    # int64 byte offset of the extent
    capacity: np.ndarray  # int32 records the extent can hold
    count: np.ndarray     # int32 valid records
    crc: np.ndarray       # uint32 CRC-32 of the valid records' bytes
    flags: np.ndarray     # uint32 (fmt.FLAG_RETIRED)

    @classmethod
    def empty(cls) -> "PostingDirectory":
        return cls.from_array(np.zeros(0, fmt.DIRECTORY_DTYPE))

    @classmethod
    def from_array(cls, a: np.ndarray) -> "PostingDirectory":
        return cls(a["offset"].astype(np.int64), a["capacity"].astype(np.int32), a["count"].astype(np.int32),
                   a["crc"].astype(np.uint32), a["flags"].astype(np.uint32))

    def to_array(self) -> np.ndarray:
        a = np.zeros(len(self.offset), fmt.DIRECTORY_DTYPE)
        a["offset"], a["capacity"], a["count"] = self.offset, self.capacity, self.count
        a["crc"], a["flags"] = self.crc, self.flags
        return a

    def copy(self) -> "PostingDirectory":
        return PostingDirectory(self.offset.copy(), self.capacity.copy(), self.count.copy(), self.crc.copy(),
                                self.flags.copy())

    def grown(self, n: int) -> "PostingDirectory":
        """A copy with room for `n` more postings (zeroed)."""
        def pad(a):
            return np.concatenate([a, np.zeros(n, a.dtype)])
        return PostingDirectory(pad(self.offset), pad(self.capacity), pad(self.count), pad(self.crc),
                                pad(self.flags))

    def __len__(self) -> int:
        return len(self.offset)



def check_directory(path, d: PostingDirectory, rec_size: int, file_size: int) -> None:
    """Reject a directory that points outside the file or is internally inconsistent."""
    if len(d) == 0:
        return
    align = np.where((d.flags & fmt.FLAG_PACKED) != 0, fmt.RECORD_ALIGN, fmt.PAGE_SIZE)
    bad = np.nonzero((d.count > d.capacity) | (d.offset < HEADER_SIZE) | (d.offset % align != 0))[0]
    if len(bad):
        pid = int(bad[0])
        raise CorruptionError(path, f"directory entry for posting {pid} is invalid (offset {int(d.offset[pid])}, "
                                    f"count {int(d.count[pid])}, capacity {int(d.capacity[pid])})")
    live_end = int((d.offset + d.count.astype(np.int64) * rec_size).max())
    if live_end > file_size:
        raise TruncatedError(path, f"file has {file_size} bytes but its postings extend to byte {live_end}")
