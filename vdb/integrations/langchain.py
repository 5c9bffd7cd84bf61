"""`VdbVectorStore`: vdb as a LangChain VectorStore (`pip install 'vdb[langchain]'`).

    from vdb.integrations.langchain import VdbVectorStore
    store = VdbVectorStore.from_texts(texts, embeddings, path="rag-data/")     # embedded
    store = VdbVectorStore(embeddings, address="127.0.0.1:50051")              # or a server (or db=any VectorDB)
    docs = store.as_retriever(search_kwargs={"k": 4, "mode": "hybrid"}).invoke("question")

Storage: one vdb collection (cosine by default) with a full-text index over `text`; each document is one record
whose payload is {"text": page_content, "metadata": metadata, "lc_id": the LangChain id}. LangChain ids are
strings, vdb's are integers: a record's id is the first 63 bits of blake2b(lc_id), and an add that would put a
different string on an id already taken (a hash collision) is refused (AlreadyExistsError) instead of silently
replacing a document.

Search modes (`mode=` on every search method and in a retriever's search_kwargs): "dense" (default: the
embedding's nearest neighbours), "bm25" (full-text only), "hybrid" (both, fused by vdb; `fusion`, `alpha` are
passed through). Filters are vdb's filter language over the metadata: {"source": "a"}, {"year": {"$gte": 2020}},
{"$or": [...]} (field names are looked up inside `metadata`). Scores of *_with_score are vdb's distances
(smaller is nearer; -BM25 / -fused score for the text modes); relevance scores map cosine distance d to 1 - d / 2.
Async methods are LangChain's defaults (the sync call in an executor): vdb's API is blocking.
"""
from __future__ import annotations

import uuid
from typing import Any, Iterable, Sequence

import numpy as np
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore
from langchain_core.vectorstores.utils import maximal_marginal_relevance

import vdb
from vdb.integrations import common
from vdb.integrations.common import ADD_BATCH, check_collisions, found_records, open_db, owned_records, to_vdb_filter

MODES = ("dense", "bm25", "hybrid")


