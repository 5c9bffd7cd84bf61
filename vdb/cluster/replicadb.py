"""The VectorDB a replica serves over gRPC (the same server code as `vdbctl serve`: create_server(any VectorDB)).

Reads answer from the local Database while the replica may serve (replica.check_readable: a primary with its
lease, or an in-sync follower); otherwise UNAVAILABLE, which the router takes as "ask another replica".
Writes are taken only by the shard's primary: applied locally (the WAL assigns the LSN), then acknowledged
once every in-sync follower holds them (shipping.Leader.wait_replicated). A write to a follower is
UNAVAILABLE ("not the primary"), which the router takes as "the shard map changed".
"""
from __future__ import annotations

from vdb.api import Record, SearchResult


class ReplicaDB:
    """The VectorDB interface (vdb/api.py) of one replica."""

    def __init__(self, replica):
        self._replica = replica
        self._db = replica.db

    # -- collections ------------------------------------------------------------------------------------
    def create_collection(self, name: str, dim: int, metric: str = "l2", *, exist_ok: bool = False,
                          **options) -> dict:
        """(Primary) create the collection on every in-sync replica of the shard."""
        return self._replica.create_collection(name, dim, metric, exist_ok, options, None)

    def list_collections(self) -> list[str]:
        """Names of the collections here."""
        self._replica.check_readable()
        return self._db.list_collections()

    def describe_collection(self, name: str) -> dict:
        """As Database.describe_collection, here."""
        self._replica.check_readable()
        return self._db.describe_collection(name)

    def drop_collection(self, name: str) -> None:
        """(Primary) drop the collection on every in-sync replica of the shard."""
        self._replica.drop_collection(name, None)

    # -- data -------------------------------------------------------------------------------------------
    def upsert(self, name: str, ids, vectors, payloads=None, *, timeout: float | None = None) -> int:
        """(Primary) the shard's LSN of the write, once durable here and on every in-sync follower."""
        with self._replica.writing() as leader:
            lsn = self._db.upsert(name, ids, vectors, payloads, timeout=timeout)
            leader.wait_replicated(name, self._replica.state.uuid(name), lsn, timeout)
            return lsn

    def delete(self, name: str, ids, *, timeout: float | None = None) -> int:
        """(Primary) the shard's LSN of the delete, once durable here and on every in-sync follower."""
        with self._replica.writing() as leader:
            lsn = self._db.delete(name, ids, timeout=timeout)
            leader.wait_replicated(name, self._replica.state.uuid(name), lsn, timeout)
            return lsn

    def get(self, name: str, ids) -> list[Record]:
        """As Database.get, here."""
        self._replica.check_readable()
        return self._db.get(name, ids)

    def search(self, name: str, queries, top_k: int = 10, *, filter=None, nprobe=None, rerank_k=None, eps=None,
               use_cache: bool = True, explain: bool = False, allow_partial: bool = False) -> SearchResult:
        """As Database.search, here."""
        self._replica.check_readable()
        return self._db.search(name, queries, top_k, filter=filter, nprobe=nprobe, rerank_k=rerank_k, eps=eps,
                               use_cache=use_cache, explain=explain, allow_partial=allow_partial)

    def hybrid_search(self, name: str, text=None, vector=None, top_k: int = 10, *, fusion: str = "rrf",
                      alpha: float = 0.5, rrf_k: int = 60, candidates: int | None = None, filter=None, nprobe=None,
                      rerank_k=None, eps=None, use_cache: bool = True, explain: bool = False,
                      allow_partial: bool = False) -> SearchResult:
        """As Database.hybrid_search, here."""
        self._replica.check_readable()
        return self._db.hybrid_search(name, text, vector, top_k, fusion=fusion, alpha=alpha, rrf_k=rrf_k,
                                      candidates=candidates, filter=filter, nprobe=nprobe, rerank_k=rerank_k,
                                      eps=eps, use_cache=use_cache, explain=explain, allow_partial=allow_partial)

    def count(self, name: str) -> int:
        """As Database.count, here."""
        self._replica.check_readable()
        return self._db.count(name)

    def stats(self, name: str) -> dict:
        """The collection's stats here, with this replica's role in the shard."""
        out = self._db.stats(name)
        r = self._replica
        out["replica"] = {"key": r.key, "role": r.role, "term": r.term, "readable": r.readable()}
        return out

    def flush(self, name: str) -> int:
        """(Primary) index and checkpoint the collection here (followers checkpoint on their own schedule)."""
        with self._replica.writing():
            return self._db.flush(name)

    def close(self) -> None:
        """Nothing: the replica owns the Database and closes it."""
