"""vdb as a LlamaIndex vector store: a conformance suite ported from llama-index-core's own tests of its vector
stores (llama-index-core publishes no standard suite like langchain-tests), run against the store embedded and over
a gRPC server. Each test names the upstream test it mirrors (run-llama/llama_index, llama-index-core/tests/...):

    vector_stores/test_simple.py                  SimpleVectorStoreTest: queries, every filter operator, delete,
                                                  delete_nodes, clear
    vector_stores/test_metadata_filters_logic.py  AND / OR / NOT / missing-key semantics of MetadataFilters
    vector_stores/test_simple_doc_ids.py          doc_ids / node_ids restrictions, alone and with filters
    vector_stores/test_utils.py                   node serialisation round trips (text, image, index, multimodal)
    indices/vector_store/test_simple.py           VectorStoreIndex build / insert / delete_ref_doc over the store
    indices/vector_store/test_simple_async.py     the same through the async API
    indices/vector_store/test_retrievers.py       retrievers over the index

Where the upstream test asserts SimpleVectorStore's in-memory semantics that vdb's filter language does not have
(TEXT_MATCH, the learner modes) the port asserts the clear error instead. The end-to-end tests at the bottom go
texts -> VectorStoreIndex.from_vector_store -> as_retriever with a deterministic embedding and real filters.
"""
from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core import Document, StorageContext, VectorStoreIndex  # noqa: E402
from llama_index.core import MockEmbedding as ConstantEmbedding  # noqa: E402
from llama_index.core.base.embeddings.base import BaseEmbedding  # noqa: E402
from llama_index.core.node_parser import SentenceSplitter  # noqa: E402
from llama_index.core.node_parser.interface import TextSplitter  # noqa: E402
from llama_index.core.schema import (ImageNode, IndexNode, MediaResource, Node, NodeRelationship,  # noqa: E402
                                     QueryBundle, RelatedNodeInfo, TextNode)
from llama_index.core.vector_stores.types import (FilterCondition, FilterOperator, MetadataFilter,  # noqa: E402
                                                  MetadataFilters, VectorStoreQuery, VectorStoreQueryMode)

import vdb  # noqa: E402
from vdb.integrations import common  # noqa: E402
from vdb.integrations.llamaindex import HashingEmbedding, VdbLlamaVectorStore  # noqa: E402

sys.path.insert(0, str(Path(__file__).parents[1] / "service"))
from running import Running  # noqa: E402

F, Op, Cond, Mode = MetadataFilter, FilterOperator, FilterCondition, VectorStoreQueryMode
A, B, C = "AF3BE6C4-5F43-4D74-B075-6B0E07900DE8", "7D9CD555-846C-445C-A9DD-F8924A01411D", \
    "452D24AB-F185-414C-A352-590B4B9EE51B"   # upstream's _NODE_ID_WEIGHT_1_RANK_A, _2_RANK_C, _3_RANK_C


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    r = Running(tmp_path_factory.mktemp("llama-srv"), checkpoint_interval_s=3600)
    yield r
    r.stop()


@pytest.fixture(params=["embedded", "grpc"])
def make_store(request, tmp_path):
    """A factory of stores on one backend: embedded (a fresh data directory) or a gRPC server (fresh collections)."""
    made = []

    def make(**kw):
        if request.param == "embedded":
            s = VdbLlamaVectorStore(path=str(tmp_path / f"db{len(made)}"), **kw)
        else:
            s = VdbLlamaVectorStore(address=request.getfixturevalue("server").target,
                                    collection=f"t{uuid.uuid4().hex[:12]}", **kw)
        made.append(s)
        return s
    yield make
    for s in made:
        s.close()


@pytest.fixture
def store(make_store):
    return make_store()


def _nodes() -> list[TextNode]:
    """upstream vector_stores/test_simple.py _node_embeddings_for_test."""
    def node(id_, emb, src, weight, rank, quality, ident):
        return TextNode(text="lorem ipsum", id_=id_, embedding=emb,
                        relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=src)},
                        metadata={"weight": weight, "rank": rank, "quality": quality, "identifier": ident})
    return [node(A, [1.0, 0.0], "test-0", 1.0, "a", ["medium", "high"], "6FTR78Yun"),
            node(B, [0.0, 1.0], "test-1", 2.0, "c", ["medium"], "6FTR78Ygl"),
            node(C, [1.0, 1.0], "test-2", 3.0, "c", ["low", "medium", "high"], "6FTR78Ztl")]


@pytest.fixture
def filled(store):
    store.add(_nodes())
    return store


def q(filters=None, k=3, **kw) -> VectorStoreQuery:
    return VectorStoreQuery(query_embedding=[1.0, 1.0], similarity_top_k=k, filters=filters, **kw)


