"""Read epochs: when may a row that a commit declared dead have its bytes freed?

A search reads a row's state and, later in the same call, the row's vector. A row deleted in between is still
read, so the reclaim of its blocks (storage/vectors.py `reclaim`, which makes the row read as zeros) must wait
until every reader that could have seen the row alive has finished. Readers enter the current epoch; a commit
ends the epoch after it took its state snapshot. Rows dead in that snapshot may be freed once no reader of an
earlier epoch is still running (epoch-based reclamation, as in RCU or Masstree: the cost for a reader is two
short lock holds, never a wait).
"""
from __future__ import annotations

import threading
from collections import Counter
from contextlib import contextmanager


class ReadEpochs:
    def __init__(self):
        self._lock = threading.Lock()
        self._epoch = 0
        self._active: Counter[int] = Counter()

    @contextmanager
    def reading(self):
        """Hold the current epoch open for the duration of a read (nesting is allowed)."""
        with self._lock:
            epoch = self._epoch
            self._active[epoch] += 1
        try:
            yield
        finally:
            with self._lock:
                self._active[epoch] -= 1
                if not self._active[epoch]:
                    del self._active[epoch]

    def advance(self) -> int:
        """Start a new epoch; return it. Readers that entered before this call are of earlier epochs."""
        with self._lock:
            self._epoch += 1
            return self._epoch

    def quiet_since(self, epoch: int) -> bool:
        """True when no reader of an epoch before `epoch` is still running."""
        with self._lock:
            return min(self._active, default=self._epoch) >= epoch
