"""The one interface of vdb: `VectorDB`, and the values it takes and returns.

Three classes implement it: the embedded engine (`vdb.connect` -> vdb.engine.Database), the gRPC client
(`vdb.Client`, vdb.service.client) and the sharding router (vdb.service.router.Router, which the gRPC server
serves exactly as it serves a Database). tests/service/test_congruence.py checks that their signatures are the
ones below and that they answer alike. Like qdrant-client's `QdrantBase`: code written against `VectorDB` runs
unchanged embedded, over the wire, or against a cluster.

Errors are the typed exceptions of vdb.errors (each carries its gRPC status as `.code`) from every implementation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class Record:
    """One stored vector: its id, its vector (stored form: unit length for cosine), and its payload."""
    id: int
    vector: np.ndarray | None
    payload: dict | None


class SearchResult(tuple):
    """`ids, distances = db.search(...)`; `.explain` holds what the search did when asked for; `.partial` says
    that a router answered without some shards (allow_partial=True), named in `.missing_shards`."""

    def __new__(cls, ids, distances, explain=None, missing_shards=()):
        obj = super().__new__(cls, (ids, distances))
        obj.ids, obj.distances, obj.explain = ids, distances, explain
        obj.missing_shards = tuple(missing_shards)
        return obj

    @property
    def partial(self) -> bool:
        """True when a router answered without some of its shards."""
        return bool(self.missing_shards)


@runtime_checkable
class VectorDB(Protocol):
    """Collections of vectors with payloads; nearest-neighbour search over them."""

    # -- collections --------------------------------------------------------------------------------------
    def create_collection(self, name: str, dim: int, metric: str = "l2", *, exist_ok: bool = False,
                          **options) -> dict:
        """Create an empty collection (metric l2 | ip | cosine). Options: collection settings (durability,
        cache_mb, ...; vdb/config.py) and index build parameters (head_ratio, split_limit, ...; index/types.py).
        With exist_ok, an existing collection of the same dim and metric is returned instead of an error.
        Returns the collection's description (as describe_collection)."""
        ...

    def list_collections(self) -> list[str]:
        """Names of every collection, sorted."""
        ...

    def describe_collection(self, name: str) -> dict:
        """name, dim, metric, count, durability, build_params, heads."""
        ...

    def drop_collection(self, name: str) -> None:
        """Delete a collection and its files (NotFoundError if there is none)."""
        ...

    # -- data ---------------------------------------------------------------------------------------------
    def upsert(self, name: str, ids, vectors, payloads=None, *, timeout: float | None = None) -> int:
        """Insert or replace vectors (and their payloads: a list of JSON objects or None, one per id).
        Returns the LSN once the write is durable under the collection's policy; a search that starts after
        the return sees it. `timeout` bounds the wait of a writer throttled by an indexing backlog."""
        ...

    def delete(self, name: str, ids, *, timeout: float | None = None) -> int:
        """Delete ids (unknown ids are ignored); returns the LSN once durable."""
        ...

    def get(self, name: str, ids) -> list[Record]:
        """The records found among `ids`, in the order asked; missing ids are left out."""
        ...

    def search(self, name: str, queries, top_k: int = 10, *, filter=None, nprobe=None, rerank_k=None, eps=None,
               use_cache: bool = True, explain: bool = False, allow_partial: bool = False) -> SearchResult:
        """Nearest neighbours of one query [dim] (ids and distances [top_k]) or of many [nq, dim] ([nq, top_k]),
        padded with -1 / inf. Distances are smaller-is-nearer (squared L2, -IP, 1 - cos). `filter` is a payload
        filter (vdb/query/filters.py); nprobe / rerank_k / eps override the search knobs; explain=True fills
        `.explain`; allow_partial lets a router answer without its unreachable shards (`.partial`)."""
        ...

    def hybrid_search(self, name: str, text=None, vector=None, top_k: int = 10, *, fusion: str = "rrf",
                      alpha: float = 0.5, rrf_k: int = 60, candidates: int | None = None, filter=None, nprobe=None,
                      rerank_k=None, eps=None, use_cache: bool = True, explain: bool = False,
                      allow_partial: bool = False) -> SearchResult:
        """Full-text (BM25 over the collection's `text_field`), vector, or hybrid search. `text`: one query string
        or a list; `vector`: one query [dim] or [nq, dim] (as many as texts when both are given). Text alone
        ranks by BM25 (distances = -score) over the documents holding any of its terms: a query is plain words,
        analysed as the indexed texts are (no query syntax: quotes, `field:`, operators and wildcards are words
        or punctuation, and only `text_field` is searched; a lone surrogate is InvalidArgumentError). A vector
        alone is `search`, both are fused: fusion="rrf"
        (reciprocal rank fusion, sum of 1 / (rrf_k + rank)) or "weighted" (alpha * dense + (1 - alpha) * text,
        each list's scores min-max normalised per query), over the top `candidates` of each list (default
        max(top_k, 50)); distances = -fused score. `filter` applies to both lists; the vector knobs, cache
        and allow_partial as in `search`. A collection without a text index answers text queries with
        FailedPreconditionError. Shapes as `search`: [top_k] for one query, [nq, top_k] for a batch."""
        ...

    def count(self, name: str) -> int:
        """Live vectors in the collection."""
        ...

    def stats(self, name: str) -> dict:
        """Counters of the collection: rows, backlog, WAL, maintenance, index, cache. Never contains secrets."""
        ...

    def flush(self, name: str) -> int:
        """Index every pending vector and checkpoint; returns the LSN the checkpoint covers."""
        ...

    def close(self) -> None:
        """Release everything (files, channels). Idempotent."""
        ...