class HashingEmbeddings(Embeddings):
    """LangChain Embeddings over vdb's deterministic hashing embedder (vdb/text/embed.py): for tests and
    examples that must not download a model. It captures word overlap, not meaning."""

    def __init__(self, dim: int = 256):
        from vdb.text.embed import HashingEmbedder
        self._embedder = HashingEmbedder(dim)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """One vector per text."""
        return self._embedder(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        """The vector of one query."""
        return self._embedder([text])[0].tolist()


class VdbVectorStore(VectorStore):
    """A LangChain VectorStore over one vdb collection (see the module docstring)."""

    def __init__(self, embedding: Embeddings, *, collection: str = "langchain", path: str | None = None,
                 address: str | None = None, api_key: str | None = None, db: Any = None, metric: str = "cosine",
                 **collection_options: Any):
        self.db, self._owned = open_db(path, address, api_key, db)
        self._embedding, self.collection, self.metric = embedding, collection, metric
        self._options = {"text_field": "text", **collection_options}

    @property
    def embeddings(self) -> Embeddings:
        """The embedding model of documents and queries."""
        return self._embedding

    def close(self) -> None:
        """Close the database or channel this store opened (not a `db=` it was given)."""
        if self._owned:
            self.db.close()

    def _exists(self) -> bool:
        return self.collection in self.db.list_collections()

    def _ensure(self, dim: int) -> None:
        self.db.create_collection(self.collection, dim=dim, metric=self.metric, exist_ok=True, **self._options)

    # -- writes -----------------------------------------------------------------------------------------
    def add_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
        """Embed and upsert documents; ids from `ids=`, else each Document's id, else new UUIDs."""
        ids = kwargs.pop("ids", None)
        if ids is not None and len(ids) != len(documents):
            raise vdb.InvalidArgumentError(f"{len(ids)} ids for {len(documents)} documents")
        lc_ids = [str(ids[i]) if ids is not None and ids[i] is not None else
                  (d.id if d.id else str(uuid.uuid4())) for i, d in enumerate(documents)]
        if not documents:
            return []
        vectors = np.asarray(self._embedding.embed_documents([d.page_content for d in documents]), np.float32)
        self._ensure(vectors.shape[1])
        last = {lc: i for i, lc in enumerate(lc_ids)}  # a repeated id: the last document wins, as sequential adds
        keep = sorted(last.values())
        for s in range(0, len(keep), ADD_BATCH):
            part = keep[s: s + ADD_BATCH]
            rids = np.array([common.record_id(lc_ids[i]) for i in part], np.int64)
            check_collisions(self.db, self.collection, rids, [lc_ids[i] for i in part], "lc_id")
            payloads = [{"text": documents[i].page_content, "metadata": dict(documents[i].metadata),
                         "lc_id": lc_ids[i]} for i in part]
            self.db.upsert(self.collection, rids, vectors[part], payloads)
        return lc_ids

    def add_texts(self, texts: Iterable[str], metadatas: list[dict] | None = None, *, ids: list[str] | None = None,
                  **kwargs: Any) -> list[str]:
        """Embed and upsert texts (with metadatas and ids, each optional)."""
        texts = list(texts)
        if metadatas is not None and len(metadatas) != len(texts):
            raise vdb.InvalidArgumentError(f"{len(metadatas)} metadatas for {len(texts)} texts")
        docs = [Document(page_content=t, metadata=(metadatas[i] if metadatas else {}) or {})
                for i, t in enumerate(texts)]
        return self.add_documents(docs, ids=ids, **kwargs)

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool:
        """Delete by LangChain id (unknown ids are ignored); with no ids, delete every document."""
        if not self._exists():
            return True
        if ids is None:
            self.db.drop_collection(self.collection)
            return True
        mine = [r.id for r in owned_records(self.db, self.collection, [str(i) for i in ids], "lc_id")]
        if mine:
            self.db.delete(self.collection, np.array(mine, np.int64))
        return True

    # -- reads ------------------------------------------------------------------------------------------
    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The documents found among `ids`, in the order asked (missing ids are left out)."""
        if not ids or not self._exists():
            return []
        return [self._document(r.payload) for r in owned_records(self.db, self.collection, [str(i) for i in ids],
                                                                 "lc_id")]

    @staticmethod
    def _document(payload: dict) -> Document:
        return Document(id=payload["lc_id"], page_content=payload["text"], metadata=payload.get("metadata") or {})

    def _search(self, query: str | None, vector, k: int, *, mode: str = "dense", filter: dict | None = None,
                **kwargs: Any) -> list[tuple[Document, float]]:
        if mode not in MODES:
            raise vdb.InvalidArgumentError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if not self._exists():
            return []
        f = to_vdb_filter(filter)
        if mode == "dense":
            res = self.db.search(self.collection, np.asarray(vector, np.float32), top_k=k, filter=f, **kwargs)
        else:
            res = self.db.hybrid_search(self.collection, text=query, top_k=k, filter=f,
                                        vector=None if mode == "bm25" else np.asarray(vector, np.float32), **kwargs)
        return [(self._document(r.payload), d) for r, d in found_records(self.db, self.collection, res)]

    def _query_vector(self, query: str, mode: str):
        return None if mode == "bm25" else self._embedding.embed_query(query)

    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        """The k documents nearest the query (mode dense, bm25 or hybrid; filter on metadata)."""
        return [d for d, _ in self.similarity_search_with_score(query, k, **kwargs)]

    def similarity_search_with_score(self, query: str, k: int = 4, **kwargs: Any) -> list[tuple[Document, float]]:
        """(document, distance) pairs, nearest first."""
        mode = kwargs.pop("mode", "dense")
        return self._search(query, self._query_vector(query, mode), k, mode=mode, **kwargs)

    def similarity_search_by_vector(self, embedding: list[float], k: int = 4, **kwargs: Any) -> list[Document]:
        """The k documents nearest an embedding."""
        return [d for d, _ in self._search(None, embedding, k, mode="dense", **kwargs)]

    def _select_relevance_score_fn(self):
        if self.metric == "cosine":  # d = 1 - cos in [0, 2] -> [1, 0]
            return lambda d: min(1.0, max(0.0, 1.0 - d / 2.0))
        if self.metric == "l2":  # vdb's l2 is squared; LangChain's function expects the distance itself
            return lambda d: self._euclidean_relevance_score_fn(float(np.sqrt(max(d, 0.0))))
        return lambda d: -d  # ip: vdb's distance is -<q, x>

    def max_marginal_relevance_search(self, query: str, k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5,
                                      **kwargs: Any) -> list[Document]:
        """Diverse results: the fetch_k best of the search `mode` (dense, bm25 or hybrid), then maximal marginal
        relevance to the query's embedding picks k of them."""
        return self._mmr(query, self._embedding.embed_query(query), k, fetch_k, lambda_mult, **kwargs)

    def max_marginal_relevance_search_by_vector(self, embedding: list[float], k: int = 4, fetch_k: int = 20,
                                                lambda_mult: float = 0.5, **kwargs: Any) -> list[Document]:
        """As max_marginal_relevance_search, from an embedding (mode dense only: the text modes need the query)."""
        return self._mmr(None, embedding, k, fetch_k, lambda_mult, **kwargs)

    def _mmr(self, query: str | None, embedding, k: int, fetch_k: int, lambda_mult: float, *, mode: str = "dense",
             filter: dict | None = None, **kwargs: Any) -> list[Document]:
        if mode not in MODES:
            raise vdb.InvalidArgumentError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode != "dense" and query is None:
            raise vdb.InvalidArgumentError(f"mode {mode!r} needs the query text: use max_marginal_relevance_search")
        if not self._exists():
            return []
        q, f, fetch = np.asarray(embedding, np.float32), to_vdb_filter(filter), max(fetch_k, k)
        if mode == "dense":
            res = self.db.search(self.collection, q, top_k=fetch, filter=f, **kwargs)
        else:
            res = self.db.hybrid_search(self.collection, text=query, vector=None if mode == "bm25" else q,
                                        top_k=fetch, filter=f, **kwargs)
        ids = [int(i) for i in res.ids if i >= 0]
        if not ids:
            return []
        records = self.db.get(self.collection, ids)
        picked = maximal_marginal_relevance(np.asarray(embedding, np.float32), [r.vector for r in records],
                                            k=min(k, len(records)), lambda_mult=lambda_mult)
        return [self._document(records[i].payload) for i in picked]

    @classmethod
    def from_texts(cls, texts: list[str], embedding: Embeddings, metadatas: list[dict] | None = None, *,
                   ids: list[str] | None = None, **kwargs: Any) -> "VdbVectorStore":
        """A store (keyword arguments as the constructor's) holding `texts`."""
        store = cls(embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store
