"""Advisory lock on a data directory: one writer (exclusive) or many readers (shared), never both."""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from storage.errors import CorruptionError, LockedError

LOCK_NAME = "LOCK"


class DirLock:
    """flock(2) on DIR/LOCK. Released by `close()` or automatically when the process dies."""

    def __init__(self, directory: str | os.PathLike, *, exclusive: bool = True):
        self.path = Path(directory) / LOCK_NAME
        self.exclusive = exclusive
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError:
            if exclusive:
                raise
            self._fd = os.open(self.path, os.O_RDONLY)  # read-only media: shared locks still work
        except IsADirectoryError:
            raise CorruptionError(self.path, "is a directory, not the directory's lock file") from None
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(self._fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._read_holder()
            os.close(self._fd)
            self._fd = -1
            kind = "exclusively" if exclusive else "for reading"
            raise LockedError(f"cannot lock {directory} {kind}: it is in use by another process{holder}") from None
        if exclusive:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def _read_holder(self) -> str:
        try:
            pid = os.pread(self._fd, 32, 0).decode().strip()
        except OSError:
            return ""
        return f" (pid {pid})" if pid else ""

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = -1

    def __enter__(self) -> "DirLock":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