def ids(store, filters=None, **kw) -> list[str]:
    return store.query(q(filters, **kw)).ids


# -- vector_stores/test_simple.py -------------------------------------------------------------------------------
def test_query_without_filters_returns_all_rows_sorted_by_similarity(filled):
    res = filled.query(q())
    assert sorted(res.ids) == sorted([A, B, C]) and res.ids[0] == C
    assert res.similarities == pytest.approx([1.0, 2 ** -0.5, 2 ** -0.5], abs=1e-6)   # cosine similarity
    assert [n.node_id for n in res.nodes] == res.ids


def test_query_with_filters_returns_multiple_matches(filled):
    assert ids(filled, MetadataFilters(filters=[F(key="rank", value="c")])) == [C, B]


def test_query_with_filter_applies_top_k(filled):
    assert ids(filled, MetadataFilters(filters=[F(key="rank", value="c")]), k=1) == [C]


def test_query_with_filter_applies_node_id_filter(filled):
    assert ids(filled, MetadataFilters(filters=[F(key="rank", value="c")]), node_ids=[C]) == [C]


def test_query_with_exact_filters_returns_single_match(filled):
    f = MetadataFilters(filters=[F(key="rank", value="c"), F(key="weight", value=2.0)])
    assert ids(filled, f, k=1) == [B]        # upstream's default top_k is 1 as well


def test_query_with_contradictive_filter_returns_no_matches(filled):
    assert ids(filled, MetadataFilters(filters=[F(key="weight", value=2), F(key="weight", value=3)])) == []


def test_query_with_filter_on_unknown_field_returns_no_matches(filled):
    assert ids(filled, MetadataFilters(filters=[F(key="unknown_field", value="c")])) == []


def test_delete_removes_document_from_query_results(filled):
    filled.delete("test-1")
    assert ids(filled, k=2) == [C, A]


def test_query_with_filters_with_filter_condition(filled):
    two = [F(key="rank", value="c"), F(key="weight", value=1.0)]
    assert len(ids(filled, MetadataFilters(filters=two, condition=Cond.OR))) == 3
    assert ids(filled, MetadataFilters(filters=two, condition=Cond.AND)) == []


def test_query_with_not_filter_returns_matches(filled):
    f = MetadataFilters(filters=[F(key="rank", operator=Op.EQ, value="a")], condition=Cond.NOT)
    assert sorted(ids(filled, f)) == sorted([B, C])


# upstream test_query_with_{equal,notequal,greaterthan,greaterthanequal,lessthan,lessthanequal,in,notin,contains,
# any,all,is_empty}_filter_returns_matches (the lessthan one asserts no count upstream; weight 1.0 < 1.1 is one)
@pytest.mark.parametrize("key,op,value,expected", [
    ("weight", Op.EQ, 1.0, {A}), ("weight", Op.NE, 1.0, {B, C}), ("weight", Op.GT, 1.5, {B, C}),
    ("weight", Op.GTE, 1.0, {A, B, C}), ("weight", Op.LT, 1.1, {A}), ("weight", Op.LTE, 1.0, {A}),
    ("rank", Op.IN, ["a", "c"], {A, B, C}), ("rank", Op.NIN, ["c"], {A}), ("quality", Op.CONTAINS, "high", {A, C}),
    ("quality", Op.ANY, ["high", "low"], {A, C}), ("quality", Op.ALL, ["medium", "high"], {A, C}),
    ("not_existed_key", Op.IS_EMPTY, None, {A, B, C})])
def test_query_with_operator_filter_returns_matches(filled, key, op, value, expected):
    assert set(ids(filled, MetadataFilters(filters=[F(key=key, operator=op, value=value)]))) == expected


def test_query_with_textmatch_filter_returns_matches(filled):
    # upstream test_query_with_textmatch_filter_returns_matches (two matches)
    assert sorted(ids(filled, MetadataFilters(filters=[F(key="identifier", operator=Op.TEXT_MATCH,
                                                         value="6FTR78Y")]))) == sorted([A, B])


@pytest.mark.parametrize("key,value", [("identifier", "6FTR78Y"), ("identifier", "78Z"), ("identifier", "6FTR78Yun"),
                                       ("identifier", "x"), ("quality", "high"), ("quality", "ig"), ("rank", "c")])
def test_contains_matches_what_llamaindex_itself_evaluates(filled, key, value):
    # LlamaIndex's own evaluator (`value in metadata_value`: a substring of a string, an item of a list) is the
    # oracle; vdb once mapped CONTAINS onto equality, so "78Z" found nothing
    from llama_index.core.vector_stores.utils import build_metadata_filter_fn
    meta = {n.node_id: n.metadata for n in _nodes()}
    filters = MetadataFilters(filters=[F(key=key, operator=Op.CONTAINS, value=value)])
    expect = set(filter(build_metadata_filter_fn(meta.__getitem__, filters), meta))
    assert set(ids(filled, filters)) == expect


