"""The consumers file: which LSN each consumer of the log has applied, so the log is purged only below what
every consumer no longer needs (chroma's purge_log). Published atomically (temp, fsync, rename, fsync dir)."""
from __future__ import annotations

import json
import operator
import os

from storage.errors import FormatError
from storage.wal.format import CONSUMERS_FILE, CONSUMERS_VERSION
from storage.wal.fs import FileSystem
from storage.wal.reader import WalCorruptionError


def load_consumers(fs: FileSystem, path: str) -> dict[str, int]:
    if not fs.exists(path):
        return {}
    try:
        doc = json.loads(fs.read(path))
        if doc.get("version") != CONSUMERS_VERSION:
            raise FormatError(f"{path}: consumers file version {doc.get('version')} is not supported")
        consumers = doc["consumers"]
        if not all(isinstance(k, str) and type(v) is int and v >= 0 for k, v in consumers.items()):
            raise ValueError("consumer names must be strings and applied LSNs non-negative integers")
        return dict(consumers)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise WalCorruptionError(path, f"unreadable consumers file ({e})") from None


def save_consumers(fs: FileSystem, directory: str, consumers: dict[str, int]) -> None:
    """Atomic publish: temp -> fsync -> rename -> fsync(dir). A crash leaves the old or the new file."""
    path = os.path.join(directory, CONSUMERS_FILE)
    tmp = path + ".tmp"
    if fs.exists(tmp):
        fs.remove(tmp)  # left by a crash during an earlier save
    f = fs.create(tmp)
    try:
        f.pwrite(json.dumps({"version": CONSUMERS_VERSION, "consumers": consumers}, sort_keys=True).encode(), 0)
        f.fsync()
    finally:
        f.close()
    fs.rename(tmp, path)
    fs.fsync_dir(directory)


def as_int(value) -> int | None:
    """`value` as an int if it is an integer (numpy ones included) but not a bool, else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None
