"""`VdbLlamaVectorStore`: vdb as a LlamaIndex vector store (`pip install 'vdb[llamaindex]'`).

    from llama_index.core import StorageContext, VectorStoreIndex
    from vdb.integrations.llamaindex import VdbLlamaVectorStore
    store = VdbLlamaVectorStore(path="rag-data/")                  # embedded; or address="host:port", or db=
    index = VectorStoreIndex.from_vector_store(store, embed_model=embed_model)
    nodes = index.as_retriever(similarity_top_k=4, vector_store_query_mode="hybrid").retrieve("question")

Storage (shared with the LangChain store: common.py): one vdb collection (cosine by default) with a full-text index
over `text`; each node is one record whose payload holds "text" (the node's content), "metadata" (its metadata, which
filters address), "node_id", "ref_doc_id" (its source document, or null) and the rest of the node as LlamaIndex's
node_to_metadata_dict serialises it ("_node_content", "_node_type"), so nodes round-trip with their relationships.
Under cosine vdb keeps vectors at unit length, so the payload also keeps each embedding's norm and a node comes back
with its embedding (to float32 precision). Node ids are strings, vdb's are integers: a record's id is the first 63
bits of blake2b(node_id), and an add that would put another node on an id already taken is refused.

Query modes: DEFAULT (the embedding's nearest neighbours), MMR (nearest `mmr_prefetch_k` then maximal marginal
relevance), TEXT_SEARCH and SPARSE (BM25 over the text: vdb's hybrid_search with text only) and HYBRID (text and
embedding fused by vdb: `alpha` given -> fusion="weighted", alpha * dense + (1 - alpha) * BM25; else reciprocal rank
fusion). Similarities are higher-is-nearer: cosine similarity under cosine, -distance under ip / l2, the BM25 or
fused score in the text modes. Filters: MetadataFilters (nested, AND / OR / NOT) in vdb's filter language, see
`to_filter`. Async methods are the base class's (the sync call): vdb's API is blocking.
"""
from __future__ import annotations

import json
from typing import Any, List, Optional, Sequence

import numpy as np
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.indices.query.embedding_utils import get_top_k_mmr_embeddings
from llama_index.core.schema import BaseNode, MetadataMode
from llama_index.core.vector_stores.types import (BasePydanticVectorStore, FilterCondition, FilterOperator,
                                                  MetadataFilter, MetadataFilters, VectorStoreQuery,
                                                  VectorStoreQueryMode, VectorStoreQueryResult)
from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict

import vdb
from vdb.integrations import common
from vdb.integrations.common import (ADD_BATCH, check_collisions, delete_matching, found_records, matching_ids,
                                     open_db, owned_records, to_vdb_filter)

ID_FIELD = "node_id"
Mode = VectorStoreQueryMode
TEXT_MODES = (Mode.TEXT_SEARCH, Mode.SPARSE)
MODES = (Mode.DEFAULT, Mode.MMR, Mode.HYBRID) + TEXT_MODES
_RANGE = {FilterOperator.GT: "$gt", FilterOperator.GTE: "$gte", FilterOperator.LT: "$lt", FilterOperator.LTE: "$lte",
          FilterOperator.NE: "$ne", FilterOperator.IN: "$in", FilterOperator.NIN: "$nin"}
MMR_PREFETCH_FACTOR = 4.0   # MMR picks from this many times similarity_top_k nearest (as the qdrant store)


def _condition(f: MetadataFilter) -> dict:
    key, op, value = f.key, f.operator, f.value
    if op == FilterOperator.EQ:  # vdb: equality; on a list field, "holds"
        return {key: value}
    if op == FilterOperator.CONTAINS:  # `value in metadata_value`: a substring of a string, an item of a list
        return {key: {"$contains": value}}
    if op == FilterOperator.TEXT_MATCH:
        if not isinstance(value, str):
            raise vdb.InvalidArgumentError(f"filter on {key!r}: TEXT_MATCH expects a string, got {value!r:.60}")
        return {key: {"$contains": value}}
    if op in _RANGE:
        return {key: {_RANGE[op]: value}}
    if op == FilterOperator.ANY:
        return {key: {"$in": value}}
    if op == FilterOperator.ALL:
        if not isinstance(value, list) or not value:
            raise vdb.InvalidArgumentError(f"filter on {key!r}: ALL expects a non-empty list")
        return {"$and": [{key: v} for v in value]}
    if op == FilterOperator.IS_EMPTY:  # missing, null, "" or [] (an empty list indexes no value)
        return {"$or": [{"$not": {key: {"$exists": True}}}, {key: ""}]}
    raise vdb.InvalidArgumentError(
        f"filter on {key!r}: operator {op.name} is not supported by vdb's filter language (supported: EQ NE GT GTE "
        f"LT LTE IN NIN CONTAINS TEXT_MATCH ANY ALL IS_EMPTY); for words in the text use mode TEXT_SEARCH or HYBRID")


