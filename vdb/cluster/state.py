"""What a replica keeps about its place in the cluster, beside its Database: DATA/cluster.json

    {"term": the highest term it has seen,
     "collections": {name: {"uuid": ..., "history": [[term, first LSN], ...]}}}

uuid names one incarnation of a collection (dropped and created again under the same name, it is another).
history lists, for each term in which the collection had a primary, the first LSN that primary wrote. One
primary per term writes a collection's records in LSN order, so two logs that agree on the term of a
position agree on every record up to it (Raft's log matching); `log_matches` decides with that whether a
returning follower's log is a prefix of its primary's (catch up with the records after it) or diverged
(records its old primary wrote and never got acknowledged: re-seed it from a snapshot).
"""
from __future__ import annotations

import json
from pathlib import Path

from storage.fileio import atomic_write_bytes

STATE_FILE = "cluster.json"


def term_at(history: list, lsn: int) -> int | None:
    """The term whose primary wrote LSN `lsn` (None for 0: before any record)."""
    terms = [t for t, first in history if first <= lsn]
    return max(terms) if terms and lsn > 0 else None


def log_matches(f_history: list, f_last: int, p_history: list, p_last: int) -> bool:
    """Is a follower's log (history, last LSN) a prefix of the primary's?"""
    if f_last == 0:
        return True
    if f_last > p_last:
        return False
    t = term_at(f_history, f_last)
    primary = {term: first for term, first in p_history}
    if t is None or primary.get(t) != dict((term, first) for term, first in f_history).get(t):
        return False
    later = [first for term, first in p_history if term > t]
    return not later or f_last < min(later)


class ReplicaState:
    """cluster.json of one replica's data directory; every change is saved atomically before it is used."""

    def __init__(self, directory):
        self.path = Path(directory) / STATE_FILE
        raw = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.term: int = int(raw.get("term", 0))
        self.collections: dict[str, dict] = raw.get("collections", {})

    def save(self) -> None:
        """Write the file atomically (temp, fsync, rename)."""
        body = {"term": self.term, "collections": self.collections}
        atomic_write_bytes(self.path, json.dumps(body, indent=1, sort_keys=True).encode())

    def set_term(self, term: int) -> None:
        """Remember the highest term seen (never goes back)."""
        if term > self.term:
            self.term = term
            self.save()

    def set_collection(self, name: str, uuid: str, history: list) -> None:
        """Record (or replace) a collection's incarnation and term history."""
        self.collections[name] = {"uuid": uuid, "history": [list(h) for h in history]}
        self.save()

    def forget(self, name: str) -> None:
        """A collection dropped (or about to be re-seeded)."""
        if self.collections.pop(name, None) is not None:
            self.save()

    def uuid(self, name: str) -> str | None:
        e = self.collections.get(name)
        return e["uuid"] if e else None

    def history(self, name: str) -> list:
        return [list(h) for h in self.collections[name]["history"]]
