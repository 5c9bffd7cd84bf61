"""Rolling a fully checkpointed active segment, so that the log shrinks to nothing once its consumers caught up.

Purge deletes only sealed segments: without this, the active segment of a collection whose writes stopped kept
every record it received (up to wal_segment_mb) forever, although a checkpoint covers them. A mixin of
WriteAheadLog (writer.py), over its lock and segment state.
"""
from __future__ import annotations

import logging

from storage.crashpoints import crashpoint
from storage.errors import DiskFullError
from storage.wal.format import SEGMENT_HEADER_SIZE

log = logging.getLogger(__name__)


class RollingLog:
    def roll_if_covered(self, covered_lsn: int) -> bool:
        """Seal the active segment and start an empty one if every record in it has LSN <= covered_lsn (a
        checkpoint holds them all) and its I/O is idle; the next purge() can then delete it. Returns whether
        it rolled. Never waits: with a write in flight it does nothing, and the next checkpoint tries again."""
        with self._lock:
            self._check_usable()
            if self._planned <= SEGMENT_HEADER_SIZE or self._last_lsn > covered_lsn:
                return False
            if self._writing or self._syncing or self._rotators:
                return False
            try:
                self._rotate()
            except DiskFullError:
                log.warning("%s: no space for a new WAL segment; the covered active segment stays", self.directory)
                return False
        crashpoint("wal-roll")
        return True
