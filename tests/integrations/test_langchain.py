"""vdb as a LangChain VectorStore: langchain-tests' standard suite, unmodified, plus what it does not cover
(filters, MMR, hybrid and BM25 modes, retrievers, a server behind the store, id collisions)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from langchain_core.documents import Document
from langchain_tests.integration_tests import VectorStoreIntegrationTests

import vdb
from vdb.integrations import common
from vdb.integrations.langchain import HashingEmbeddings, VdbVectorStore

sys.path.insert(0, str(Path(__file__).parents[1] / "service"))
from running import Running  # noqa: E402


class TestVdbVectorStoreStandard(VectorStoreIntegrationTests):
    @pytest.fixture()
    def vectorstore(self, tmp_path):
        store = VdbVectorStore(self.get_embeddings(), path=str(tmp_path / "lc"))
        try:
            yield store
        finally:
            store.close()


def HashEmbeddings():
    return HashingEmbeddings(64)


DOCS = ["the cat sat on the mat", "dogs chase cats", "a quick brown fox", "foxes and dogs in the field",
        "stars at night", "the night sky is full of stars", "fish swim in the sea"]


@pytest.fixture
def store(tmp_path):
    s = VdbVectorStore.from_texts(DOCS, HashEmbeddings(), path=str(tmp_path / "s"),
                                  metadatas=[{"n": i, "kind": "animal" if i < 4 else "sky" if i < 6 else "sea",
                                              "tags": ["even"] if i % 2 == 0 else ["odd"]} for i in range(len(DOCS))],
                                  ids=[f"d{i}" for i in range(len(DOCS))])
    yield s
    s.close()


def test_metadata_filters_use_vdbs_language(store):
    got = store.similarity_search("stars", k=7, filter={"kind": "sky"})
    assert {d.id for d in got} == {"d4", "d5"}
    got = store.similarity_search("dogs", k=7, filter={"$or": [{"n": {"$gte": 5}}, {"tags": "odd"}]})
    assert {d.id for d in got} == {"d1", "d3", "d5", "d6"}
    with pytest.raises(vdb.InvalidArgumentError):
        store.similarity_search("x", filter={"n": {"$near": 1}})


def test_modes_and_retrievers(store):
    bm25 = store.similarity_search_with_score("stars", k=3, mode="bm25")
    assert {d.id for d, _ in bm25} == {"d4", "d5"} and all(s < 0 for _, s in bm25)  # -BM25
    hybrid = store.as_retriever(search_kwargs={"k": 2, "mode": "hybrid"}).invoke("night stars")
    assert {d.id for d in hybrid} == {"d4", "d5"}
    dense = store.as_retriever(search_kwargs={"k": 1}).invoke("fish swim in the sea")
    assert dense == [Document(id="d6", page_content=DOCS[6], metadata={"n": 6, "kind": "sea", "tags": ["even"]})]
    rel = store.similarity_search_with_relevance_scores("fish swim in the sea", k=1)
    assert rel[0][0].id == "d6" and rel[0][1] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(vdb.InvalidArgumentError):
        store.similarity_search("x", mode="sparse")


def test_mmr_prefers_diverse_documents(store):
    store.add_texts(["stars at night", "stars at night!"], ids=["dup1", "dup2"])
    plain = [d.id for d in store.similarity_search("stars at night", k=3)]
    mmr = [d.id for d in store.max_marginal_relevance_search("stars at night", k=3, fetch_k=7, lambda_mult=0.3)]
    assert len(set(plain) & {"d4", "dup1", "dup2"}) == 3          # three copies of one text
    assert len(set(mmr) & {"d4", "dup1", "dup2"}) < 3 and len(mmr) == 3


def test_a_hash_collision_is_refused(store, monkeypatch):
    monkeypatch.setattr(common, "record_id", lambda s: 12345)
    store.add_texts(["one"], ids=["first"])
    with pytest.raises(vdb.AlreadyExistsError, match="first"):
        store.add_texts(["two"], ids=["second"])
    assert [d.page_content for d in store.get_by_ids(["first"])] == ["one"]
    assert [d.id for d in store.get_by_ids(["first", "second"])] == ["first"]   # "second" never answers as "first"


def test_delete_everything_and_a_store_over_a_server(tmp_path):
    r = Running(tmp_path / "srv", checkpoint_interval_s=3600)
    try:
        s = VdbVectorStore(HashEmbeddings(), address=r.target, collection="docs")
        ids = s.add_texts(DOCS)
        assert s.similarity_search(DOCS[2], k=1)[0].id == ids[2]
        assert s.similarity_search("quick fox", k=1, mode="bm25")[0].id == ids[2]
        s.delete()
        assert s.similarity_search("fox", k=1) == [] and "docs" not in r.db.list_collections()
        s.close()
    finally:
        r.stop()
    with pytest.raises(vdb.InvalidArgumentError):
        VdbVectorStore(HashEmbeddings())


def test_hostile_filters_and_mmr_modes_are_typed(store):
    """Found by review: a non-string filter key raised AttributeError (InternalError over the wire), and mode=
    (documented for every search method) made MMR raise TypeError."""
    for bad in ({1: "a"}, {None: 1}, {"$or": [{2: "x"}]}, {"$not": {None: 1}}):
        with pytest.raises(vdb.InvalidArgumentError, match="filter keys must be strings"):
            store.similarity_search("x", filter=bad)
    # a filter never leaves the metadata: the store's own payload fields are not reachable through it
    assert store.similarity_search("cat", k=7, filter={"lc_id": "d0"}) == []
    assert store.similarity_search("cat", k=7, filter={"text": DOCS[0]}) == []
    for mode in ("bm25", "hybrid"):
        got = [d.id for d in store.max_marginal_relevance_search("stars night", k=2, fetch_k=5, mode=mode,
                                                                 filter={"kind": "sky"})]
        assert sorted(got) == ["d4", "d5"], (mode, got)
    retr = store.as_retriever(search_type="mmr", search_kwargs={"k": 1, "fetch_k": 3, "mode": "bm25"})
    assert [d.id for d in retr.invoke("fish")] == ["d6"]
    with pytest.raises(vdb.InvalidArgumentError, match="needs the query text"):
        store.max_marginal_relevance_search_by_vector(HashEmbeddings().embed_query("x"), mode="bm25")
    with pytest.raises(vdb.InvalidArgumentError, match="mode must be one of"):
        store.max_marginal_relevance_search("x", mode="sparse")
    assert len(store.max_marginal_relevance_search("stars", k=5, fetch_k=2)) == 5  # k > fetch_k: fetches k
