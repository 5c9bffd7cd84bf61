"""The engine: one data directory of collections, each a WAL + a mutable SPANN index + LMDB metadata.

    database.py     Database (`vdb.connect`): the collections of a data directory, the public API
    catalog.py      which collections exist and where their files are
    collection.py   one collection: write path (validate -> WAL -> apply), read path, checkpoints
    walcodec.py     the bytes of the collection's WAL records
    memtable.py     acknowledged vectors not yet in postings, searched exactly
    maintenance.py  the background worker: indexing, splits, sweeps, compaction, checkpoints
    check.py        `vdbctl check`: every checksum and invariant of a collection
    validate.py     ids and payloads checked before they reach the WAL
    explain.py      what a search did (the `explain` report)
Depends on index/ and storage/, never on vdb.service or vdb.eval.
"""
from vdb.engine.database import Database, connect

__all__ = ["Database", "connect"]