def test_textmatch_insensitive_is_refused_clearly(filled):
    # case-folded substrings are not in vdb's filter language; the store says so (and points at full-text search)
    # instead of answering something else
    with pytest.raises(vdb.InvalidArgumentError, match="TEXT_SEARCH"):
        filled.query(q(MetadataFilters(filters=[F(key="identifier", operator=Op.TEXT_MATCH_INSENSITIVE,
                                                  value="6FTR78Y")])))


def test_clear(filled):
    filled.clear()
    assert ids(filled) == [] and filled.get_nodes() == []
    filled.add(_nodes()[:1])                             # and the store is usable again
    assert ids(filled) == [A]


def test_delete_nodes(filled):
    filled.delete_nodes([A, B])
    assert ids(filled) == [C]


def test_delete_nodes_with_filters_and_ids(filled):
    # SimpleVectorStore.delete_nodes semantics: ids AND filters; no ids: every node passing the filters
    filled.delete_nodes([A, B], filters=MetadataFilters(filters=[F(key="rank", value="c")]))
    assert sorted(ids(filled)) == sorted([A, C])
    filled.delete_nodes(filters=MetadataFilters(filters=[F(key="weight", operator=Op.GT, value=2.5)]))
    assert ids(filled) == [A]
    filled.delete_nodes([])                              # an empty list deletes nothing
    assert ids(filled) == [A]
    filled.delete_nodes()                                # no ids and no filters: every node, as upstream
    assert ids(filled) == [] and filled.get_nodes() == []


# -- vector_stores/test_metadata_filters_logic.py (its _METADATA_BY_ID, evaluated by the store) -----------------
@pytest.fixture
def logic(store):
    meta = {"n1": {"rank": "a", "weight": 1.0, "tags": ["alpha", "beta"], "identifier": "ABC123"},
            "n2": {"rank": "b", "weight": 2.0, "tags": ["beta"], "identifier": "abc456"},
            "n3": {"rank": "c", "weight": 3.0, "tags": [], "identifier": "XYZ789"}}
    store.add([TextNode(text=n, id_=n, embedding=[1.0, float(i)], metadata=m) for i, (n, m) in enumerate(meta.items())])
    return lambda filters, condition=Cond.AND: set(ids(store, MetadataFilters(filters=filters, condition=condition)))


def test_filter_logic_and_none_or_not(logic):
    ne_gte = [F(key="rank", operator=Op.NE, value="a"), F(key="weight", operator=Op.GTE, value=2.0)]
    assert logic(ne_gte) == {"n2", "n3"}                                 # test_and_condition_matches_expected_nodes
    assert logic(ne_gte, None) == {"n2", "n3"}                           # test_none_condition_defaults_to_and
    assert logic([F(key="rank", value="a"), F(key="rank", value="c")], Cond.OR) == {"n1", "n3"}  # test_or_condition
    assert logic([F(key="rank", value="a")], Cond.NOT) == {"n2", "n3"}   # test_not_condition_negates_filters
    assert logic([F(key="rank", value="a"), F(key="rank", value="b")], Cond.NOT) == {"n3"}   # none of them matches


def test_filter_logic_missing_keys(logic):
    assert logic([F(key="missing", operator=Op.IS_EMPTY, value=None)]) == {"n1", "n2", "n3"}  # test_is_empty_matches
    assert logic([F(key="tags", operator=Op.IS_EMPTY, value=None)]) == {"n3"}        # ... missing_and_empty_values
    # test_ne_and_nin_match_missing_metadata_values, test_ne_matches_nodes_missing_the_key,
    # test_nin_matches_nodes_missing_the_key, test_eq_still_excludes_nodes_missing_the_key
    assert logic([F(key="missing", operator=Op.NE, value="news")]) == {"n1", "n2", "n3"}
    assert logic([F(key="missing", operator=Op.NIN, value=["news", "blog"])]) == {"n1", "n2", "n3"}
    assert logic([F(key="missing", operator=Op.EQ, value="news")]) == set()
    # test_ne_on_missing_key_agrees_with_not_eq_condition
    assert logic([F(key="missing", operator=Op.NE, value="news")]) == logic([F(key="missing", value="news")], Cond.NOT)
    # test_and_condition_with_ne_on_missing_key_combines_with_present_filters
    assert logic([F(key="missing", operator=Op.NE, value="news"), F(key="rank", value="b")]) == {"n2"}


