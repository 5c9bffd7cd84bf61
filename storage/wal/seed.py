"""A log that starts after a given LSN: what a collection restored from a snapshot opens.

A snapshot holds a checkpoint covering LSNs <= n (vdb/engine/snapshot.py). Its collection must hand out n + 1
next, so that a replica seeded from it keeps its primary's LSNs: its log is one empty segment whose header
says the first LSN is n + 1 (recovery then reports the log as ending at n).
"""
from __future__ import annotations

import os

from storage.wal.format import segment_name
from storage.wal.fs import FileSystem, RealFS
from storage.wal.reader import encode_segment_header


def start_log(directory: str | os.PathLike, first_lsn: int, *, fs: FileSystem | None = None) -> None:
    """Create the log of a new directory so that its next record gets LSN `first_lsn` (durable on return)."""
    if isinstance(first_lsn, bool) or not isinstance(first_lsn, int) or first_lsn < 1:
        raise ValueError(f"first_lsn must be an int >= 1, got {first_lsn!r}")
    fs = fs if fs is not None else RealFS()
    directory = os.fspath(directory)
    fs.makedirs(directory)
    if any(name.startswith("wal-") for name in fs.listdir(directory)):
        raise FileExistsError(f"{directory} already holds a write-ahead log")
    f = fs.create(os.path.join(directory, segment_name(first_lsn)))
    try:
        f.pwrite(encode_segment_header(first_lsn), 0)
        f.fsync()
    finally:
        f.close()
    fs.fsync_dir(directory)
