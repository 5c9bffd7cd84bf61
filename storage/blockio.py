"""Reading many byte ranges of one file at once: the reads of one query go to the device together.

A query that needs R pages read one fault at a time waits R device round trips; issued together they cost
about one (the device serves its queue in parallel). `BlockReader.read` takes every range a query needs,
widens each to whole pages, merges ranges that touch, and

  * with O_DIRECT (the default where the file system supports it) submits them all in one Linux AIO
    `io_submit` and waits in one `io_getevents`: one thread keeps the device queue full, the GIL is released
    for both calls (ctypes), and nothing enters the page cache, so a memory limit (a cgroup counts the page
    cache) is spent only on what the index chose to keep (its posting cache);
  * without O_DIRECT (tmpfs, some network file systems, or `direct=False`) reads each range with os.preadv,
    one after another: correct, through the page cache, and as slow as that is.

The kernel ABI is used directly through libc's syscall(2) (io_setup / io_submit / io_getevents / io_destroy;
x86-64 and aarch64 numbers), so there is no dependency to install; each thread gets its own AIO context.
Counters (`stats`) say how many reads, pages and bytes went to the device.
"""
from __future__ import annotations

import ctypes
import errno
import os
import platform
import threading
from dataclasses import dataclass

import numpy as np

PAGE = 4096
MAX_DEPTH = 256              # requests per AIO context (a query needs tens)
_SYSCALLS = {"x86_64": (206, 207, 208, 209), "aarch64": (0, 1, 4, 2)}  # setup, destroy, getevents, submit
IOCB = np.dtype([("data", "<u8"), ("key", "<u4"), ("rw_flags", "<u4"), ("opcode", "<u2"), ("reqprio", "<i2"),
                 ("fildes", "<u4"), ("buf", "<u8"), ("nbytes", "<u8"), ("offset", "<i8"), ("reserved2", "<u8"),
                 ("flags", "<u4"), ("resfd", "<u4")])
IO_EVENT = np.dtype([("data", "<u8"), ("obj", "<u8"), ("res", "<i8"), ("res2", "<i8")])
_CMD_PREAD = 0


@dataclass
class ReadStats:
    reads: int = 0        # I/O requests sent to the device (after merging touching ranges)
    pages: int = 0        # 4 KiB pages they covered
    calls: int = 0        # read() calls (one per query wave)

    def as_dict(self) -> dict:
        return {"reads": self.reads, "pages": self.pages, "bytes": self.pages * PAGE, "calls": self.calls}


def aligned_empty(nbytes: int) -> np.ndarray:
    """An uninitialised uint8 buffer whose first byte is page aligned (O_DIRECT needs it)."""
    raw = np.empty(nbytes + PAGE, np.uint8)
    shift = (-raw.ctypes.data) % PAGE
    return raw[shift: shift + nbytes]


def plan(offsets: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Page-aligned reads covering the ranges: (read offsets, read lengths, start of each range in the
    concatenated buffer). Ranges whose pages touch or overlap are read once."""
    offsets = np.asarray(offsets, np.int64)
    lengths = np.asarray(lengths, np.int64)
    lo = offsets // PAGE * PAGE
    hi = -(-(offsets + np.maximum(lengths, 1)) // PAGE) * PAGE
    order = np.argsort(lo, kind="stable")
    slo, shi = lo[order], np.maximum.accumulate(hi[order])
    new = np.ones(len(order), bool)
    new[1:] = slo[1:] > shi[:-1]          # a gap of at least one page starts a new read
    group = np.cumsum(new) - 1
    r_off = slo[new]
    r_end = np.zeros(len(r_off), np.int64)
    np.maximum.at(r_end, group, shi)
    r_len = r_end - r_off
    buf_start = np.concatenate([[0], np.cumsum(r_len)[:-1]]) if len(r_len) else r_len
    starts = np.empty(len(offsets), np.int64)
    starts[order] = buf_start[group] + (offsets[order] - r_off[group])
    return r_off, r_len, starts


class _Aio:
    """The raw Linux AIO calls, through libc's syscall(2)."""

    def __init__(self):
        nums = _SYSCALLS.get(platform.machine())
        if nums is None:
            raise OSError(errno.ENOSYS, f"no AIO syscall numbers for {platform.machine()}")
        self.setup_nr, self.destroy_nr, self.getevents_nr, self.submit_nr = nums
        libc = ctypes.CDLL(None, use_errno=True)
        self.syscall = libc.syscall
        self.syscall.restype = ctypes.c_long

    def _call(self, *args) -> int:
        r = self.syscall(*[ctypes.c_long(a) for a in args])
        if r < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        return r

    def setup(self, depth: int) -> int:
        ctx = ctypes.c_ulong(0)
        self._call(self.setup_nr, depth, ctypes.addressof(ctx))
        return ctx.value

    def destroy(self, ctx: int) -> None:
        self._call(self.destroy_nr, ctx)

    def submit(self, ctx: int, n: int, ptrs_addr: int) -> int:
        while True:
            try:
                return self._call(self.submit_nr, ctx, n, ptrs_addr)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EINTR):
                    raise

    def getevents(self, ctx: int, min_nr: int, nr: int, events_addr: int) -> int:
        while True:
            try:
                return self._call(self.getevents_nr, ctx, min_nr, nr, events_addr, 0)
            except OSError as e:
                if e.errno != errno.EINTR:
                    raise