def test_filter_logic_nested_filters(logic):
    # upstream test_nested_metadata_filters_raise_error: SimpleVectorStore cannot nest; vdb's language can, so the
    # store evaluates them (rank a OR (weight >= 2 AND tags holds beta))
    inner = MetadataFilters(filters=[F(key="weight", operator=Op.GTE, value=2.0), F(key="tags", value="beta")])
    assert logic([F(key="rank", value="a"), inner], Cond.OR) == {"n1", "n2"}
    assert logic([MetadataFilters(filters=[F(key="rank", value="a")], condition=Cond.NOT), inner]) == {"n2"}
    # upstream test_text_match_insensitive_uses_case_insensitive_search / *_requires_string_values: refused here
    with pytest.raises(vdb.InvalidArgumentError, match="TEXT_MATCH_INSENSITIVE"):
        logic([F(key="identifier", operator=Op.TEXT_MATCH_INSENSITIVE, value="abc")])


# -- vector_stores/test_simple_doc_ids.py ------------------------------------------------------------------------
def _document_nodes() -> list[TextNode]:
    return [TextNode(id_=f"{doc}-{chunk}", text=f"Document {doc}, chunk {chunk}", embedding=[1.0, float(chunk)],
                     relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=doc)}, metadata={"chunk": chunk})
            for doc in ["a", "b"] for chunk in [0, 1]]


@pytest.mark.parametrize("doc_ids,expected", [(None, {"a-0", "a-1", "b-0", "b-1"}), ([], set()),
                                              (["missing"], set()), (["a"], {"a-0", "a-1"})])
@pytest.mark.parametrize("mode", [Mode.DEFAULT, Mode.MMR])
def test_retriever_constrains_source_documents(store, doc_ids, expected, mode):
    index = VectorStoreIndex(_document_nodes(), storage_context=StorageContext.from_defaults(vector_store=store),
                             embed_model=ConstantEmbedding(embed_dim=2))
    retriever = index.as_retriever(doc_ids=doc_ids, similarity_top_k=10, vector_store_query_mode=mode)
    results = retriever.retrieve(QueryBundle(query_str="test", embedding=[1.0, 0.0]))
    assert {item.node.node_id for item in results} == expected


def test_document_node_and_metadata_filters_intersect(store):
    store.add(_document_nodes() + [TextNode(id_="a-2", text="x", embedding=[1.0, 0.0], metadata={"chunk": 1},
                                            relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id="a")})])
    res = store.query(VectorStoreQuery(query_embedding=[1.0, 0.0], similarity_top_k=10, doc_ids=["a"],
                                       node_ids=["a-0", "a-1", "b-1"],
                                       filters=MetadataFilters(filters=[F(key="chunk", value=1)])))
    assert res.ids == ["a-1"]


@pytest.mark.parametrize("doc_ids,expected", [(None, {"mapped", "unmapped"}), (["a"], {"mapped"})])
def test_document_filter_handles_missing_source_mapping(store, doc_ids, expected):
    store.add([TextNode(id_="mapped", text="m", embedding=[1.0, 0.0],
                        relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id="a")}),
               TextNode(id_="unmapped", text="u", embedding=[0.0, 1.0])])
    res = store.query(VectorStoreQuery(query_embedding=[1.0, 0.0], similarity_top_k=10, doc_ids=doc_ids))
    assert set(res.ids) == expected


@pytest.mark.parametrize("mode", [Mode.SVM, Mode.LINEAR_REGRESSION, Mode.LOGISTIC_REGRESSION, Mode.SEMANTIC_HYBRID])
def test_unsupported_modes_are_refused_clearly(filled, mode):
    # upstream test_document_filter_with_no_candidates_in_learner_modes: vdb has no learner modes
    with pytest.raises(vdb.InvalidArgumentError, match="not supported"):
        filled.query(VectorStoreQuery(query_embedding=[1.0, 0.0], query_str="x", mode=mode))


