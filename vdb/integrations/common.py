"""What the LangChain and LlamaIndex adapters share (no framework imports here, so each adapter needs only its own
framework): opening a database, string ids as vdb's int64 ids with collisions refused, metadata filters in vdb's
language, and reading the records behind a search result.

Storage convention of both adapters: one record per document / node, whose payload holds the text under "text"
(the collection's full-text field), the user's metadata under "metadata" (so filters address `metadata.<key>`) and
the framework's string id under a key of the adapter's (`lc_id`, `node_id`).
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

import vdb

ADD_BATCH = 1000        # records per upsert: well under the engine's max_batch and the WAL record limit
SCAN_PAGE = 1000        # records per round when a filter, not a query, selects what to read or delete


def open_db(path: str | None, address: str | None, api_key: str | None, db: Any) -> tuple[Any, bool]:
    """(the VectorDB to use, whether the adapter opened it and so must close it) from exactly one of an embedded
    path, a server address, or a VectorDB the caller owns."""
    if sum(x is not None for x in (path, address, db)) != 1:
        raise vdb.InvalidArgumentError("give exactly one of path= (embedded), address= (a server), db=")
    if db is not None:
        return db, False
    return (vdb.connect(path) if path is not None else vdb.Client(address, api_key=api_key)), True


def record_id(key: str) -> int:
    """vdb's integer id of a framework's string id: the first 63 bits of blake2b (stable across processes)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") & ((1 << 63) - 1)


def check_collisions(db, collection: str, rids: np.ndarray, keys: list[str], field: str) -> None:
    """Refuse (AlreadyExistsError) a write that would put a string id on a vdb id that another string id holds
    (payload[field]), or two string ids of one batch on one vdb id: a hash collision must never replace data."""
    if len(set(rids.tolist())) != len(rids):
        raise vdb.AlreadyExistsError("two ids of one batch hash to the same vdb id; rename one")
    want = dict(zip(rids.tolist(), keys))
    for r in db.get(collection, rids):
        have = (r.payload or {}).get(field)
        if have != want[r.id]:
            raise vdb.AlreadyExistsError(f"id {want[r.id]!r} hashes to vdb id {r.id}, which holds {have!r}")


def owned_records(db, collection: str, keys: list[str], field: str) -> list:
    """The records of these string ids, in the order asked; missing ones are left out. A record answers only for
    the id in its payload[field]: two ids that collide on one vdb id never both get it."""
    records = db.get(collection, np.unique(np.array([record_id(k) for k in keys], np.int64)))
    by_key = {(r.payload or {}).get(field): r for r in records}
    return [by_key[k] for k in keys if k in by_key]


def to_vdb_filter(spec: dict | None) -> dict | None:
    """A metadata filter in vdb's language, every field name looked up under `metadata.`."""
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise vdb.InvalidArgumentError(f"filter must be a dict in vdb's filter language, got {spec!r}")
    out = {}
    for key, value in spec.items():
        if not isinstance(key, str):  # JSON has string keys only; an int or None key would stop the mapping untyped
            raise vdb.InvalidArgumentError(f"filter keys must be strings, got {key!r}")
        if key in ("$and", "$or"):
            out[key] = [to_vdb_filter(v) for v in value] if isinstance(value, list) else value
        elif key == "$not":
            out[key] = to_vdb_filter(value)
        elif key.startswith("$"):
            out[key] = value  # vdb names the unknown operator in its error
        else:
            out[f"metadata.{key}"] = value
    return out


def found_records(db, collection: str, result) -> list[tuple[Any, float]]:
    """(record, distance) of each hit of a one-query search result, nearest first; padding and records deleted
    since the search are left out."""
    hits = [(int(i), float(d)) for i, d in zip(result.ids, result.distances) if i >= 0]
    found = {r.id: r for r in db.get(collection, [i for i, _ in hits])} if hits else {}
    return [(found[i], d) for i, d in hits if i in found]


def matching_ids(db, collection: str, vdb_filter: dict, *, limit: int | None = None) -> list[int]:
    """Up to `limit` ids of live records passing a filter. vdb has no scan: this is a filtered search around an
    arbitrary probe, which is exhaustive because a filtered search returns min(top_k, matches) hits (it finishes
    exactly when the index comes up short: vdb/engine/reads.py)."""
    dim = db.describe_collection(collection)["dim"]
    res = db.search(collection, np.ones(dim, np.float32), top_k=limit or SCAN_PAGE, filter=vdb_filter,
                    use_cache=False)
    return [int(i) for i in res.ids if i >= 0]


def delete_matching(db, collection: str, vdb_filter: dict) -> int:
    """Delete every record passing a filter, a page at a time; returns how many."""
    gone: set[int] = set()
    while ids := matching_ids(db, collection, vdb_filter):
        if gone.intersection(ids):  # a delete must be visible to the next search; never loop on one that is not
            raise vdb.InternalError(f"deleted ids still match {vdb_filter!r} in {collection!r}")
        db.delete(collection, np.array(ids, np.int64))
        gone.update(ids)
    return len(gone)
