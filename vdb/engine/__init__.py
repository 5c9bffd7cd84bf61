"""The engine: one data directory of collections, each a WAL + a mutable SPANN index + LMDB metadata.

    database.py     Database (`vdb.connect`): the collections of a data directory, the public API
    catalog.py      which collections exist and where their files are
    collection.py   one collection: write path (validate -> WAL -> apply), checkpoints, recovery
    reads.py        its read path: search, get, count, the cache's port (a mixin of Collection)
    relocation.py   moving live rows out of sparse blocks of its vector file (a mixin of Collection)
    report.py       its stats (a mixin of Collection)
    idmap.py        external id -> row and -> payload: LMDB with the changes since the last checkpoint in front
    walcodec.py     the bytes of the collection's WAL records
    memtable.py     acknowledged vectors not yet in postings, searched exactly
    maintenance.py  the background worker: indexing, splits, sweeps, compaction, relocation, checkpoints
    check.py        `vdbctl check`: every checksum and invariant of a collection
    repair.py       `vdbctl repair`: what check reports and can be rebuilt, rebuilt loudly
    snapshot.py     online snapshots and restores (`vdbctl snapshot` / `restore`), also seeding cluster replicas
    textsearch.py   the engine's side of full-text and hybrid search
    validate.py     ids and payloads checked before they reach the WAL
    explain.py      what a search did (the `explain` report)
Depends on index/ and storage/, never on vdb.service or vdb.eval.
"""
from vdb.engine.database import Database, connect

__all__ = ["Database", "connect"]