# -- vector_stores/test_utils.py: every node type round-trips through the store ---------------------------------
def test_nodes_round_trip(store):
    src = Document(id_="source_node", text="Hello, world!")
    text = TextNode(id_="text_node", text="Hello, world!", embedding=[3.0, 4.0], metadata={"k": [1, "two"]},
                    relationships={NodeRelationship.SOURCE: src.as_related_node_info(),
                                   NodeRelationship.NEXT: RelatedNodeInfo(node_id="next_node")})
    image = ImageNode(id_="image_node", image="cG90YXRv", embedding=[1.0, 0.0])
    index = IndexNode(id_="index_node", text="Hello, world!", index_id="123", embedding=[0.0, 1.0],
                      obj=TextNode(text="inner content", id_="inner_node"))
    multi = Node(id_="multimedia_node", text_resource=MediaResource(text="Hello, world!"), embedding=[1.0, 1.0])
    assert store.add([text, image, index, multi]) == ["text_node", "image_node", "index_node", "multimedia_node"]
    got = {n.node_id: n for n in store.get_nodes(["text_node", "image_node", "index_node", "multimedia_node"])}
    t = got["text_node"]
    assert type(t) is TextNode and t.text == "Hello, world!" and t.metadata == {"k": [1, "two"]}
    assert t.ref_doc_id == "source_node" and t.relationships[NodeRelationship.NEXT].node_id == "next_node"
    assert t.embedding == pytest.approx([3.0, 4.0], rel=1e-6)          # cosine stores the unit vector + the norm
    assert type(got["image_node"]) is ImageNode and got["image_node"].image == "cG90YXRv"
    i = got["index_node"]
    assert type(i) is IndexNode and i.index_id == "123" and i.text == "Hello, world!" and i.obj.text == "inner content"
    m = got["multimedia_node"]
    assert type(m) is Node and m.text_resource.text == "Hello, world!"
    assert t.model_dump(exclude={"embedding"}) == text.model_dump(exclude={"embedding"})
    top = store.query(VectorStoreQuery(query_embedding=[3.0, 4.0], similarity_top_k=1))
    assert top.ids == ["text_node"] and top.nodes[0].text == "Hello, world!"


# -- indices/vector_store: VectorStoreIndex, its inserts, deletes and retrievers over the store -----------------
class MockEmbedding(BaseEmbedding):
    """upstream indices/vector_store/mock_services.py MockEmbedding: a 5-d one-hot per known text, the query at
    [0, 0, 1, 0, 0]; unknown texts get a small non-zero vector (vdb's cosine refuses all-zero vectors)."""

    @classmethod
    def class_name(cls) -> str:
        return "MockEmbedding"

    def _get_text_embedding(self, text: str) -> list[float]:
        hot = {"Hello world.": 0, "This is a test.": 1, "This is another test.": 2, "This is a test v2.": 3,
               "This is a test v3.": 4, "This is bar test.": 2, "Hello world backup.": 0}
        return [1.0 if i == hot[text] else 0.0 for i in range(5)] if text in hot else [0.1] * 5

    def _get_query_embedding(self, query: str) -> list[float]:
        return [0.0, 0.0, 1.0, 0.0, 0.0]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)


class LineSplitter(TextSplitter):
    """upstream's patch_token_text_splitter: one node per line."""

    def split_text(self, text: str) -> list[str]:
        return [t for t in text.split("\n") if t]


LINES = ["Hello world.", "This is a test.", "This is another test.", "This is a test v2."]
ONE_HOT = {t: [1.0 if i == j else 0.0 for i in range(5)] for j, t in enumerate(LINES + ["This is a test v3."])}


def _index(store, documents) -> VectorStoreIndex:
    return VectorStoreIndex.from_documents(documents, storage_context=StorageContext.from_defaults(vector_store=store),
                                           embed_model=MockEmbedding(), transformations=[LineSplitter()])


def _contents(store) -> set:
    return {(n.get_content(), tuple(round(x, 5) for x in n.embedding), n.ref_doc_id) for n in store.get_nodes()}


def test_build_simple(store):
    # upstream indices/vector_store/test_simple.py test_build_simple: each line a node with its one-hot embedding
    doc = Document(text="\n".join(LINES), id_="doc")
    _index(store, [doc])
    # upstream also reads index.ref_doc_info, which LlamaIndex refuses (NotImplementedError) for every store that
    # keeps text; the node's ref_doc_id carries the same fact
    assert _contents(store) == {(t, tuple(ONE_HOT[t]), "doc") for t in LINES}


def test_simple_insert(store):
    # upstream test_simple_insert (and test_simple_async test_simple_insertion below): insert after the build,
    # then an empty document, which makes no node
    index = _index(store, [Document(text="\n".join(LINES), id_="doc")])
    index.insert(Document(text="This is a test v3.", id_="v3"))
    index.insert(Document(text="", id_="empty"))
    assert {c[:2] for c in _contents(store)} == {(t, tuple(ONE_HOT[t])) for t in LINES + ["This is a test v3."]}


def _four(store) -> VectorStoreIndex:
    return _index(store, [Document(text=t, id_=f"test_id_{i}") for i, t in enumerate(LINES)])


def test_simple_delete(store):
    # upstream test_simple_delete: delete_ref_doc removes the document's nodes; a new document of the same id
    # comes back
    index = _four(store)
    index.delete_ref_doc("test_id_0")
    assert _contents(store) == {(t, tuple(ONE_HOT[t]), f"test_id_{i}") for i, t in enumerate(LINES) if i}
    index.insert(Document(text="Hello world backup.", id_="test_id_0"))
    want = {(t, tuple(ONE_HOT[t]), f"test_id_{i}") for i, t in enumerate(LINES) if i}
    assert _contents(store) == want | {("Hello world backup.", tuple(ONE_HOT["Hello world."]), "test_id_0")}


