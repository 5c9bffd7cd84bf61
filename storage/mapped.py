"""A file written with pwrite and read through a shared read-only mmap.

Writes go through the file descriptor (so durability is one fsync), reads through mmap (no copies, the page
cache does the caching). The map is re-created when the file grows; old numpy views stay valid because they
keep their own reference to the old map.
"""
from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np

from storage.fileio import punch_hole, reserve_space

GROW_CHUNK = 64 << 20  # grow files in 64 MiB sparse steps so appends rarely remap


class MappedFile:
    def __init__(self, path: str | os.PathLike, *, writable: bool, create: bool = False):
        self.path = Path(path)
        flags = os.O_RDWR if writable else os.O_RDONLY
        if create:
            flags |= os.O_CREAT | os.O_EXCL
        self.fd = os.open(self.path, flags, 0o644)
        self.writable = writable
        self._map: mmap.mmap | None = None
        self._buf: np.ndarray = np.empty(0, np.uint8)
        self.remap()

    @property
    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def remap(self) -> None:
        size = self.size
        if size == 0:
            self._map, self._buf = None, np.empty(0, np.uint8)
            return
        m = mmap.mmap(self.fd, size, access=mmap.ACCESS_READ)
        if hasattr(m, "madvise"):
            m.madvise(mmap.MADV_RANDOM)  # postings and rows are read at random; readahead wastes I/O
        self._map, self._buf = m, np.frombuffer(m, dtype=np.uint8)

    @property
    def buffer(self) -> np.ndarray:
        """uint8 view of the whole mapped file (read-only)."""
        return self._buf

    def ensure_size(self, nbytes: int) -> None:
        """Grow the file (sparsely) so that [0, nbytes) is mapped."""
        if nbytes <= len(self._buf):
            return
        if self.size < nbytes:
            os.ftruncate(self.fd, max(nbytes, self.size + GROW_CHUNK))
        self.remap()

    def reserve(self, offset: int, length: int) -> None:
        """Allocate real blocks for [offset, offset + length), growing the file if needed, so that writes there
        cannot fail for space (DiskFullError now instead). The mapping follows at the next ensure_size."""
        reserve_space(self.fd, offset, length)

    def punch(self, offset: int, length: int) -> bool:
        """Free the blocks of [offset, offset + length) (block-aligned: a partial block would be zeroed, not
        freed); readers of the mapping see zeros there from now on. False if the file system cannot."""
        return punch_hole(self.fd, offset, length)

    def allocated_bytes(self) -> int:
        """Bytes of real blocks the file holds (holes and the sparse growth tail excluded)."""
        return os.fstat(self.fd).st_blocks * 512

    def pwrite(self, data, offset: int) -> None:
        size = memoryview(data).nbytes
        self.pwrite_spans(data, np.array([0]), np.array([size]), np.array([offset]))

    def pwrite_spans(self, data: np.ndarray, starts: np.ndarray, ends: np.ndarray, offsets: np.ndarray) -> None:
        """Write data[starts[i]:ends[i]] (bytes) at offsets[i] for every i: many small writes with one size check."""
        if len(offsets) == 0:
            return
        self.ensure_size(int((offsets + (ends - starts)).max()))
        view = memoryview(data).cast("B")
        for lo, hi, off in zip(starts.tolist(), ends.tolist(), offsets.tolist()):
            chunk = view[lo:hi]
            while len(chunk):
                n = os.pwrite(self.fd, chunk, off)
                chunk, off = chunk[n:], off + n

    def willneed(self, offset: int, length: int) -> None:
        """Ask the kernel to start reading [offset, offset+length) now so that several reads overlap."""
        if self._map is not None and hasattr(self._map, "madvise") and length > 0:
            start = offset - offset % mmap.PAGESIZE
            self._map.madvise(mmap.MADV_WILLNEED, start, min(length + offset - start, len(self._buf) - start))

    def drop_cache(self) -> None:
        """Evict this file from the page cache (benchmarks use it for cold-cache runs). The kernel keeps pages
        that a process still maps, so our own mapping lets go of them first (MADV_DONTNEED)."""
        if self.writable:
            os.fsync(self.fd)
        if self._map is not None and hasattr(self._map, "madvise"):
            self._map.madvise(mmap.MADV_DONTNEED)
        os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)

    def willneed_pages(self, offsets: np.ndarray, length: int) -> None:
        """MADV_WILLNEED a set of equal-length ranges (e.g. the rows about to be re-ranked)."""
        if self._map is None or not hasattr(self._map, "madvise"):
            return
        size = len(self._buf)
        for off in np.unique(np.asarray(offsets, dtype=np.int64) // mmap.PAGESIZE * mmap.PAGESIZE):
            self._map.madvise(mmap.MADV_WILLNEED, int(off), int(min(length + mmap.PAGESIZE, size - off)))

    def sync(self) -> None:
        os.fsync(self.fd)

    def truncate(self, nbytes: int) -> None:
        os.ftruncate(self.fd, nbytes)
        self.remap()

    def close(self) -> None:
        self._buf = np.empty(0, np.uint8)
        self._map = None  # numpy views that are still alive keep the old map open until they die
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