class BlockReader:
    """Batched reads of one file (see the module docstring), which another writer may grow but never rewrites
    under the ranges read. Safe to share between threads."""

    def __init__(self, path: str | os.PathLike, *, direct: bool = True):
        self.path = str(path)
        self.stats = ReadStats()
        self._stats_lock = threading.Lock()
        self._local = threading.local()
        self._contexts: list[int] = []
        self._ctx_lock = threading.Lock()
        self.fd = -1
        self.direct = False
        if direct and hasattr(os, "O_DIRECT"):
            try:
                self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECT)
                self._aio = _Aio()
                self._aio.destroy(self._aio.setup(1))  # AIO available at all (kernels may disable it)
                self.direct = self._probe()
            except OSError:
                self.direct = False
            if not self.direct and self.fd >= 0:
                os.close(self.fd)
                self.fd = -1
        if self.fd < 0:
            self.fd = os.open(self.path, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size

    def _probe(self) -> bool:
        """One aligned O_DIRECT read (some file systems accept the flag at open and fail the read)."""
        if os.fstat(self.fd).st_size == 0:
            return True
        buf = aligned_empty(PAGE)
        try:
            return os.preadv(self.fd, [memoryview(buf)], 0) > 0
        except OSError:
            return False

    # -- reading ------------------------------------------------------------------------------------------
    def read(self, offsets, lengths) -> tuple[np.ndarray, np.ndarray]:
        """Read byte ranges [offsets[i], offsets[i] + lengths[i]) in one wave; returns (buffer, starts): range i
        is buffer[starts[i]: starts[i] + lengths[i]]. Ranges past the end of the file raise EOFError."""
        lengths = np.asarray(lengths, np.int64)
        offsets = np.asarray(offsets, np.int64)
        if len(offsets) and int((offsets + lengths).max()) > self.size:
            self.size = os.fstat(self.fd).st_size  # a file its writer grew since (a mutable index appends)
            if int((offsets + lengths).max()) > self.size:
                raise EOFError(f"{self.path}: read past the end of the file ({self.size} bytes)")
        r_off, r_len, starts = plan(offsets, lengths)
        buf = aligned_empty(int(r_len.sum()))
        if len(r_off):
            if self.direct:
                self._read_aio(buf, r_off, r_len)
            else:
                self._read_plain(buf, r_off, r_len)
        with self._stats_lock:
            self.stats.reads += len(r_off)
            self.stats.pages += int(r_len.sum()) // PAGE
            self.stats.calls += 1
        return buf, starts

    def _read_plain(self, buf: np.ndarray, r_off: np.ndarray, r_len: np.ndarray) -> None:
        pos = 0
        for off, n in zip(r_off.tolist(), r_len.tolist()):
            want = min(n, self.size - off)
            got = 0
            while got < want:
                k = os.preadv(self.fd, [memoryview(buf[pos + got: pos + want])], off + got)
                if k <= 0:
                    raise EOFError(f"{self.path}: short read at {off + got}")
                got += k
            pos += n

    def _context(self) -> int:
        ctx = getattr(self._local, "ctx", None)
        if ctx is None:
            ctx = self._aio.setup(MAX_DEPTH)
            self._local.ctx = ctx
            with self._ctx_lock:
                self._contexts.append(ctx)
        return ctx

    def _read_aio(self, buf: np.ndarray, r_off: np.ndarray, r_len: np.ndarray) -> None:
        ctx = self._context()
        base = buf.ctypes.data
        pos = np.concatenate([[0], np.cumsum(r_len)[:-1]])
        for s in range(0, len(r_off), MAX_DEPTH):
            sl = slice(s, s + MAX_DEPTH)
            n = len(r_off[sl])
            cbs = np.zeros(n, IOCB)
            cbs["data"] = np.arange(s, s + n)
            cbs["opcode"] = _CMD_PREAD
            cbs["fildes"] = self.fd
            cbs["buf"] = base + pos[sl]
            cbs["nbytes"] = r_len[sl]
            cbs["offset"] = r_off[sl]
            ptrs = (cbs.ctypes.data + np.arange(n, dtype=np.uint64) * IOCB.itemsize).astype(np.uint64)
            done = 0
            while done < n:
                done += self._aio.submit(ctx, n - done, ptrs.ctypes.data + 8 * done)
            events = np.zeros(n, IO_EVENT)
            got = 0
            while got < n:
                got += self._aio.getevents(ctx, n - got, n - got, events.ctypes.data + got * IO_EVENT.itemsize)
            idx = events["data"].astype(np.int64)
            want = np.minimum(r_len[idx], self.size - r_off[idx])
            bad = np.nonzero(events["res"] < want)[0]
            if len(bad):
                res = int(events["res"][bad[0]])
                if res < 0:
                    raise OSError(-res, f"{self.path}: read at {int(r_off[idx[bad[0]]])}: {os.strerror(-res)}")
                raise EOFError(f"{self.path}: short read at {int(r_off[idx[bad[0]]])}")

    def close(self) -> None:
        with self._ctx_lock:
            for ctx in self._contexts:
                try:
                    self._aio.destroy(ctx)
                except OSError:
                    pass
            self._contexts.clear()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