def to_filter(filters: MetadataFilters | None) -> dict | None:
    """MetadataFilters as a filter over `metadata` in vdb's language (field names unprefixed; common.to_vdb_filter
    prefixes them). EQ NE GT GTE LT LTE IN NIN map onto vdb's operators, CONTAINS and TEXT_MATCH onto $contains
    (a substring of a string value, an item of a list: LlamaIndex's `value in metadata_value`), ANY / ALL onto
    vdb's list semantics (a list field equals a value when it holds it), IS_EMPTY onto $exists; nested
    MetadataFilters with AND, OR and NOT (none of the filters matches, as LlamaIndex's own evaluation) nest. Other
    operators (TEXT_MATCH_INSENSITIVE) raise InvalidArgumentError. Where vdb differs from LlamaIndex's in-memory
    evaluation: EQ / IN against a list field test membership (LlamaIndex compares the whole list), TEXT_MATCH on a
    list field tests membership (LlamaIndex raises TypeError), and ranges need numbers."""
    if filters is None or not filters.filters:
        return None
    parts = [to_filter(f) if isinstance(f, MetadataFilters) else _condition(f) for f in filters.filters]
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    cond = filters.condition or FilterCondition.AND
    if cond == FilterCondition.NOT:
        return {"$not": parts[0] if len(parts) == 1 else {"$or": parts}}
    if len(parts) == 1:
        return parts[0]
    return {"$and" if cond == FilterCondition.AND else "$or": parts}


class HashingEmbedding(BaseEmbedding):
    """A LlamaIndex embedding over vdb's deterministic hashing embedder (vdb/text/embed.py): for tests and examples
    that must not download a model. It captures word overlap, not meaning."""

    dim: int = Field(default=256, description="vector dimension")
    _embedder: Any = PrivateAttr()

    def __init__(self, dim: int = 256, **kwargs: Any):
        super().__init__(dim=dim, model_name=f"vdb-hashing-{dim}", **kwargs)
        from vdb.text.embed import HashingEmbedder
        self._embedder = HashingEmbedder(dim)

    @classmethod
    def class_name(cls) -> str:
        """LlamaIndex's serialisation name."""
        return "VdbHashingEmbedding"

    def _get_query_embedding(self, query: str) -> List[float]:
        return self._embedder([query])[0].tolist()

    async def _aget_query_embedding(self, query: str) -> List[float]:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> List[float]:
        return self._embedder([text])[0].tolist()

    def _get_text_embeddings(self, texts: List[str]) -> List[List[float]]:
        return self._embedder(texts).tolist()


