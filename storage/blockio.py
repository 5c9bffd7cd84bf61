"""Reading many byte ranges of one file at once: the reads of one query go to the device together.

A query that needs R pages read one fault at a time waits R device round trips; issued together they cost
about one (the device serves its queue in parallel). `BlockReader.read` takes every range a query needs,
widens each to whole blocks, merges ranges that touch, and

  * with O_DIRECT (the default where the file system supports it) submits them all through Linux AIO
    (`io_submit`, a few requests per call: SUBMIT_CHUNK) before it waits for any (`io_getevents`): one thread
    keeps the device queue full, the GIL is released for both calls (ctypes), and nothing enters the page
    cache, so a memory limit (a cgroup counts the page cache) is spent only on what the index chose to keep
    (its posting cache);
  * without O_DIRECT (tmpfs, some network file systems, or `direct=False`) reads each range with os.preadv,
    one after another: correct, through the page cache, and as slow as that is.

A block is the smallest read O_DIRECT accepts on the file (probed at open: its device's logical block size,
512 bytes on most disks; 4 KiB pages without O_DIRECT). A 516-byte float32 row then costs a 1 KiB read rather
than a 4-8 KiB one, and small reads are cheaper on the device: on this VM's disk fio measured 46K IOPS for
1 KiB random reads at queue depth 30 against 22K for 4 KiB (docs/benchmarks.md).

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

import llvmlite.binding as llvm
import numpy as np
from numba import njit, types

PAGE = 4096
DIRECT_BLOCKS = (512, 1024, 2048, PAGE)  # O_DIRECT alignments tried at open, smallest first
MAX_DEPTH = 256              # requests per AIO context (a query needs tens)
SUBMIT_CHUNK = 4             # requests per io_submit: one call for a whole wave holds every request back (the block
                             # layer's plug) until the last is set up, ~120 us for 30 rows on this VM; in fours
                             # the device starts on the first while the rest are prepared: p50 of a 10M tier query
                             # 7% lower (tools/benchkit/tree_ab.py, docs/benchmarks/disk-c128-10m-submit-chunk-ab.json)
_SYSCALLS = {"x86_64": (206, 207, 208, 209), "aarch64": (0, 1, 4, 2)}  # setup, destroy, getevents, submit
IOCB = np.dtype([("data", "<u8"), ("key", "<u4"), ("rw_flags", "<u4"), ("opcode", "<u2"), ("reqprio", "<i2"),
                 ("fildes", "<u4"), ("buf", "<u8"), ("nbytes", "<u8"), ("offset", "<i8"), ("reserved2", "<u8"),
                 ("flags", "<u4"), ("resfd", "<u4")])
IO_EVENT = np.dtype([("data", "<u8"), ("obj", "<u8"), ("res", "<i8"), ("res2", "<i8")])
_CMD_PREAD = 0


@dataclass
class ReadStats:
    reads: int = 0        # I/O requests sent to the device (after merging touching ranges)
    pages: int = 0        # 4 KiB pages of the file they touched (a read smaller than a page still touches one)
    bytes: int = 0        # bytes they transferred (whole blocks)
    calls: int = 0        # read() calls (one per query wave)

    def as_dict(self) -> dict:
        return {"reads": self.reads, "pages": self.pages, "bytes": self.bytes, "calls": self.calls}


def aligned_empty(nbytes: int) -> np.ndarray:
    """An uninitialised uint8 buffer whose first byte is page aligned (O_DIRECT needs it)."""
    raw = np.empty(nbytes + PAGE, np.uint8)
    shift = (-raw.ctypes.data) % PAGE
    return raw[shift: shift + nbytes]


def plan(offsets: np.ndarray, lengths: np.ndarray, block: int = PAGE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Block-aligned reads covering the ranges: (read offsets, read lengths, start of each range in the
    concatenated buffer). Ranges whose blocks touch or overlap are read once."""
    offsets = np.ascontiguousarray(offsets, np.int64)
    lengths = np.ascontiguousarray(lengths, np.int64)
    r_off, r_len, starts = (np.empty(len(offsets), np.int64) for _ in range(3))
    n = _plan(offsets, lengths, int(block), r_off, r_len, starts)
    return r_off[:n], r_len[:n], starts


