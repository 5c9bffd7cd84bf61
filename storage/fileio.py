"""Durable file primitives: fsync helpers, atomic file publish, atomic directory publish.

Every file that must survive a crash is published as temp -> fsync -> os.replace -> fsync(parent dir):
a reader sees either the old complete file or the new complete file, never a torn one.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import uuid
from pathlib import Path

from storage.errors import DISK_FULL_ERRNOS, DiskFullError
from storage.lock import DirLock


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file or directory by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory so that renames and creations inside it are durable."""
    fsync_path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves either the old or the new content."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def copy_prefix(src: str | os.PathLike, dst: str | os.PathLike, nbytes: int | None, chunk: int = 8 << 20) -> None:
    """Copy the first `nbytes` of `src` (None: all of it, as long as it was when opened) into the new file `dst`
    and fsync it (a writer may be appending past `nbytes` meanwhile); OSError if `src` is shorter."""
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        if nbytes is None:
            nbytes = os.fstat(fin.fileno()).st_size
        left = nbytes
        while left > 0:
            data = fin.read(min(chunk, left))
            if not data:
                raise OSError(f"{src}: {nbytes - left} bytes where {nbytes} were expected")
            fout.write(data)
            left -= len(data)
        fout.flush()
        os.fsync(fout.fileno())


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file and directory below `root` (used before publishing a built directory)."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            fsync_path(os.path.join(dirpath, name))
        fsync_dir(dirpath)


FALLOC_FL_KEEP_SIZE = 1  # linux/falloc.h: allocate blocks without changing the file size
FALLOC_FL_PUNCH_HOLE = 2  # linux/falloc.h: free the blocks of a range (it reads as zeros); needs KEEP_SIZE
_RENAME_EXCHANGE = 2
_libc = None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE); False if the kernel/libc lacks it."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fn = getattr(_libc, "renameat2", None)
    if fn is None:
        return False
    at_fdcwd = -100
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def reserve_space(fd: int, offset: int, length: int, *, keep_size: bool = False) -> bool:
    """Allocate real blocks for [offset, offset + length) so that later writes there cannot fail for space.

    keep_size: the file's size stays as it is (fallocate FALLOC_FL_KEEP_SIZE), for files whose size is their
    content (a WAL segment). Raises DiskFullError when the device has no room; returns False (nothing reserved)
    where the file system cannot allocate ahead, so callers degrade to plain writes."""
    if length <= 0:
        return True
    global _libc
    try:
        if keep_size:
            if _libc is None:
                _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            fn = _libc.fallocate
            fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
            if fn(fd, FALLOC_FL_KEEP_SIZE, offset, length) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
        else:
            os.posix_fallocate(fd, offset, length)
    except OSError as e:
        if e.errno in DISK_FULL_ERRNOS:
            raise DiskFullError(f"no space left on the device to reserve {length} bytes") from None
        if e.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return False
        raise
    return True


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Free the blocks of [offset, offset + length) (fallocate PUNCH_HOLE | KEEP_SIZE): the range reads as zeros
    and the file keeps its size. False (nothing freed) where the file system cannot punch holes."""
    global _libc
    if length <= 0:
        return True
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fn = _libc.fallocate
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    if fn(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        err = ctypes.get_errno()
        if err in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return False
        raise OSError(err, os.strerror(err))
    return True


def allocated_bytes(path: str | os.PathLike) -> int:
    """Bytes the file system really holds for `path` (st_blocks * 512: holes and sparse tails excluded); a
    directory is the sum over the files below it; 0 if it does not exist or cannot be read."""
    p = Path(path)
    try:
        if not p.is_dir():
            return p.stat().st_blocks * 512
        return sum(f.stat().st_blocks * 512 for f in p.rglob("*") if f.is_file())
    except OSError:  # gone, or unreadable (a symlink loop, EIO): accounting must not fail the stats that ask
        return 0


def publish_dir(tmp_dir: str | os.PathLike, final_dir: str | os.PathLike, *, overwrite: bool = False) -> None:
    """Make a fully written `tmp_dir` visible as `final_dir` in one atomic step.

    The caller has closed every file in `tmp_dir`. With `overwrite`, an existing `final_dir` is swapped out
    atomically (renameat2 RENAME_EXCHANGE) and then removed, so a crash at any point leaves one complete
    directory at `final_dir`.
    """
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    fsync_tree(tmp_dir)
    if final_dir.exists():
        if not overwrite:
            raise FileExistsError(f"{final_dir} already exists (pass overwrite=True / --overwrite to replace it)")
        # The old directory's lock, held across the swap: a server or reader that has it open makes this a
        # LockedError, and none can open it while it is being replaced.
        with DirLock(final_dir, exclusive=True):
            if _exchange(tmp_dir, final_dir):
                fsync_dir(final_dir.parent)
                shutil.rmtree(tmp_dir)  # now holds the old content
                return
            # Fallback without renameat2: a short window where final_dir is absent (old copy kept aside).
            aside = final_dir.with_name(f".{final_dir.name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(final_dir, aside)
            os.rename(tmp_dir, final_dir)
            fsync_dir(final_dir.parent)
            shutil.rmtree(aside)
            return
    os.rename(tmp_dir, final_dir)
    fsync_dir(final_dir.parent)
