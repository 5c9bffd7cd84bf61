"""A budgeted cache of posting bytes in RAM: what the memory budget leaves after the index's resident
structures goes to the postings read most, instead of to whatever the kernel's page cache happened to keep.

Entries are the verified bytes of one posting (key: posting id and its directory offset, so a posting moved by
copy on write is a different entry). Least recently used out first, by bytes. Thread-safe; `get` and `put`
take one short lock each.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np


class PostingCache:
    def __init__(self, budget_bytes: int):
        self.budget = max(0, int(budget_bytes))
        self.bytes = 0
        self.hits = self.misses = self.evictions = 0
        self._entries: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, keys: list[tuple[int, int]]) -> list[np.ndarray | None]:
        """The cached bytes of each key (None where absent); hits become the most recently used."""
        out: list[np.ndarray | None] = []
        with self._lock:
            for key in keys:
                data = self._entries.get(key)
                if data is not None:
                    self._entries.move_to_end(key)
                out.append(data)
            hit = sum(d is not None for d in out)
            self.hits += hit
            self.misses += len(out) - hit
        return out

    def put(self, key: tuple[int, int], data: np.ndarray) -> None:
        """Keep a copy of `data` (evicting the least recently used) unless it alone exceeds the budget."""
        n = int(data.nbytes)
        if n > self.budget or n == 0:
            return
        copy = np.array(data, dtype=np.uint8, copy=True)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= old.nbytes
            while self.bytes + n > self.budget and self._entries:
                _, gone = self._entries.popitem(last=False)
                self.bytes -= gone.nbytes
                self.evictions += 1
            self._entries[key] = copy
            self.bytes += n

    def __len__(self) -> int:
        return len(self._entries)

    def as_dict(self) -> dict:
        with self._lock:
            return {"budget_bytes": self.budget, "bytes": self.bytes, "entries": len(self._entries),
                    "hits": self.hits, "misses": self.misses, "evictions": self.evictions}
