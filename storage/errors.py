"""Typed storage errors. Each says which file is affected, what is wrong, and how to fix it."""
from __future__ import annotations

import errno


class StorageError(Exception):
    """Base class for every error raised by the storage layer."""

    hint: str = ""

    def __init__(self, message: str, *, hint: str | None = None):
        self.hint = hint if hint is not None else self.hint
        super().__init__(f"{message} (hint: {self.hint})" if self.hint else message)


class CorruptionError(StorageError):
    """Bytes on disk do not match their checksum or their declared layout."""

    hint = "restore the directory from a backup or rebuild it; `vdbctl check DIR` lists every damaged part"

    def __init__(self, path, detail: str, *, offset: int | None = None, length: int | None = None,
                 hint: str | None = None):
        self.path, self.detail, self.offset, self.length = str(path), detail, offset, length
        where = ""
        if offset is not None:
            where = f" at byte offset {offset}" + (f" ({length} bytes affected)" if length is not None else "")
        super().__init__(f"{self.path}: {detail}{where}", hint=hint)


class TruncatedError(CorruptionError):
    """A file is shorter than its header or the manifest says it must be."""


class FormatError(StorageError):
    """A file is not of the expected kind or was written by an unsupported format version."""

    hint = "check that the path points at a vdb directory written by a compatible vdb version"


class LockedError(StorageError):
    """Another process holds the directory lock."""

    hint = "stop the other process (server or build) that has this directory open, then retry"


class InUseError(StorageError):
    """A directory that must not be replaced: it holds data an engine still needs (e.g. a collection's WAL)."""

    hint = "drop the collection from its data directory first, or choose another output directory"


class DiskFullError(StorageError):
    """No space left on the device (ENOSPC / EDQUOT) for bytes that had to be reserved or written."""

    hint = "free space on the device (or raise the quota); writes resume by themselves once there is room"


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, DiskFullError) or (isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS)


class MetaStoreError(StorageError):
    """The LMDB metadata store failed (full map, unreadable environment, ...)."""
