"""The full-precision vector file: float32 rows addressed by internal id, each with its own checksum.

Layout (spec: docs/storage_format.md): a 4 KiB header page (storage.fileheader, magic b"VDBVEC01"), then row i
at byte 4096 + i * (4 * dim + 4): `dim` float32 values followed by a u32 checksum of that row.

The checksum is a position-weighted word sum, `(sum_j word_j * (2j + 1) + i * 0x9E3779B1) mod 2**32`, over the
row's float32 words read as u32. Odd weights make every single-word change (so every bit flip) visible, the row
index term catches a row written at the wrong place, and it is cheap enough to verify inline in the numba
re-ranking kernel on every read. The number of valid rows is kept by the caller's manifest, not in this file:
rows past it are scratch space that a crash may have left half written.
"""
from __future__ import annotations

import os

import numpy as np
from numba import njit

from storage.errors import CorruptionError, DiskFullError, TruncatedError
from storage.fileheader import HEADER_SIZE, FileHeader, unpack_header
from storage.mapped import MappedFile

MAGIC = b"VDBVEC01"
VERSION = 1
ROW_SALT = 0x9E3779B1  # the row-index term of the checksum (also used by index/kernels.py)
RESERVE_ROWS_BYTES = 4 << 20  # rows are allocated ahead of the writes in steps of about this many bytes
BLOCK = 4096  # the file system block a hole is punched in: only blocks holding dead rows alone are freed
FIRST_BLOCK = HEADER_SIZE // BLOCK  # the first block that holds rows
SCAN_BLOCKS = 1 << 16  # blocks per step of a pass over the rows' states (bounded temporaries at 10M rows)


def row_bytes(dim: int) -> int:
    return 4 * dim + 4


@njit(nogil=True, cache=True)
def _checksums(words, rows, out):
    """out[i] = the checksum of row rows[i] holding u32 words[i] (the formula of the module docstring). Compiled:
    numpy's uint64 matrix product has no BLAS and took 14.5 of a 10M build's 17 s of writing rows."""
    salt = np.uint64(ROW_SALT)
    mask = np.uint64(0xFFFFFFFF)
    for i in range(words.shape[0]):
        acc = np.uint64(0)
        for j in range(words.shape[1]):
            acc += np.uint64(words[i, j]) * np.uint64(2 * j + 1)
        out[i] = np.uint32((acc + np.uint64(rows[i]) * salt) & mask)


VERIFY_CHUNK_BYTES = 2 << 20  # float32 bytes per step of verify()


def row_checksums(vectors: np.ndarray, first_row: int) -> np.ndarray:
    """Checksums (u32) for float32 `vectors` that will be stored at rows first_row, first_row+1, ..."""
    words = np.ascontiguousarray(vectors, dtype=np.float32).view(np.uint32)
    out = np.empty(len(words), np.uint32)
    _checksums(words, np.arange(first_row, first_row + len(words), dtype=np.int64), out)
    return out


