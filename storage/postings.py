"""The posting store: INT8-coded posting lists in one page-aligned, mmap'd file.

Each posting is an *extent* of whole pages holding `capacity` fixed-size records, of which the first `count`
are valid. The directory (offset, capacity, count, crc, flags per posting id) lives in memory and is
persisted by the caller in the metadata store at checkpoints. Extents are never overwritten once a persisted
directory may reference their first `count` records: appends write into the free slack after `count`, and
growth, rewrites and splits allocate a fresh extent at the end of the file (copy on write). A crash therefore
always leaves the last persisted directory pointing at intact bytes.

Thread model: one writer (the index maintenance thread) and any number of concurrent readers. Appends publish
by bumping `count` after the records are written; structural changes build a new directory and swap it in.
"""
from __future__ import annotations

import logging
import os
import threading
import zlib

import numpy as np

from storage import posting_format as fmt
from storage.errors import CorruptionError
from storage.fileheader import HEADER_SIZE, FileHeader, unpack_header
from storage.mapped import MappedFile
from storage.posting_directory import PostingDirectory, check_directory

log = logging.getLogger(__name__)


class PostingStore:
    def __init__(self, mapped: MappedFile, dim: int, directory: PostingDirectory, *, verify: str = "lazy"):
        if verify not in ("lazy", "full", "none"):
            raise ValueError(f"verify must be lazy|full|none, not {verify!r}")
        self._file, self.path, self.dim = mapped, mapped.path, dim
        self.rec_size = fmt.record_size(dim)
        self.record_dtype = fmt.record_dtype(dim)
        self.dir = directory
        self._verify_mode = verify
        self._verified = np.zeros(len(directory), bool) if verify != "none" else np.ones(len(directory), bool)
        self._verify_lock = threading.Lock()
        self._end = self._compute_end()
        if verify == "full":
            bad = self.verify_all()
            if bad:
                self.raise_corrupt(bad[0])

    # -- lifecycle --------------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, dim: int) -> "PostingStore":
        mapped = MappedFile(path, writable=True, create=True)
        mapped.pwrite(FileHeader(fmt.MAGIC, fmt.VERSION, dim, fmt.record_size(dim)).pack(), 0)
        return cls(mapped, dim, PostingDirectory.empty())

    @classmethod
    def open(cls, path: str | os.PathLike, directory: np.ndarray, *, writable: bool = False,
             verify: str = "lazy") -> "PostingStore":
        """Open with the persisted `directory` (fmt.DIRECTORY_DTYPE array from the metadata store)."""
        mapped = MappedFile(path, writable=writable)
        try:
            header = unpack_header(path, bytes(mapped.buffer[:HEADER_SIZE]), magic=fmt.MAGIC,
                                   versions=(fmt.VERSION,))
            if header.record_size != fmt.record_size(header.dim):
                raise CorruptionError(path, f"record size {header.record_size} does not match dim {header.dim}",
                                      offset=20, length=4)
            d = PostingDirectory.from_array(directory)
            check_directory(path, d, fmt.record_size(header.dim), mapped.size)
            return cls(mapped, header.dim, d, verify=verify)
        except BaseException:
            mapped.close()
            raise

    def close(self) -> None:
        self._file.close()

    def _compute_end(self) -> int:
        if len(self.dir) == 0:
            return HEADER_SIZE
        ends = self.dir.offset + fmt.extent_bytes(self.dir.capacity, self.dir.flags, self.rec_size)
        end = int(max(HEADER_SIZE, ends.max()))
        return -(-end // fmt.RECORD_ALIGN) * fmt.RECORD_ALIGN

    # -- reading ----------------------------------------------------------------------------------------
    @property
    def n_postings(self) -> int:
        return len(self.dir)

    @property
    def buffer(self) -> np.ndarray:
        return self._file.buffer

    def records(self, pid: int) -> np.ndarray:
        """The valid records of posting `pid` as a structured read-only view (checksum verified once)."""
        d = self.dir
        self.ensure_verified(np.array([pid]))
        off, n = int(d.offset[pid]), int(d.count[pid])
        return self.buffer[off: off + n * self.rec_size].view(self.record_dtype)

    def ensure_verified(self, pids: np.ndarray) -> None:
        """Verify the checksum of every posting in `pids` not yet verified by this process."""
        if self._verify_mode == "none":
            return
        verified = self._verified
        todo = pids[~verified[pids]] if len(verified) >= len(self.dir) else pids
        if len(todo) == 0:
            return
        with self._verify_lock:
            if len(self._verified) < len(self.dir):
                self._verified = np.concatenate([self._verified, np.zeros(len(self.dir) - len(self._verified),
                                                                          bool)])
            for pid in todo:
                pid = int(pid)
                if not self._check(pid):
                    self.raise_corrupt(pid)
                self._verified[pid] = True

    def check_consistent(self, pid: int) -> bool:
        """Whether posting `pid`'s valid records match its checksum, with count and checksum read as one pair (an
        append in place updates the two together under this lock): the check for a reader that saw a mismatch
        on a (count, checksum) pair it read unlocked, which an append may have torn."""
        with self._verify_lock:
            return self._check(pid)

    def _check(self, pid: int) -> bool:
        d = self.dir
        off, n = int(d.offset[pid]), int(d.count[pid])
        return zlib.crc32(self.buffer[off: off + n * self.rec_size]) == int(d.crc[pid])

    def raise_corrupt(self, pid: int) -> None:
        d = self.dir
        raise CorruptionError(self.path, f"posting {pid} fails its checksum",
                              offset=int(d.offset[pid]), length=int(d.count[pid]) * self.rec_size)

    def verify_all(self) -> list[int]:
        """Check every live posting; return the ids that fail (used by `vdbctl check`)."""
        return [pid for pid in range(len(self.dir)) if self.dir.count[pid] and not self._check(pid)]

    def willneed(self, pids: np.ndarray) -> None:
        d = self.dir
        for pid in pids:
            self._file.willneed(int(d.offset[pid]), int(d.count[pid]) * self.rec_size)

    def bytes_of(self, pids: np.ndarray) -> int:
        """Bytes a read of these postings touches, in whole pages (a packed posting may share its first and
        last page with its neighbours and may straddle a page boundary)."""
        if len(pids) == 0:
            return 0
        d = self.dir
        first, last = page_span(d.offset[pids], d.count[pids].astype(np.int64) * self.rec_size)
        return int((last - first).sum()) * fmt.PAGE_SIZE

    @property
    def file_bytes(self) -> int:
        return self._end

    def drop_cache(self) -> None:
        self._file.drop_cache()

    # -- writing (single writer) ------------------------------------------------------------------------
    def _allocate(self, capacity: int) -> tuple[int, int]:
        """Reserve a fresh extent at the end of the file; return (offset, capacity rounded up to its pages)."""
        pages = int(fmt.pages_for(capacity, self.rec_size))
        off = fmt.page_ceil(self._end)
        self._end = off + pages * fmt.PAGE_SIZE
        self._file.ensure_size(self._end)
        return off, fmt.capacity_of(pages, self.rec_size)

    def _write_extent(self, records: np.ndarray, capacity: int) -> tuple[int, int, int]:
        off, cap = self._allocate(max(capacity, len(records), 1))
        data = np.ascontiguousarray(records, dtype=self.record_dtype)
        if len(data):
            self._file.pwrite(data, off)
        return off, cap, zlib.crc32(data)

    def add_postings(self, record_lists: list[np.ndarray], capacities: list[int] | None = None) -> np.ndarray:
        """Write new postings; return their ids. Published to readers in one directory swap.

        With `capacities`, each posting gets its own page-aligned extent with room for that many records (the
        slack is append space). Without, the postings are *packed*: written back to back in one write, each
        extent exactly its records (flag FLAG_PACKED), so the file holds no slack and a read of several
        neighbouring postings is one contiguous range; a packed posting's first append moves it to a fresh
        page-aligned extent (copy on write, as any growth does)."""
        new = self.dir.grown(len(record_lists))
        base = len(self.dir)
        if capacities is None:
            self._write_packed(record_lists, new, base)
        else:
            for i, (recs, cap) in enumerate(zip(record_lists, capacities)):
                off, c, crc = self._write_extent(recs, cap)
                new.offset[base + i], new.capacity[base + i], new.count[base + i] = off, c, len(recs)
                new.crc[base + i] = crc
        self._publish(new)
        return np.arange(base, base + len(record_lists))

    def _write_packed(self, record_lists: list[np.ndarray], new: PostingDirectory, base: int) -> None:
        lengths = np.array([len(r) for r in record_lists], np.int64)
        start = self._end
        offsets = start + np.concatenate([[0], np.cumsum(lengths)[:-1]]) * self.rec_size
        data = np.concatenate([np.ascontiguousarray(r, dtype=self.record_dtype) for r in record_lists]) \
            if len(record_lists) else np.zeros(0, self.record_dtype)
        self._end = start + len(data) * self.rec_size
        self._file.ensure_size(self._end)
        if len(data):
            self._file.pwrite(data, start)
        raw = data.view(np.uint8)
        for i, (off, n) in enumerate(zip(offsets, lengths)):
            lo = int(off - start)
            new.crc[base + i] = zlib.crc32(raw[lo: lo + int(n) * self.rec_size])
        sl = slice(base, base + len(record_lists))
        new.offset[sl], new.capacity[sl], new.count[sl] = offsets, lengths, lengths
        new.flags[sl] = fmt.FLAG_PACKED

    def add_retired(self, n: int) -> None:
        """Directory entries for postings that no longer exist (no extent), keeping posting ids dense."""
        new = self.dir.grown(n)
        base = len(self.dir)
        new.offset[base:] = HEADER_SIZE
        new.flags[base:] = fmt.FLAG_RETIRED
        self._publish(new)

    def append(self, pid: int, records: np.ndarray, grow_to: int | None = None) -> None:
        """Append records to posting `pid`; moves it to a bigger extent when its slack is used up."""
        self.append_many(np.array([pid], np.int64), np.array([0, len(records)], np.int64), records, grow_to)

    def append_many(self, pids: np.ndarray, starts: np.ndarray, records: np.ndarray,
                    grow_to: int | None = None) -> None:
        """Append records[starts[i]:starts[i + 1]] to posting pids[i] for every i (pids distinct), in one pass:
        the groups that fit their extent's slack are written in place and published together; the others move
        to bigger extents (at least `grow_to` records, twice their new length), published in one directory swap.
        Why a batch: the maintenance thread places thousands of small groups per step, and an append call per
        group held the GIL for most of the step, which searches waited behind (issue 13)."""
        pids, starts = np.asarray(pids, np.int64), np.asarray(starts, np.int64)
        data = np.ascontiguousarray(records, dtype=self.record_dtype)
        if len(np.unique(pids)) != len(pids) or len(starts) != len(pids) + 1 or \
                (len(starts) and (starts[0] < 0 or starts[-1] > len(data) or (np.diff(starts) < 0).any())):
            raise ValueError("append_many takes distinct posting ids and, per posting, the start of its records "
                             "(ascending, within the records) plus the end")
        raw, rs = data.view(np.uint8), self.rec_size
        d = self.dir
        counts = d.count[pids].astype(np.int64)
        lengths = np.diff(starts)
        fits = np.nonzero(counts + lengths <= d.capacity[pids])[0]
        moved = np.setdiff1d(np.arange(len(pids)), fits, assume_unique=True)
        lo, hi = starts[fits] * rs, starts[fits + 1] * rs
        old_end = self._end
        try:  # every byte written before anything is published: a failure leaves the batch undone, not half done
            grown = self._write_grown(pids[moved], starts[moved], starts[moved + 1], raw, grow_to or 0) \
                if len(moved) else None
            self._file.pwrite_spans(raw, lo, hi, d.offset[pids[fits]] + counts[fits] * rs)
        except BaseException:
            self._forget_tail(old_end)
            raise
        crcs = np.array([zlib.crc32(raw[a:b], c) for a, b, c in zip(lo.tolist(), hi.tolist(),
                                                                     d.crc[pids[fits]].tolist())], np.uint32)
        with self._verify_lock:  # a verifier reads (count, crc) as one pair: never the new crc with the old count
            d.crc[pids[fits]] = crcs
            d.count[pids[fits]] = counts[fits] + lengths[fits]  # publish last: readers never see unwritten records
        if grown is not None:
            moved_pids, offsets, capacities, n, crcs = grown
            new = d.copy()
            new.offset[moved_pids], new.capacity[moved_pids], new.count[moved_pids] = offsets, capacities, n
            new.crc[moved_pids] = crcs
            new.flags[moved_pids] = 0
            self._publish(new)

    def _forget_tail(self, old_end: int) -> None:
        """Undo the extents a failed batch allocated past `old_end` (no directory names them): free their blocks
        and let the next attempt reuse the range, so a full disk does not turn every retry into garbage."""
        start = fmt.page_ceil(old_end)
        if self._end > start:
            try:
                self._file.punch(start, self._end - start)
            except OSError:  # the blocks stay allocated; the range is still reused. Never hide the first error
                log.warning("%s: could not free %d bytes a failed append wrote", self.path, self._end - start)
        self._end = old_end

    def _write_grown(self, pids: np.ndarray, lo: np.ndarray, hi: np.ndarray, raw: np.ndarray, grow_to: int):
        """Copy on write for append_many: posting pids[i] gets a fresh extent at the end of the file holding its
        records followed by raw[lo[i] * rec_size: hi[i] * rec_size], with room for max(grow_to, twice that); the
        records staged in one buffer, one write per extent (the slack stays sparse). Returns what to publish."""
        self.ensure_verified(pids)
        d, rs, buf = self.dir, self.rec_size, self.buffer
        old_n = d.count[pids].astype(np.int64)
        n = old_n + hi - lo
        pages = fmt.pages_for(np.maximum(grow_to, 2 * n), rs)
        start = fmt.page_ceil(self._end)
        offsets = start + np.concatenate([[0], np.cumsum(pages)[:-1]]) * fmt.PAGE_SIZE
        nbytes = n * rs
        rel = np.concatenate([[0], np.cumsum(nbytes)[:-1]])  # each extent's records, back to back
        staged = np.empty(int(nbytes.sum()), np.uint8)
        crcs = np.zeros(len(pids), np.uint32)
        for i, (src, k, a, b, at) in enumerate(zip(d.offset[pids].tolist(), (old_n * rs).tolist(), (lo * rs).tolist(),
                                                   (hi * rs).tolist(), rel.tolist())):
            staged[at: at + k] = buf[src: src + k]
            staged[at + k: at + k + b - a] = raw[a:b]
            crcs[i] = zlib.crc32(staged[at: at + k + b - a])
        self._end = int(offsets[-1] + pages[-1] * fmt.PAGE_SIZE)
        self._file.ensure_size(self._end)
        self._file.pwrite_spans(staged, rel, rel + nbytes, offsets)
        return pids, offsets, fmt.capacity_of(pages, rs), n, crcs

    def rewrite(self, pid: int, records: np.ndarray, capacity: int | None = None) -> None:
        """Replace the content of posting `pid` (copy on write into a fresh extent)."""
        off, cap, crc = self._write_extent(records, capacity or len(records))
        new = self.dir.copy()
        new.offset[pid], new.capacity[pid], new.count[pid], new.crc[pid] = off, cap, len(records), crc
        new.flags[pid] = 0
        self._publish(new)

    def forget_from(self, n: int) -> None:
        """Forget postings n.. (a structural change that failed after adding them): the directory goes back to its
        first n entries, their bytes become garbage (reclaimed by compaction)."""
        d = self.dir
        if n < len(d):
            self._publish(PostingDirectory(d.offset[:n].copy(), d.capacity[:n].copy(), d.count[:n].copy(),
                                           d.crc[:n].copy(), d.flags[:n].copy()))

    def retire(self, pids) -> None:
        """Mark postings as gone (their heads were split or merged away). Their bytes become garbage."""
        new = self.dir.copy()
        new.count[pids] = 0
        new.crc[pids] = 0
        new.flags[pids] |= fmt.FLAG_RETIRED
        self._publish(new)

    def _publish(self, new: PostingDirectory) -> None:
        if len(self._verified) < len(new):
            self._verified = np.concatenate([self._verified, np.ones(len(new) - len(self._verified), bool)])
        self.dir = new  # one reference swap: readers see the old or the new directory, never a mix

    def garbage_bytes(self) -> int:
        """Bytes in the file not referenced by any live extent (reclaimed by compaction)."""
        d, end = self.dir, self._end  # one directory: a split publishing a longer one meanwhile (stats run
        alive = (d.flags & fmt.FLAG_RETIRED) == 0  # beside the writer) made the mask and the arrays disagree
        live = fmt.extent_bytes(d.capacity[alive], d.flags[alive], self.rec_size).sum()
        return int(max(0, end - HEADER_SIZE - live))

    def sync(self) -> None:
        self._file.sync()

    def finish(self) -> None:
        """Cut the sparse growth tail (bulk builds end with an exact-size file)."""
        self._file.truncate(self._end)


def page_span(offsets, lengths) -> tuple[np.ndarray, np.ndarray]:
    """(first page, one past the last page) of byte ranges [offset, offset + length); empty ranges span 0."""
    offsets = np.asarray(offsets, np.int64)
    lengths = np.asarray(lengths, np.int64)
    first = offsets // fmt.PAGE_SIZE
    last = np.where(lengths > 0, -(-(offsets + lengths) // fmt.PAGE_SIZE), first)
    return first, last