def test_delete_ref_doc_calls_vector_store_with_ref_doc_id_only(make_store):
    # upstream test_delete_ref_doc_calls_vector_store_with_ref_doc_id_only (sync and async)
    log: list[str] = []

    class Tracking(VdbLlamaVectorStore):
        def delete(self, ref_doc_id: str, **kwargs) -> None:
            log.append(ref_doc_id)
            super().delete(ref_doc_id, **kwargs)

    store = make_store()
    tracked = Tracking(db=store.client, collection=store.collection)
    index = _index(tracked, [Document(text="Hello world.", id_="my-doc-id"), Document(text="This is a test.")])
    index.delete_ref_doc("my-doc-id")
    asyncio.run(index.adelete_ref_doc("my-doc-id"))
    assert log == ["my-doc-id", "my-doc-id"] and [n.get_content() for n in store.get_nodes()] == ["This is a test."]


def test_async_insert_delete_update_refresh(store):
    # upstream test_simple_async.py: test_simple_insertion, test_simple_deletion, test_simple_update,
    # test_simple_refresh (checked through the store, which is the store of record when it keeps text)
    async def run():
        index = _four(store)
        await index.ainsert(Document(text="This is a test v3.", id_="v3"))
        assert len(store.get_nodes()) == 5
        await index.adelete_ref_doc("test_id_0")
        assert "Hello world." not in {n.get_content() for n in store.get_nodes()}
        await index.aupdate_ref_doc(Document(text="This is a test v1", id_="test_id_1"))
        await index.arefresh_ref_docs([Document(text="This is a test v2 v1", id_="test_id_3")])
        return {(n.get_content(), n.ref_doc_id) for n in await store.aget_nodes()}
    assert asyncio.run(run()) == {("This is a test v1", "test_id_1"), ("This is another test.", "test_id_2"),
                                  ("This is a test v2 v1", "test_id_3"), ("This is a test v3.", "v3")}


def test_simple_query_and_scores(store):
    # upstream test_retrievers.py test_simple_query, test_query_and_similarity_scores: the query's one-hot is
    # "This is another test."'s, from a retriever over an index made from the store alone
    _index(store, [Document(text="\n".join(LINES))])
    nodes = VectorStoreIndex.from_vector_store(store, embed_model=MockEmbedding()).as_retriever(
        similarity_top_k=1).retrieve(QueryBundle("What is?"))
    assert len(nodes) == 1 and nodes[0].node.get_content() == "This is another test."
    assert nodes[0].score == pytest.approx(1.0, abs=1e-6)


def test_simple_check_ids(store):
    # upstream test_retrievers.py test_simple_check_ids
    src = {NodeRelationship.SOURCE: RelatedNodeInfo(node_id="ref_doc_id_test")}
    nodes = [TextNode(text=t, id_=f"node{i + 1}", relationships=src) for i, t in enumerate(LINES)]
    index = VectorStoreIndex(nodes, storage_context=StorageContext.from_defaults(vector_store=store),
                             embed_model=MockEmbedding())
    top = index.as_retriever().retrieve(QueryBundle("What is?"))
    assert top[0].node.get_content() == "This is another test." and top[0].node.ref_doc_id == "ref_doc_id_test"
    assert top[0].node.node_id == "node3" and [n.node_id for n in store.get_nodes(["node3"])] == ["node3"]


def test_an_index_reopens_from_the_store(tmp_path, server):
    # upstream test_simple_insert_save / vector_stores test_from_persist_dir: what was indexed is there after the
    # store is closed and opened again (embedded: the same directory; a server: the same collection, a new client)
    for kw in ({"path": str(tmp_path / "reopen")}, {"address": server.target, "collection": "reopen"}):
        first = VdbLlamaVectorStore(**kw)
        _index(first, [Document(text="\n".join(LINES), id_="doc")])
        first.close()
        again = VdbLlamaVectorStore(**kw)
        top = VectorStoreIndex.from_vector_store(again, embed_model=MockEmbedding()).as_retriever(
            similarity_top_k=1).retrieve("What?")
        assert [n.node.get_content() for n in top] == ["This is another test."] and top[0].node.ref_doc_id == "doc"
        again.close()


def test_query_image_node(store):
    # upstream test_retrievers.py test_query_image_node: an ImageNode comes back as an ImageNode
    index = VectorStoreIndex.from_vector_store(store, embed_model=MockEmbedding())
    index.insert_nodes([ImageNode(image="potato", id_="img")])
    results = index.as_retriever().retrieve(QueryBundle("What is?"))
    assert len(results) == 1 and isinstance(results[0].node, ImageNode) and results[0].node.image == "potato"