class VectorFile:
    """Append-only float32 row store. Not thread-safe for writers; readers may run concurrently."""

    def __init__(self, mapped: MappedFile, dim: int, rows: int):
        self._file, self.dim, self.rows = mapped, dim, rows
        self.path = mapped.path
        self.row_size = row_bytes(dim)
        self._reserved_rows = rows  # rows whose blocks are known to be allocated (see reserve)
        self._punched = np.zeros(0, bool)  # per file block: freed by reclaim (this process; a reopen redoes it)
        self.seen_garbage_bytes = -1  # garbage_bytes as of the last pass over the rows (-1: none yet)

    # -- lifecycle --------------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, dim: int) -> "VectorFile":
        mapped = MappedFile(path, writable=True, create=True)
        mapped.pwrite(FileHeader(MAGIC, VERSION, dim, row_bytes(dim)).pack(), 0)
        return cls(mapped, dim, 0)

    @classmethod
    def open(cls, path: str | os.PathLike, rows: int, *, writable: bool = False) -> "VectorFile":
        """Open with `rows` valid rows (from the manifest); a shorter file raises TruncatedError."""
        mapped = MappedFile(path, writable=writable)
        header = unpack_header(path, bytes(mapped.buffer[:HEADER_SIZE]), magic=MAGIC, versions=(VERSION,))
        need = HEADER_SIZE + rows * header.record_size
        if mapped.size < need:
            mapped.close()
            raise TruncatedError(path, f"file has {os.path.getsize(path)} bytes but {rows} rows of "
                                       f"{header.record_size} bytes need {need}")
        if header.record_size != row_bytes(header.dim):
            mapped.close()
            raise CorruptionError(path, f"row size {header.record_size} does not match dim {header.dim}",
                                  offset=20, length=4)
        return cls(mapped, header.dim, rows)

    def close(self) -> None:
        self._file.close()

    # -- writing ----------------------------------------------------------------------------------------
    def write_rows(self, first_row: int, vectors: np.ndarray) -> None:
        """Write rows [first_row, first_row + n). Rows become valid for readers once `rows` covers them."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected float32 [n, {self.dim}], got {vectors.shape}")
        block = np.empty((len(vectors), self.dim + 1), dtype=np.float32)
        block[:, : self.dim] = vectors
        block.view(np.uint32)[:, self.dim] = row_checksums(vectors, first_row)
        self._file.pwrite(block, HEADER_SIZE + first_row * self.row_size)

    def append(self, vectors: np.ndarray) -> int:
        """Append rows; return the first new row index. The caller persists `rows` in its manifest."""
        first = self.rows
        self.write_rows(first, vectors)
        self.rows = first + len(vectors)
        return first

    def reserve(self, rows: int) -> None:
        """Make sure rows [0, rows) have real blocks on the device (ahead in RESERVE_ROWS_BYTES steps): an
        append up to `rows` then cannot fail for space. DiskFullError if the device is full."""
        if rows <= self._reserved_rows:
            return
        start = HEADER_SIZE + self._reserved_rows * self.row_size
        ahead = max(rows, self._reserved_rows + max(1, RESERVE_ROWS_BYTES // self.row_size))
        try:
            self._file.reserve(start, HEADER_SIZE + ahead * self.row_size - start)
        except DiskFullError:
            self._file.reserve(start, HEADER_SIZE + rows * self.row_size - start)  # just what is asked, or raise
            ahead = rows
        self._reserved_rows = ahead

    def reclaim(self, dead: np.ndarray) -> int:
        """Free the blocks that hold only rows marked in `dead` (bool per row [0, len(dead))), by punching holes
        (the file keeps its size and every row its number). Returns the bytes newly freed.

        The caller guarantees that no dead row is read again (a punched row reads as zeros and fails its
        checksum), and that `dead` is committed: a crash must never bring a punched row back to life. Blocks
        that also hold a live row, or a row past len(dead), are kept."""
        n_live = self._live_per_block(~np.asarray(dead, bool))
        if len(n_live) == 0:
            return 0
        b = np.arange(FIRST_BLOCK, FIRST_BLOCK + len(n_live), dtype=np.int64)
        end_block = int(b[-1]) + 1
        free = n_live == 0
        if len(self._punched) < end_block:
            self._punched = np.concatenate([self._punched, np.zeros(end_block - len(self._punched), bool)])
        todo = np.zeros(end_block + 1, bool)
        todo[b] = free & ~self._punched[b]
        edges = np.flatnonzero(np.diff(todo.astype(np.int8)))  # run starts (0 -> 1) and ends (1 -> 0)
        freed = 0
        for start, stop in zip(edges[0::2] + 1, edges[1::2] + 1):
            if not self._file.punch(int(start) * BLOCK, int(stop - start) * BLOCK):
                return freed  # the file system cannot punch holes: keep the rows
            self._punched[start:stop] = True
            freed += int(stop - start) * BLOCK
        return freed

    def _block_rows(self, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The first and last row whose bytes lie in each file block."""
        first = (blocks * BLOCK - HEADER_SIZE) // self.row_size
        return first, ((blocks + 1) * BLOCK - 1 - HEADER_SIZE) // self.row_size

    def _live_per_block(self, live: np.ndarray) -> np.ndarray:
        """Live rows per file block whose bytes all belong to rows [0, len(live)) (the block a later row shares
        is left out; a row spanning two blocks counts in both), block FIRST_BLOCK first. In steps of SCAN_BLOCKS:
        one pass over 10M rows held 150-380 MB of temporaries, now 13-22 MB."""
        n = min(len(live), self.rows)
        end = max(FIRST_BLOCK, (HEADER_SIZE + n * self.row_size) // BLOCK)
        out = np.empty(end - FIRST_BLOCK, np.int16)  # a block holds at most 513 rows (8-byte rows of dim 1)
        for lo in range(FIRST_BLOCK, end, SCAN_BLOCKS):
            first, last = self._block_rows(np.arange(lo, min(end, lo + SCAN_BLOCKS), dtype=np.int64))
            r0 = int(first[0])
            before = np.concatenate([[0], np.cumsum(np.asarray(live[r0: int(last[-1]) + 1], bool), dtype=np.int32)])
            out[lo - FIRST_BLOCK: lo - FIRST_BLOCK + len(first)] = before[last - r0 + 1] - before[first - r0]
        return out

    def sparse_rows(self, live: np.ndarray, max_rows: int, min_garbage: float, fraction: float) -> np.ndarray:
        """The live rows worth copying to the end of the file so that the blocks they leave hold only dead rows
        (which `reclaim` then frees): none until the blocks holding a live row carry more than both min_garbage
        bytes and `fraction` of their bytes in dead rows; then those of the emptiest blocks, at most about
        max_rows, taken only from blocks at most 1 - fraction live (so the file stays within about
        1 / (1 - fraction) of its live rows, as the posting file does). Random deletes leave most blocks
        holding some live row: holes alone freed 5.7 of 57 MB in the streaming runbook (issue 13). Also
        refreshes what `garbage_bytes` reports."""
        n_live = self._live_per_block(live)
        held, self.seen_garbage_bytes = self._held_and_garbage(live, n_live)
        if self.seen_garbage_bytes <= max(min_garbage, fraction * held):
            return np.zeros(0, np.int64)
        span = (BLOCK - 1) // self.row_size + 2  # the most rows a block's bytes belong to (blocks vary by one)
        picked, got = [], 0
        for n in range(1, int((1.0 - fraction) * span) + 1):  # emptiest first, without sorting every block
            for lo in range(0, len(n_live), SCAN_BLOCKS):
                if got >= max_rows:
                    break
                hits = (np.flatnonzero(n_live[lo: lo + SCAN_BLOCKS] == n) + lo)[: -(-(max_rows - got) // n)]
                picked.append(hits)
                got += n * len(hits)
        chosen = np.concatenate(picked) if picked else np.zeros(0, np.int64)
        first, last = self._block_rows(chosen.astype(np.int64) + FIRST_BLOCK)
        spans = [np.arange(a, b + 1) for a, b in zip(first.tolist(), last.tolist())]
        rows = np.unique(np.concatenate(spans)) if spans else np.zeros(0, np.int64)
        return rows[np.asarray(live, bool)[rows]]

    def garbage_bytes(self, live: np.ndarray) -> int:
        """Bytes of dead rows in the blocks that also hold a live row: what holes cannot free and moving the
        live rows out (sparse_rows) can. As of the maintenance thread's last look (sparse_rows) when it has
        looked: a pass over every row's state, too much for every stats call at 10M rows."""
        if self.seen_garbage_bytes < 0:
            self.seen_garbage_bytes = self._held_and_garbage(live, self._live_per_block(live))[1]
        return self.seen_garbage_bytes

    def _held_and_garbage(self, live: np.ndarray, n_live: np.ndarray) -> tuple[int, int]:
        if len(n_live) == 0:
            return 0, 0
        held = int((n_live > 0).sum()) * BLOCK
        last_row = int(self._block_rows(np.int64(FIRST_BLOCK + len(n_live) - 1))[1])
        return held, max(0, held - int(np.asarray(live[: last_row + 1], bool).sum()) * self.row_size)

    def allocated_bytes(self) -> int:
        """Bytes of real blocks on the device (holes of reclaimed rows and the growth tail excluded)."""
        return self._file.allocated_bytes()

    def set_rows(self, rows: int) -> None:
        """Declare the number of valid rows (recovery rolls back to the manifest's count)."""
        self.rows = rows

    def sync(self) -> None:
        self._file.sync()

    def finish(self) -> None:
        """Cut the sparse growth tail off (bulk builds end with an exact-size file)."""
        self._file.truncate(HEADER_SIZE + self.rows * self.row_size)

    # -- reading ----------------------------------------------------------------------------------------
    def matrix(self) -> np.ndarray:
        """float32 [rows, dim + 1] view: columns :dim are the vector, the last column holds the checksum bits."""
        # Read `rows` once, and before the buffer: the writer maps new space before it writes a row and bumps
        # `rows` after, so a buffer fetched after reading `rows` covers them (no remap needed here). Reading
        # `rows` twice let a concurrent append change it between the slice and the reshape.
        rows = self.rows
        buf = self._file.buffer[HEADER_SIZE: HEADER_SIZE + rows * self.row_size]
        return buf.view(np.float32).reshape(rows, self.dim + 1)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Copy rows out as float32 [n, dim], verifying each checksum."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.rows):
            raise IndexError(f"row out of range [0, {self.rows})")
        block = self.matrix()[rows]
        vectors = np.ascontiguousarray(block[:, : self.dim])
        stored = block.view(np.uint32)[:, self.dim]
        expect = np.empty(len(rows), np.uint32)
        _checksums(vectors.view(np.uint32), rows, expect)
        bad = np.nonzero(stored != expect)[0]
        if len(bad):
            self.raise_corrupt_row(int(rows[bad[0]]))
        return vectors

    def raise_corrupt_row(self, row: int) -> None:
        raise CorruptionError(self.path, f"checksum mismatch in vector row {row}",
                              offset=HEADER_SIZE + row * self.row_size, length=self.row_size)

    def verify(self, chunk: int | None = None, skip: np.ndarray | None = None) -> list[int]:
        """Return every row whose checksum fails (used by `vdbctl check`, and on the head rows by every open),
        except rows marked in `skip` (bool per row: dead rows, whose blocks reclaim may have freed). `chunk`: rows
        per step; by default about VERIFY_CHUNK_BYTES of them (a step holds a copy: 65,536 rows of 128 dims with a
        uint64 widening held ~100 MB while an index of 200K heads opened)."""
        if skip is not None:
            return [r for r in self.verify(chunk) if not (r < len(skip) and skip[r])]
        chunk = chunk or max(64, VERIFY_CHUNK_BYTES // (4 * max(self.dim, 1)))
        bad: list[int] = []
        m = self.matrix()
        for start in range(0, self.rows, chunk):
            block = m[start: start + chunk]
            vecs = np.ascontiguousarray(block[:, : self.dim])
            stored = block.view(np.uint32)[:, self.dim]
            bad.extend((np.nonzero(stored != row_checksums(vecs, start))[0] + start).tolist())
        return bad

    def drop_cache(self) -> None:
        self._file.drop_cache()

    def willneed(self, rows: np.ndarray) -> None:
        """Start reading these rows now (cold-cache re-ranking overlaps the reads)."""
        self._file.willneed_pages(HEADER_SIZE + np.asarray(rows, dtype=np.int64) * self.row_size, self.row_size)

    @property
    def nbytes(self) -> int:
        return HEADER_SIZE + self.rows * self.row_size
