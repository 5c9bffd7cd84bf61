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
# A covered active segment smaller than this stays: rolling costs a new file and two fsyncs, and a few covered
# records left in an idle log cost nothing (an idle log holds at most this much; a busy one about one segment).
ROLL_MIN_BYTES = 256 << 10


class RollingLog:
    def roll_if_covered(self, covered_lsn: int, min_bytes: int = ROLL_MIN_BYTES) -> bool:
        """Seal the active segment and start an empty one if every record in it has LSN <= covered_lsn (a
        checkpoint holds them all), it holds at least min_bytes of records and its I/O is idle; the next purge()
        can then delete it. Returns whether it rolled. Never waits: with a write in flight it does nothing, and
        the next checkpoint tries again."""
        with self._lock:
            self._check_usable()
            if self._planned - SEGMENT_HEADER_SIZE < max(min_bytes, 1) or self._last_lsn > covered_lsn:
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