# -- what upstream does not cover: modes, async, collisions, bad input ------------------------------------------
DOCS = ["the cat sat on the mat", "dogs chase cats", "a quick brown fox", "foxes and dogs in the field",
        "stars at night", "the night sky is full of stars", "fish swim in the sea"]


@pytest.fixture
def rag(store):
    """Texts in -> an index over the store, with metadata (kind, n, tags) to filter on."""
    docs = [Document(text=t, id_=f"d{i}", metadata={"n": i, "kind": "animal" if i < 4 else "sky" if i < 6 else "sea",
                                                     "tags": ["even"] if i % 2 == 0 else ["odd"]},
                     excluded_embed_metadata_keys=["n", "kind", "tags"])     # embed the text alone
            for i, t in enumerate(DOCS)]
    return VectorStoreIndex.from_documents(docs, storage_context=StorageContext.from_defaults(vector_store=store),
                                           embed_model=HashingEmbedding(64),
                                           transformations=[SentenceSplitter(chunk_size=64, chunk_overlap=0, tokenizer=str.split)])


def _docs(results) -> list[str]:
    return [r.node.ref_doc_id for r in results]


def test_end_to_end_retrievers_with_filters_and_modes(rag, store):
    index = VectorStoreIndex.from_vector_store(store, embed_model=HashingEmbedding(64))
    assert _docs(index.as_retriever(similarity_top_k=1).retrieve("fish swim in the sea")) == ["d6"]
    sky = MetadataFilters(filters=[F(key="kind", value="sky")])
    assert set(_docs(index.as_retriever(similarity_top_k=7, filters=sky).retrieve("stars"))) == {"d4", "d5"}
    either = MetadataFilters(filters=[F(key="n", operator=Op.GTE, value=5), F(key="tags", operator=Op.CONTAINS,
                                                                              value="odd")], condition=Cond.OR)
    assert set(_docs(index.as_retriever(similarity_top_k=7, filters=either).retrieve("dogs"))) == {"d1", "d3", "d5",
                                                                                                   "d6"}
    bm25 = index.as_retriever(similarity_top_k=3, vector_store_query_mode="text_search").retrieve("stars")
    assert set(_docs(bm25)) == {"d4", "d5"} and all(r.score > 0 for r in bm25)     # only texts with the word
    hybrid = index.as_retriever(similarity_top_k=2, vector_store_query_mode="hybrid").retrieve("night stars")
    assert set(_docs(hybrid)) == {"d4", "d5"}
    # alpha picks fusion="weighted" with LlamaIndex's convention (0: BM25 alone, 1: the vector alone): on
    # "sea fish" the hashing embedder's nearest is not the one text with the words
    def top(**kw):
        return _docs(index.as_retriever(similarity_top_k=1, **kw).retrieve("sea fish"))
    dense, text = top(), top(vector_store_query_mode="text_search")
    assert text == ["d6"] and dense != text
    assert top(vector_store_query_mode="hybrid", alpha=0.0) == text
    assert top(vector_store_query_mode="hybrid", alpha=1.0) == dense
    not_sea = MetadataFilters(filters=[F(key="kind", operator=Op.NE, value="sea")])
    assert "d6" not in _docs(index.as_retriever(similarity_top_k=7, vector_store_query_mode="hybrid", alpha=0.0,
                                                filters=not_sea).retrieve("sea fish"))
    sparse = store.query(VectorStoreQuery(query_str="quick fox", mode=Mode.SPARSE, similarity_top_k=1))
    assert [n.ref_doc_id for n in sparse.nodes] == ["d2"]
    # hybrid_top_k is how many a hybrid query returns, sparse_top_k how many a text query does (LlamaIndex's fields)
    emb = HashingEmbedding(64).get_query_embedding("night stars")
    assert len(store.query(VectorStoreQuery(query_str="night stars", query_embedding=emb, mode=Mode.HYBRID,
                                            similarity_top_k=4, hybrid_top_k=1)).ids) == 1
    assert len(store.query(VectorStoreQuery(query_str="the", mode=Mode.TEXT_SEARCH, similarity_top_k=1,
                                            sparse_top_k=3)).ids) == 3


def test_async_store_methods(filled):
    async def run():
        assert (await filled.aquery(q(k=1))).ids == [C]
        await filled.adelete("test-2")
        await filled.adelete_nodes([A])
        assert [n.node_id for n in await filled.aget_nodes([A, B, C])] == [B]
        assert await filled.async_add(_nodes()[:1]) == [A]
        await filled.aclear()
        return await filled.aget_nodes()
    assert asyncio.run(run()) == []


