"""The newest WAL records of one collection, in RAM, in LSN order: what a primary ships to followers that are
close behind, without reading its WAL files for every write.

Fed by the collection's `on_logged` listener (vdb/engine/collection.py), which runs in apply order, so the
records arrive consecutive. Bounded in bytes; a follower further behind than the backlog reaches is served
from the WAL (and from a snapshot if the WAL was purged; vdb/cluster/shipping.py).
"""
from __future__ import annotations

import threading
from collections import deque


class Backlog:
    def __init__(self, max_bytes: int, on_new=None):
        self.max_bytes, self.on_new = int(max_bytes), on_new
        self._lock = threading.Lock()
        self._records: deque = deque()    # (lsn, rtype, data)
        self._bytes = 0

    def add(self, lsn: int, rtype: int, data: bytes) -> None:
        """One record just applied (the collection's listener); wakes whoever waits for new records."""
        with self._lock:
            if self._records and lsn != self._records[-1][0] + 1:
                self._records.clear()  # not consecutive: never serve across a gap
                self._bytes = 0
            self._records.append((lsn, rtype, data))
            self._bytes += len(data)
            while self._bytes > self.max_bytes and len(self._records) > 1:
                self._bytes -= len(self._records.popleft()[2])
        if self.on_new is not None:
            self.on_new()

    def after(self, lsn: int, max_bytes: int) -> list | None:
        """Records with LSN > lsn, oldest first, about max_bytes of them (at least one); None if the backlog
        does not hold LSN lsn + 1 (no longer, or not: records it missed, e.g. replayed by a reopen)."""
        with self._lock:
            if not self._records or not self._records[0][0] <= lsn + 1 <= self._records[-1][0]:
                return None
            start = lsn + 1 - self._records[0][0]
            out, size = [], 0
            for i in range(start, len(self._records)):
                rec = self._records[i]
                if out and size + len(rec[2]) > max_bytes:
                    break
                out.append(rec)
                size += len(rec[2])
            return out

    def stats(self) -> dict:
        with self._lock:
            first = self._records[0][0] if self._records else None
            return {"records": len(self._records), "bytes": self._bytes, "first_lsn": first}
