"""The `explain` report of a search: what the engine did to answer it (postings probed, bytes read, cache)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Explain:
    path: str = "ann"                 # ann | exact-filter | exact-fallback | memtable-only | cache
    postings_probed: int = 0
    records_scanned: int = 0
    bytes_read: int = 0
    memtable_rows: int = 0
    filter_matches: int | None = None
    cache: str = "off"                # off | miss | hit | near-hit
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "extra"} | self.extra