class VdbLlamaVectorStore(BasePydanticVectorStore):
    """A LlamaIndex vector store over one vdb collection (see the module docstring)."""

    stores_text: bool = True
    flat_metadata: bool = False
    collection: str = "llamaindex"
    metric: str = "cosine"
    collection_options: dict = Field(default_factory=dict)
    _db: Any = PrivateAttr()
    _owned: bool = PrivateAttr(default=False)

    def __init__(self, *, collection: str = "llamaindex", path: str | None = None, address: str | None = None,
                 api_key: str | None = None, db: Any = None, metric: str = "cosine", **collection_options: Any):
        super().__init__(collection=collection, metric=metric,
                         collection_options={"text_field": "text", **collection_options})
        self._db, self._owned = open_db(path, address, api_key, db)

    @classmethod
    def class_name(cls) -> str:
        """LlamaIndex's serialisation name."""
        return "VdbLlamaVectorStore"

    @property
    def client(self) -> Any:
        """The vdb VectorDB under the store (embedded Database or gRPC Client)."""
        return self._db

    def close(self) -> None:
        """Close the database or channel this store opened (not a `db=` it was given)."""
        if self._owned:
            self._db.close()

    def _exists(self) -> bool:
        return self.collection in self._db.list_collections()

    # -- writes -----------------------------------------------------------------------------------------
    def add(self, nodes: Sequence[BaseNode], **add_kwargs: Any) -> List[str]:
        """Upsert nodes (each with its embedding set); returns their ids. A node id given twice: the last wins."""
        nodes = list(nodes)
        if not nodes:
            return []
        vectors = np.asarray([self._embedding_of(n) for n in nodes], np.float32)
        if vectors.ndim != 2:
            raise vdb.InvalidArgumentError("the nodes' embeddings differ in length")
        self._db.create_collection(self.collection, dim=vectors.shape[1], metric=self.metric, exist_ok=True,
                                   **self.collection_options)
        ids = [n.node_id for n in nodes]
        keep = sorted({nid: i for i, nid in enumerate(ids)}.values())
        for s in range(0, len(keep), ADD_BATCH):
            part = keep[s: s + ADD_BATCH]
            rids = np.array([common.record_id(ids[i]) for i in part], np.int64)
            check_collisions(self._db, self.collection, rids, [ids[i] for i in part], ID_FIELD)
            payloads = [self._payload(nodes[i], vectors[i]) for i in part]
            self._db.upsert(self.collection, rids, vectors[part], payloads)
        return ids

    @staticmethod
    def _embedding_of(node: BaseNode) -> list:
        if node.embedding is None:
            raise vdb.InvalidArgumentError(f"node {node.node_id!r} has no embedding: embed nodes before adding them "
                                           f"(VectorStoreIndex does)")
        return node.embedding

    def _payload(self, node: BaseNode, vector: np.ndarray) -> dict:
        meta = node_to_metadata_dict(node, remove_text=True, flat_metadata=self.flat_metadata)
        payload = {"text": node.get_content(metadata_mode=MetadataMode.NONE),
                   # the node's own metadata, JSON-encoded as LlamaIndex does; the flat dict's top level also has
                   # its reserved keys (doc_id, ...), which would shadow metadata of the same name
                   "metadata": json.loads(meta["_node_content"]).get("metadata") or {},
                   ID_FIELD: node.node_id, "ref_doc_id": node.ref_doc_id,
                   "_node_content": meta["_node_content"], "_node_type": meta["_node_type"]}
        if self.metric == "cosine":  # vdb stores the unit vector: keep the length to give the embedding back
            payload["embedding_norm"] = float(np.linalg.norm(vector))
        return payload

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete every node whose source document is ref_doc_id."""
        if self._exists():
            delete_matching(self._db, self.collection, {"ref_doc_id": ref_doc_id})

    def delete_nodes(self, node_ids: Optional[List[str]] = None, filters: Optional[MetadataFilters] = None,
                     **delete_kwargs: Any) -> None:
        """Delete the nodes among node_ids that pass filters (either may be None: no restriction; both None
        deletes every node, as SimpleVectorStore does)."""
        if not self._exists() or node_ids == []:
            return
        if filters is None and node_ids is not None:
            mine = [r.id for r in owned_records(self._db, self.collection, list(node_ids), ID_FIELD)]
            if mine:
                self._db.delete(self.collection, np.array(mine, np.int64))
            return
        delete_matching(self._db, self.collection, self._filter(filters, node_ids, None) or self._everything())

    def clear(self) -> None:
        """Delete every node (drops the collection; the next add creates it again)."""
        if self._exists():
            self._db.drop_collection(self.collection)

    # -- reads ------------------------------------------------------------------------------------------
    def get_nodes(self, node_ids: Optional[List[str]] = None,
                  filters: Optional[MetadataFilters] = None) -> List[BaseNode]:
        """The nodes among node_ids (in the order asked, missing ones left out) that pass filters; with neither,
        every node. Without node_ids this is one filtered search of top_k = the collection's count: over more
        nodes than the server's max_top_k (10,000 by default) vdb refuses it (InvalidArgumentError)."""
        if not self._exists() or node_ids == []:
            return []
        if filters is None and node_ids is not None:
            return [self._node(r) for r in owned_records(self._db, self.collection, list(node_ids), ID_FIELD)]
        count = self._db.count(self.collection)
        if count == 0:
            return []
        f = self._filter(filters, node_ids, None) or self._everything()
        ids = matching_ids(self._db, self.collection, f, limit=count)
        records = {r.id: r for r in self._db.get(self.collection, ids)} if ids else {}
        if node_ids is None:
            return [self._node(records[i]) for i in ids if i in records]
        by_node = {r.payload[ID_FIELD]: r for r in records.values()}
        return [self._node(by_node[n]) for n in node_ids if n in by_node]

    @staticmethod
    def _everything() -> dict:
        return {ID_FIELD: {"$exists": True}}

    def _node(self, record) -> BaseNode:
        p = record.payload
        node = metadata_dict_to_node({"_node_content": p["_node_content"], "_node_type": p["_node_type"]},
                                     text=p["text"])
        if record.vector is not None:
            node.embedding = (np.asarray(record.vector, np.float64) * p.get("embedding_norm", 1.0)).tolist()
        return node

    @staticmethod
    def _filter(filters: MetadataFilters | None, node_ids, doc_ids) -> dict | None:
        parts = [p for p in (to_vdb_filter(to_filter(filters)),
                             {ID_FIELD: {"$in": list(node_ids)}} if node_ids is not None else None,
                             {"ref_doc_id": {"$in": list(doc_ids)}} if doc_ids is not None else None) if p]
        return None if not parts else parts[0] if len(parts) == 1 else {"$and": parts}

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """The nodes nearest the query, by its mode (module docstring), restricted to query.filters, query.doc_ids
        (an empty list: nothing) and query.node_ids (an empty list: no restriction, as the qdrant and chroma stores:
        VectorStoreIndex.as_retriever passes the index's node list, which is empty over a store that keeps text)."""
        mode = Mode(query.mode)
        if mode not in MODES:
            raise vdb.InvalidArgumentError(f"query mode {mode.value!r} is not supported; use one of "
                                           f"{', '.join(m.value for m in MODES)}")
        text, vector = query.query_str, query.query_embedding
        if mode not in TEXT_MODES and vector is None:
            raise vdb.InvalidArgumentError(f"mode {mode.value!r} needs query_embedding")
        if mode in TEXT_MODES + (Mode.HYBRID,) and not text:
            raise vdb.InvalidArgumentError(f"mode {mode.value!r} needs query_str")
        empty = VectorStoreQueryResult(nodes=[], similarities=[], ids=[])
        if query.doc_ids == [] or not self._exists():
            return empty
        f = self._filter(query.filters, query.node_ids or None, query.doc_ids)
        k = query.similarity_top_k
        q = None if vector is None else np.asarray(vector, np.float32)
        if mode == Mode.MMR:
            return self._mmr(q, k, f, query.mmr_threshold if query.mmr_threshold is not None else
                             kwargs.get("mmr_threshold"), kwargs)
        if mode == Mode.DEFAULT:
            hits = found_records(self._db, self.collection, self._db.search(self.collection, q, top_k=k, filter=f))
            return self._result(hits, self._similarity)
        if mode in TEXT_MODES:
            res = self._db.hybrid_search(self.collection, text=text, top_k=query.sparse_top_k or k, filter=f)
        else:
            cand = max(k, query.sparse_top_k) if query.sparse_top_k else None
            res = self._db.hybrid_search(self.collection, text=text, vector=q, top_k=query.hybrid_top_k or k,
                                         fusion="rrf" if query.alpha is None else "weighted",
                                         alpha=0.5 if query.alpha is None else query.alpha, candidates=cand,
                                         filter=f)
        return self._result(found_records(self._db, self.collection, res), lambda d: -d)

    def _similarity(self, d: float) -> float:
        return 1.0 - d if self.metric == "cosine" else -d  # vdb's distances: 1 - cos, -<q, x>, squared L2

    def _result(self, hits, score) -> VectorStoreQueryResult:
        nodes = [self._node(r) for r, _ in hits]
        return VectorStoreQueryResult(nodes=nodes, similarities=[score(d) for _, d in hits],
                                      ids=[n.node_id for n in nodes])

    def _mmr(self, q: np.ndarray, k: int, f: dict | None, threshold, kwargs: dict) -> VectorStoreQueryResult:
        fetch = int(kwargs.get("mmr_prefetch_k") or max(k, round(k * kwargs.get("mmr_prefetch_factor",
                                                                                   MMR_PREFETCH_FACTOR))))
        hits = found_records(self._db, self.collection, self._db.search(self.collection, q, top_k=fetch, filter=f))
        if not hits:
            return VectorStoreQueryResult(nodes=[], similarities=[], ids=[])
        by_id = {r.payload[ID_FIELD]: r for r, _ in hits}
        sims, picked = get_top_k_mmr_embeddings(q.tolist(), [np.asarray(r.vector, np.float64).tolist()
                                                             for r, _ in hits], similarity_top_k=k,
                                                embedding_ids=list(by_id), mmr_threshold=threshold)
        nodes = [self._node(by_id[i]) for i in picked]
        return VectorStoreQueryResult(nodes=nodes, similarities=[float(s) for s in sims], ids=list(picked))