def test_mmr_prefers_diverse_nodes(store):
    store.add([TextNode(text="a", id_="a", embedding=[1.0, 0.0]), TextNode(text="a2", id_="a2", embedding=[1.0, 0.01]),
               TextNode(text="b", id_="b", embedding=[0.7, 0.7])])
    plain = store.query(VectorStoreQuery(query_embedding=[1.0, 0.1], similarity_top_k=2)).ids
    mmr = store.query(VectorStoreQuery(query_embedding=[1.0, 0.1], similarity_top_k=2, mode=Mode.MMR,
                                       mmr_threshold=0.3)).ids
    assert plain == ["a2", "a"] and mmr == ["a2", "b"]     # "a" is nearly "a2": MMR takes "b" instead


def test_get_nodes_by_ids_and_filters(filled):
    c = MetadataFilters(filters=[F(key="rank", value="c")])
    assert [n.node_id for n in filled.get_nodes([C, "missing", A])] == [C, A]       # the order asked
    assert [n.node_id for n in filled.get_nodes([A, B], filters=c)] == [B]
    assert sorted(n.node_id for n in filled.get_nodes(filters=c)) == sorted([B, C])
    assert filled.get_nodes([]) == []


def test_deletes_and_reads_by_filter_cover_every_page(make_store, monkeypatch):
    # vdb has no scan: filtered deletes are filtered searches, a page (common.SCAN_PAGE) at a time
    monkeypatch.setattr(common, "SCAN_PAGE", 40)
    store = make_store()
    n = 2 * common.SCAN_PAGE * 4 + 50           # the document "big" has three pages and a bit
    nodes = [TextNode(text=f"t{i}", id_=f"n{i}", embedding=[1.0, i / n], metadata={"i": i},
                      relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id="big" if i % 4 else "small")})
             for i in range(n)]
    store.add(nodes)
    assert len(store.get_nodes()) == n
    store.delete("big")
    left = store.get_nodes()
    assert sorted(x.node_id for x in left) == sorted(f"n{i}" for i in range(0, n, 4))
    store.delete_nodes(filters=MetadataFilters(filters=[F(key="i", operator=Op.LT, value=n // 2)]))
    assert sorted(x.node_id for x in store.get_nodes()) == sorted(f"n{i}" for i in range(0, n, 4) if i >= n // 2)


@pytest.mark.slow
def test_delete_by_document_past_the_exact_filter_path(tmp_path):
    # more matches than exact_filter_rows (4000) over a built index: the filtered search goes through the ANN index
    # (and its exact fallback); delete by document must still remove every node of it
    import numpy as np
    rng = np.random.default_rng(5)
    store = VdbLlamaVectorStore(path=str(tmp_path / "big"))
    vecs = rng.normal(size=(9000, 16))
    store.add([TextNode(text=f"t{i}", id_=f"n{i}", embedding=vecs[i].tolist(),
                        relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id="big" if i % 3 else "small")})
               for i in range(len(vecs))])
    store.client.flush(store.collection)
    store.delete("big")
    assert store.client.count(store.collection) == 3000
    assert {n.ref_doc_id for n in store.get_nodes()} == {"small"}
    store.close()


def test_a_hash_collision_is_refused(store, monkeypatch):
    monkeypatch.setattr(common, "record_id", lambda s: 12345)
    store.add([TextNode(text="one", id_="first", embedding=[1.0, 0.0])])
    with pytest.raises(vdb.AlreadyExistsError, match="first"):
        store.add([TextNode(text="two", id_="second", embedding=[0.0, 1.0])])
    assert [n.text for n in store.get_nodes(["first", "second"])] == ["one"]


def test_bad_input_gets_clear_errors(filled):
    with pytest.raises(vdb.InvalidArgumentError, match="no embedding"):
        filled.add([TextNode(text="x", id_="x")])
    with pytest.raises(vdb.InvalidArgumentError, match="zeros"):
        filled.add([TextNode(text="x", id_="x", embedding=[0.0, 0.0])])
    with pytest.raises(vdb.InvalidArgumentError, match="needs query_embedding"):
        filled.query(VectorStoreQuery(query_str="lorem", similarity_top_k=1))
    with pytest.raises(vdb.InvalidArgumentError, match="needs query_str"):
        filled.query(VectorStoreQuery(query_embedding=[1.0, 0.0], mode=Mode.HYBRID))
    with pytest.raises(vdb.InvalidArgumentError, match="ALL expects"):
        filled.query(q(MetadataFilters(filters=[F(key="quality", operator=Op.ALL, value="high")])))
    with pytest.raises(vdb.InvalidArgumentError):
        VdbLlamaVectorStore()
    assert len(filled.get_nodes()) == 3                    # nothing refused was written


def test_empty_store_answers_empty(store):
    assert store.query(q()).ids == [] and store.get_nodes() == [] and store.get_nodes(["x"]) == []
    store.delete("nothing")
    store.delete_nodes(["x"])
    store.clear()
