"""The LMDB environment under a metadata store: one shared open per path and process, the size checks that keep
LMDB from SIGBUS on a truncated file, and the guards that turn a damaged page into a CorruptionError naming
data.mdb (LMDB keeps no page checksums; the store's own record checksums are in storage/meta.py)."""
from __future__ import annotations

import functools
import inspect
import logging
import mmap
import os
import struct
import threading
from contextlib import contextmanager
from pathlib import Path

import lmdb
import numpy as np

from storage.errors import CorruptionError, FormatError, MetaStoreError, TruncatedError

log = logging.getLogger(__name__)

# LMDB's own structure checks (it keeps no page checksums): what a damaged tree page raises on a read
LMDB_DAMAGE = (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.InvalidError, lmdb.BadValsizeError)
READ_DAMAGE = LMDB_DAMAGE + (struct.error,)  # ... or a key or value of a length no record of ours has
LMDB_MIN_PAGE = 4096          # the smallest page LMDB writes on the platforms vdb runs on (its OS page size)
SUBDBS = (b"manifest", b"arrays", b"ext2int", b"payloads")


# py-lmdb allows one Environment per path and process, so readers of the same directory share it.
_ENVS: dict[str, list] = {}  # realpath -> [env, dbs, refcount, TailGuard]
_ENVS_LOCK = threading.Lock()


def acquire(key: str, path: Path, readonly: bool, create: bool, map_size: int):
    with _ENVS_LOCK:
        if key in _ENVS:
            entry = _ENVS[key]
            entry[2] += 1
            return entry[0], entry[1], entry[3]
        if not create:
            _check_not_empty(path)
        try:
            # The directory lock (storage.lock) already excludes a concurrent writer, so read-only opens can
            # skip LMDB's own lock file and work on read-only media.
            env = lmdb.open(str(path), map_size=map_size, max_dbs=len(SUBDBS), readonly=readonly,
                            lock=not readonly, subdir=True, create=create, readahead=False)
        except lmdb.Error as e:
            raise CorruptionError(path / "data.mdb", f"cannot open LMDB environment: {e}") from e
        try:
            _check_size(path, env)
        except BaseException:
            env.close()
            raise
        try:
            dbs = {name: env.open_db(name, create=not readonly) for name in SUBDBS}
        except lmdb.Error as e:
            env.close()
            raise FormatError(f"{path}: metadata store lacks its tables ({e})") from e
        try:
            guard = TailGuard(path, env)  # after open_db, which may write (its own transaction, not guarded)
        except BaseException:
            env.close()
            raise
        _ENVS[key] = [env, dbs, 1, guard]
        return env, dbs, guard


def _check_not_empty(path: Path) -> None:
    """LMDB takes a data.mdb too short for its two meta pages for a new environment and initialises it (writing
    into what it was asked to open): an existing store that short was truncated."""
    size = (path / "data.mdb").stat().st_size
    if size < 2 * LMDB_MIN_PAGE:
        raise TruncatedError(path / "data.mdb", f"file has {size} bytes, less than the two {LMDB_MIN_PAGE}-byte "
                                                f"meta pages every LMDB environment starts with")


def _check_size(path: Path, env) -> None:
    """LMDB maps data.mdb and would die of SIGBUS reading a page past the end of a truncated file: refuse it."""
    need = (int(env.info()["last_pgno"]) + 1) * int(env.stat()["psize"])
    size = (path / "data.mdb").stat().st_size
    if size < need:
        raise TruncatedError(path / "data.mdb", f"file has {size} bytes but its pages run to byte {need}")


# LMDB keeps no page checksums: a damaged page can send a read past the end of data.mdb, where the mapping has
# no backing and the process dies of SIGBUS, taking every collection with it. Node offsets are 16 bits, so such
# a read starts at most 64 KiB past its page; a damaged 32-bit value size can make py-lmdb touch up to 4 GiB
# (it pre-faults every page of a value it hands out). So past the end of the file the mapping always reads as
# zeros, which LMDB's structure checks, the value bound check (value_in_file) or the record checksums refuse.
ZERO_TAIL = (4 << 30) + (64 << 10)