@njit(nogil=True, cache=True)
def _plan(offsets, lengths, block, r_off, r_len, starts):
    """plan() in one pass (a query's wave is tens of ranges: a dozen numpy calls cost more than the work).
    Fills the first n entries of r_off / r_len and every start; returns n."""
    m = offsets.shape[0]
    lo = np.empty(m, np.int64)
    hi = np.empty(m, np.int64)
    for i in range(m):
        lo[i] = offsets[i] // block * block
        hi[i] = -(-(offsets[i] + max(lengths[i], 1)) // block) * block
    order = np.argsort(lo, kind="mergesort")
    group = np.empty(m, np.int64)
    n = 0
    end = np.int64(0)
    for t in range(m):
        i = order[t]
        if n == 0 or lo[i] > end:   # a gap of at least one block starts a new read
            r_off[n] = lo[i]
            end = hi[i]
            n += 1
        elif hi[i] > end:
            end = hi[i]
        r_len[n - 1] = end - r_off[n - 1]
        group[i] = n - 1
    buf_start = np.empty(n, np.int64)
    pos = np.int64(0)
    for g in range(n):
        buf_start[g] = pos
        pos += r_len[g]
    for i in range(m):
        g = group[i]
        starts[i] = buf_start[g] + offsets[i] - r_off[g]
    return n


@njit(nogil=True, cache=True)
def _pages_touched(r_off, r_len):
    """4 KiB pages of the file the reads cover (reads never share a block, but two may share a page)."""
    n = 0
    last = -1
    for i in range(r_off.shape[0]):
        first, end = r_off[i] // PAGE, -(-(r_off[i] + r_len[i]) // PAGE)
        n += end - max(first, last + 1)
        last = end - 1
    return n


@njit(nogil=True, cache=True)
def _fill_iocbs(cbs, ptrs, cbs_addr, fd, buf_addr, r_off, r_len):
    """Read requests for reads (r_off[i], r_len[i]) into consecutive parts of the buffer at buf_addr: cbs is
    the IOCB records as uint64 words [n, 8] at address cbs_addr (zeroed), ptrs [n] gets each record's address.
    Words as the IOCB dtype lays them out: 0 data (the read's index), 2 opcode | fildes << 32, 3 buf,
    4 nbytes, 5 offset (tests/storage/test_blockio.py checks them against the dtype)."""
    pos = np.uint64(0)
    for i in range(r_off.shape[0]):
        cbs[i, 0] = np.uint64(i)
        cbs[i, 2] = np.uint64(_CMD_PREAD) | (np.uint64(fd) << np.uint64(32))
        cbs[i, 3] = np.uint64(buf_addr) + pos
        cbs[i, 4] = np.uint64(r_len[i])
        cbs[i, 5] = np.uint64(r_off[i])
        ptrs[i] = np.uint64(cbs_addr) + np.uint64(i * cbs.shape[1] * 8)
        pos += np.uint64(r_len[i])


@njit(nogil=True, cache=True)
def _first_short(events, r_off, r_len, size):
    """The first completion (IO_EVENT records as int64 words [n, 4]: data, obj, res, res2) that failed or read
    less than its request up to the end of the file; -1 if none."""
    for t in range(events.shape[0]):
        i = events[t, 0]
        if events[t, 2] < min(r_len[i], size - r_off[i]):
            return t
    return -1


# libc's syscall(2) with six integer arguments, called from compiled code (resolved by name, so the kernel caches)
_syscall = types.ExternalFunction("syscall", types.int64(types.int64, types.int64, types.int64, types.int64,
                                                         types.int64, types.int64))


@njit(nogil=True, cache=True)
def _wave(submit_nr, getevents_nr, ctx, ptrs_addr, n, chunk, events_addr, event_bytes, progress):
    """Submit n requests (their pointers at ptrs_addr) `chunk` at a time and wait for all n completions into
    events_addr, in one call without the GIL: through ctypes each of a wave's ~10 calls gave the GIL away and
    took it back, and with queries in flight every hand-over waited on another thread's Python. progress[0] /
    progress[1] count the requests submitted / completed so far (resumed from). Returns 0, or -1 when a call
    failed: the caller continues from `progress` through the calls that read errno."""
    done = progress[0]
    while done < n:
        r = _syscall(submit_nr, ctx, min(n - done, chunk), ptrs_addr + 8 * done, 0, 0)
        if r < 0:
            progress[0] = done
            return -1
        done += r
    progress[0] = done
    got = progress[1]
    while got < n:
        r = _syscall(getevents_nr, ctx, n - got, n - got, events_addr + got * event_bytes, 0)
        if r < 0:
            progress[1] = got
            return -1
        got += r
    progress[1] = got
    return 0


class _Aio:
    """The raw Linux AIO calls, through libc's syscall(2)."""

    def __init__(self):
        nums = _SYSCALLS.get(platform.machine())
        if nums is None:
            raise OSError(errno.ENOSYS, f"no AIO syscall numbers for {platform.machine()}")
        self.setup_nr, self.destroy_nr, self.getevents_nr, self.submit_nr = nums
        libc = ctypes.CDLL(None, use_errno=True)
        self.syscall = libc.syscall   # AttributeError without it: then there is no AIO path at all
        self.syscall.restype = ctypes.c_long
        # the compiled wave calls this very function: registered by address, because a name the JIT cannot
        # resolve is not an error at compile time but a jump to nowhere at the first call
        llvm.add_symbol("syscall", ctypes.cast(self.syscall, ctypes.c_void_p).value)
        try:  # compiles (or loads) _wave now, without making a call
            _wave(0, 0, 0, 0, 0, 1, 0, 0, np.zeros(2, np.int64))
            self.compiled = True
        except Exception:  # noqa: BLE001 - numba could not build it here: the ctypes calls serve alone
            self.compiled = False

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
        self.block = PAGE   # the alignment of every read (see the module docstring)
        if direct and hasattr(os, "O_DIRECT"):
            try:
                self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECT)
                self._aio = _Aio()
                self._aio.destroy(self._aio.setup(1))  # AIO available at all (kernels may disable it)
                block = self._probe()
                self.direct = block > 0
                self.block = block or PAGE
            except OSError:
                self.direct = False
            if not self.direct and self.fd >= 0:
                os.close(self.fd)
                self.fd = -1
        if self.fd < 0:
            self.fd = os.open(self.path, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size

    def _probe(self) -> int:
        """The smallest block an O_DIRECT read accepts here, as offset, length and memory alignment (the device's
        logical block size; some file systems accept the flag at open and fail every read: 0)."""
        size = os.fstat(self.fd).st_size
        if size == 0:
            return PAGE
        buf = aligned_empty(2 * PAGE)
        for block in DIRECT_BLOCKS:
            at = block if size >= 2 * block else 0  # an offset that is a multiple of block and of nothing larger
            try:
                if os.preadv(self.fd, [memoryview(buf[block: 2 * block])], at) > 0:
                    return block
            except OSError:
                continue
        return 0

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
        r_off, r_len, starts = plan(offsets, lengths, self.block)
        buf = aligned_empty(int(r_len.sum()))
        if len(r_off):
            if self.direct:
                self._read_aio(buf, r_off, r_len)
            else:
                self._read_plain(buf, r_off, r_len)
        with self._stats_lock:
            self.stats.reads += len(r_off)
            self.stats.pages += _pages_touched(r_off, r_len)
            self.stats.bytes += int(r_len.sum())
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
        n_all = len(r_off)
        cbs = np.zeros((n_all, IOCB.itemsize // 8), np.uint64)   # the IOCB records, as words
        ptrs = np.empty(n_all, np.uint64)
        _fill_iocbs(cbs, ptrs, cbs.ctypes.data, self.fd, buf.ctypes.data, r_off, r_len)
        events = np.zeros((min(n_all, MAX_DEPTH), IO_EVENT.itemsize // 8), np.int64)
        for s in range(0, n_all, MAX_DEPTH):
            n = min(MAX_DEPTH, n_all - s)
            try:
                self._wave(ctx, ptrs.ctypes.data + 8 * s, n, events)
            except BaseException:
                # requests may still be in flight: they would land in `buf` after it is freed, and their
                # completions would answer this thread's next wave. io_destroy waits for them; a new context
                # serves the next read
                self._drop_context(ctx)
                raise
            bad = _first_short(events[:n], r_off, r_len, self.size)
            if bad >= 0:
                res, at = int(events[bad, 2]), int(r_off[events[bad, 0]])
                if res < 0:
                    raise OSError(-res, f"{self.path}: read at {at}: {os.strerror(-res)}")
                raise EOFError(f"{self.path}: short read at {at}")

    def _wave(self, ctx: int, ptrs_addr: int, n: int, events: np.ndarray) -> None:
        """Submit the n requests at ptrs_addr and wait for their n completions into `events`."""
        progress = np.zeros(2, np.int64)   # without the compiled wave the ctypes calls do all of it
        if self._aio.compiled and _wave(self._aio.submit_nr, self._aio.getevents_nr, ctx, ptrs_addr, n,
                                        SUBMIT_CHUNK, events.ctypes.data, IO_EVENT.itemsize, progress) == 0:
            return
        done, got = int(progress[0]), int(progress[1])  # retried on EAGAIN / EINTR, raised otherwise
        while done < n:
            done += self._aio.submit(ctx, min(n - done, SUBMIT_CHUNK), ptrs_addr + 8 * done)
        while got < n:
            got += self._aio.getevents(ctx, n - got, n - got, events.ctypes.data + got * IO_EVENT.itemsize)

    def _drop_context(self, ctx: int) -> None:
        self._local.ctx = None
        with self._ctx_lock:
            if ctx in self._contexts:
                self._contexts.remove(ctx)
        try:
            self._aio.destroy(ctx)
        except OSError:
            pass

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
