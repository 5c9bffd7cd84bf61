"""The file-system port of the write-ahead log.

The WAL does all of its I/O through a `FileSystem` object so that tests can substitute one that forgets
everything not fsync'd (tests/storage/faultfs.py, after LevelDB's fault-injection Env) and prove that what
was acknowledged survives a crash. `RealFS` maps each call onto one or two os calls and adds nothing.

The port is deliberately small; every call states what is durable when it returns:
- `File.pwrite` hands bytes to the OS: they survive a process crash, not a power loss.
- `File.fsync` makes the file's content (and size) durable, not its name.
- `fsync_dir` makes the creations, renames and removals done in that directory durable.
- `File.reserve` allocates space for later writes (a full disk is then a clean refusal before anything is
  logged, never a half-written record).
"""
from __future__ import annotations

import os
from typing import Protocol

from storage.fileio import fsync_dir as _fsync_dir
from storage.fileio import reserve_space
from storage.lock import DirLock


class File(Protocol):
    """An open, writable file. Not thread-safe for writes: the WAL serialises them."""

    path: str

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None: ...
    def reserve(self, offset: int, length: int) -> None: ...  # blocks for later writes; DiskFullError if none
    def fsync(self) -> None: ...
    def truncate(self, length: int) -> None: ...
    def size(self) -> int: ...
    def close(self) -> None: ...


class Lock(Protocol):
    def close(self) -> None: ...


class FileSystem(Protocol):
    def makedirs(self, path: str) -> None: ...
    def listdir(self, path: str) -> list[str]: ...
    def exists(self, path: str) -> bool: ...
    def size(self, path: str) -> int: ...
    def read(self, path: str, offset: int = 0, length: int | None = None) -> bytes: ...
    def create(self, path: str) -> File: ...       # a new empty file; FileExistsError if the name is taken
    def open(self, path: str) -> File: ...         # an existing file, read-write
    def rename(self, src: str, dst: str) -> None: ...   # atomic; replaces dst
    def remove(self, path: str) -> None: ...
    def fsync_dir(self, path: str) -> None: ...
    def lock(self, directory: str) -> Lock: ...    # exclusive; raises storage.errors.LockedError


class RealFile:
    def __init__(self, path: str, fd: int):
        self.path, self._fd = path, fd

    def pwrite(self, data, offset: int) -> None:
        view = memoryview(data).cast("B")
        while len(view):  # pwrite may write less than asked (signals, quotas): loop until all is handed over
            n = os.pwrite(self._fd, view, offset)
            view, offset = view[n:], offset + n

    def fsync(self) -> None:
        os.fsync(self._fd)

    def reserve(self, offset: int, length: int) -> None:
        reserve_space(self._fd, offset, length, keep_size=True)

    def truncate(self, length: int) -> None:
        os.ftruncate(self._fd, length)

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class RealFS:
    """The operating system's file system."""

    def makedirs(self, path: str) -> None:
        """Create `path` and missing parents, each made durable in its parent directory."""
        missing = []
        p = os.path.abspath(path)
        while not os.path.isdir(p):
            missing.append(p)
            p = os.path.dirname(p)
        for d in reversed(missing):
            os.makedirs(d, exist_ok=True)
            _fsync_dir(os.path.dirname(d))

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def size(self, path: str) -> int:
        return os.stat(path).st_size

    def read(self, path: str, offset: int = 0, length: int | None = None) -> bytes:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read() if length is None else f.read(length)

    def create(self, path: str) -> RealFile:
        return RealFile(path, os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644))

    def open(self, path: str) -> RealFile:
        return RealFile(path, os.open(path, os.O_RDWR))

    def rename(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def remove(self, path: str) -> None:
        os.remove(path)

    def fsync_dir(self, path: str) -> None:
        _fsync_dir(path)

    def lock(self, directory: str) -> DirLock:
        return DirLock(directory, exclusive=True)


class _PlannedFile:
    """A file handle of DryRunFS: writes are recorded, never performed."""

    def __init__(self, fs: "DryRunFS", path: str, size: int):
        self.path, self._fs, self._size = path, fs, size

    def pwrite(self, data, offset: int) -> None:
        self._fs.actions.append(f"write {len(memoryview(data).cast('B'))} bytes to {self.path} at {offset}")
        self._size = max(self._size, offset + len(memoryview(data).cast("B")))

    def reserve(self, offset: int, length: int) -> None:
        pass

    def fsync(self) -> None:
        pass

    def truncate(self, length: int) -> None:
        self._fs.actions.append(f"truncate {self.path} to {length} bytes")
        self._size = length

    def size(self) -> int:
        return self._size

    def close(self) -> None:
        pass


class DryRunFS(RealFS):
    """Reads the real file system and records, instead of doing, every change: `vdbctl check` runs recovery's
    own decisions through it to say what the next open would do, without touching what it checks."""

    dry_run = True

    def __init__(self):
        self.actions: list[str] = []

    def makedirs(self, path: str) -> None:
        if not os.path.isdir(path):
            raise FileNotFoundError(path)

    def create(self, path: str) -> _PlannedFile:
        self.actions.append(f"create {path}")
        return _PlannedFile(self, path, 0)

    def open(self, path: str) -> _PlannedFile:
        return _PlannedFile(self, path, os.stat(path).st_size)

    def rename(self, src: str, dst: str) -> None:
        self.actions.append(f"rename {src} to {dst}")

    def remove(self, path: str) -> None:
        self.actions.append(f"remove {path}")

    def fsync_dir(self, path: str) -> None:
        pass