class TailGuard:
    """Keeps ZERO_TAIL bytes of LMDB's mapping past the end of data.mdb as anonymous zero pages (address space
    only: reading them maps the kernel's zero page) whenever no write transaction is open.

    A write transaction may write pages past the old end (at commit, or mid-transaction when LMDB spills dirty
    pages) and read them back through the mapping, so while one is open (`writing`) the whole tail is mapped
    from the file again, as LMDB mapped it; after it ends the zero pages go past the new end. Readers never
    wait: pages the file has are always mapped from the file (a damaged read past the end during a write can
    still SIGBUS: the window is one transaction). The file ranges are mapped from one descriptor at contiguous
    offsets, so the kernel merges them into one mapping however many commits grow the file."""

    def __init__(self, path: Path, env):
        self.file, self.env = path / "data.mdb", env
        self.start, self.end = mapping_range(self.file)
        self.backed = 0             # bytes from the start of the mapping that are mapped from the file
        self.writer = threading.Lock()  # one write transaction at a time, from tail-to-file to zero tail
        self._fd = os.open(self.file, os.O_RDONLY) if self.start else -1
        self.place()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def place(self) -> None:
        """Put the zero pages right past the file's current end. A failure turns the guard off (logged): the
        store then behaves as LMDB alone, and nothing it committed is affected."""
        if not self.start:
            return  # /proc/self/maps did not show the mapping: no guard (never seen on Linux)
        size = -(-os.path.getsize(self.file) // mmap.PAGESIZE) * mmap.PAGESIZE
        length = min(ZERO_TAIL, self.end - (self.start + size))  # only ever inside LMDB's own mapping
        try:
            if length > 0:
                _map_zeros(self.start + size, length)
        except OSError as e:
            log.error("%s: cannot map zero pages past the end (%s); reads past it are unguarded", self.file, e)
            self.start = 0
            return
        self.backed = size

    @contextmanager
    def writing(self):
        """Around a write transaction: the tail is mapped from the file while it is open (see the class)."""
        with self.writer:
            if self.start:
                length = min(ZERO_TAIL, self.end - (self.start + self.backed))
                try:
                    if length > 0:
                        _map_file(self._fd, self.start + self.backed, length, self.backed)
                except OSError as e:  # before the transaction begins: nothing was written
                    raise MetaStoreError(f"{self.file}: cannot map the file's tail for a write ({e}); nothing "
                                         f"was written") from e
            try:
                yield
            finally:
                self.place()


def _libc_mmap():
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    return libc, ctypes


MAP_FIXED = 0x10  # Linux: replace what is mapped at the address (here: part of LMDB's own mapping)


def _map_zeros(addr: int, length: int) -> None:
    libc, ctypes = _libc_mmap()
    got = libc.mmap(addr, length, mmap.PROT_READ, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_FIXED, -1, 0)
    if got != addr:
        raise OSError(ctypes.get_errno(), "cannot map zero pages past the end of data.mdb")


def _map_file(fd: int, addr: int, length: int, offset: int) -> None:
    libc, ctypes = _libc_mmap()
    got = libc.mmap(addr, length, mmap.PROT_READ, mmap.MAP_SHARED | MAP_FIXED, fd, offset)
    if got != addr:
        raise OSError(ctypes.get_errno(), "cannot map data.mdb back over its zero tail")


def release(key: str) -> None:
    with _ENVS_LOCK:
        entry = _ENVS[key]
        entry[2] -= 1
        if entry[2] == 0:
            entry[0].close()
            entry[3].close()
            del _ENVS[key]


def mapping_range(path: Path) -> tuple[int, int]:
    """The address range over which this process maps `path` (its mappings in /proc/self/maps, which LMDB's
    one mapping may show as several lines once split), (0, 0) if unknown."""
    target = os.path.realpath(path)
    try:
        with open("/proc/self/maps") as f:
            spans = [tuple(int(x, 16) for x in line.split(" ", 1)[0].split("-")) for line in f
                     if line.rstrip().endswith(" " + target)]
    except OSError:
        return 0, 0
    return (min(a for a, _ in spans), max(b for _, b in spans)) if spans else (0, 0)


def mapping_start(path: Path) -> int:
    """Where this process maps `path`, 0 if unknown."""
    return mapping_range(path)[0]


def names_damage(method):
    """A read of a damaged tree page raises LMDB's own error, which names no file: say which store it was."""
    if inspect.isgeneratorfunction(method):
        @functools.wraps(method)
        def walk(self, *args, **kwargs):
            try:
                yield from method(self, *args, **kwargs)
            except READ_DAMAGE as e:
                raise self._corrupt(f"a page of the metadata store is damaged: {e}") from e
        return walk

    @functools.wraps(method)
    def read(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except READ_DAMAGE as e:
            raise self._corrupt(f"a page of the metadata store is damaged: {e}") from e
    return read




def value_in_file(view, mapping: tuple[int, int] | None, path: Path, key: bytes):
    """A value LMDB hands out as a view of its mapping, refused if it runs past the end of the file: a damaged
    size field would otherwise make the copy read unbacked pages and kill the process with SIGBUS. (A read
    transaction only ever sees pages of the mapping.) `mapping`: (start, end of file) from MetaStore."""
    if view is None or not len(view) or mapping is None:
        return view
    start, (lo, end) = np.frombuffer(view, np.uint8).ctypes.data, mapping
    if not lo <= start <= start + len(view) <= end:
        raise CorruptionError(path, f"the value of key {key.hex()} ({len(view)} bytes) runs past the end of the "
                                    f"file")
    return view
