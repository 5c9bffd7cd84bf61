"""The LMDB environment under a metadata store: one shared open per path and process, the size checks that keep
LMDB from SIGBUS on a truncated file, and the guards that turn a damaged page into a CorruptionError naming
data.mdb (LMDB keeps no page checksums; the store's own record checksums are in storage/meta.py)."""
from __future__ import annotations

import functools
import inspect
import os
import threading
from pathlib import Path

import lmdb
import numpy as np

from storage.errors import CorruptionError, FormatError, TruncatedError

# LMDB's own structure checks (it keeps no page checksums): what a damaged tree page raises on a read
LMDB_DAMAGE = (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.InvalidError, lmdb.BadValsizeError)
LMDB_MIN_PAGE = 4096          # the smallest page LMDB writes on the platforms vdb runs on (its OS page size)
SUBDBS = (b"manifest", b"arrays", b"ext2int", b"payloads")


# py-lmdb allows one Environment per path and process, so readers of the same directory share it.
_ENVS: dict[str, list] = {}  # realpath -> [env, dbs, refcount]
_ENVS_LOCK = threading.Lock()


def acquire(key: str, path: Path, readonly: bool, create: bool, map_size: int):
    with _ENVS_LOCK:
        if key in _ENVS:
            entry = _ENVS[key]
            entry[2] += 1
            return entry[0], entry[1]
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
        _ENVS[key] = [env, dbs, 1]
        return env, dbs


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


def release(key: str) -> None:
    with _ENVS_LOCK:
        entry = _ENVS[key]
        entry[2] -= 1
        if entry[2] == 0:
            entry[0].close()
            del _ENVS[key]


def mapping_start(path: Path) -> int:
    """Where this process maps `path` (the lowest address of its mappings in /proc/self/maps), 0 if unknown."""
    target = os.path.realpath(path)
    try:
        with open("/proc/self/maps") as f:
            starts = [int(line.split("-", 1)[0], 16) for line in f if line.rstrip().endswith(" " + target)]
    except OSError:
        return 0
    return min(starts, default=0)


def names_damage(method):
    """A read of a damaged tree page raises LMDB's own error, which names no file: say which store it was."""
    if inspect.isgeneratorfunction(method):
        @functools.wraps(method)
        def walk(self, *args, **kwargs):
            try:
                yield from method(self, *args, **kwargs)
            except LMDB_DAMAGE as e:
                raise self._corrupt(f"a page of the metadata store is damaged: {e}") from e
        return walk

    @functools.wraps(method)
    def read(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except LMDB_DAMAGE as e:
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
