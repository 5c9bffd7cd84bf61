"""The replicated router as a hostile client sees it: every bad request gets, through the router, the gRPC
status one node gives it (not UNAVAILABLE or INTERNAL), is not retried onto another replica as if the replica
had failed, and leaves the cluster as it was: same terms, every replica in sync, nothing written. Requests
are built by hand, as a foreign client sends them (the Python client refuses many of these itself)."""
from __future__ import annotations

import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

import vdb
from localcluster import LocalCluster
from vdb.config import load_settings
from vdb.service import convert
from vdb.service.server import create_server
from vdb.v1 import vector_db_pb2 as pb
from vdb.v1 import vector_db_pb2_grpc as pb_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))
from running import Running  # noqa: E402

DIM = 4


def _ones(n, dim=DIM):
    return convert.to_vectors(np.ones((n, dim), np.float32))


def _nan(n):
    return convert.to_vectors(np.full((n, DIM), np.nan, np.float32))


def _p(**kw):
    return pb.SearchParams(**{"top_k": 3, **kw})


def _upsert(**kw):
    return "Upsert", pb.UpsertRequest(**{"collection": "p", "ids": [500], "vectors": _ones(1), **kw})


def _search(**kw):
    return "Search", pb.SearchRequest(**{"collection": "p", "query": _ones(1), "params": _p(), **kw})


def _create(**kw):
    return "CreateCollection", pb.CreateCollectionRequest(**{"name": "z", "dim": DIM, **kw})


TOO_MANY = list(range(10_001))  # max_batch + 1
# (name, (rpc, request)); the expected status is whatever one node answers (most are refusals, a few are not)
CASES = [
    ("upsert-wrong-dim", _upsert(vectors=_ones(1, DIM + 1))),
    ("upsert-nan", _upsert(vectors=_nan(1))),
    ("upsert-id-2^63", _upsert(ids=[2 ** 63])),
    ("upsert-duplicate-ids", _upsert(ids=[5, 5], vectors=_ones(2))),
    ("upsert-ids-vectors-mismatch", _upsert(ids=[5, 6])),
    ("upsert-no-ids", _upsert(ids=[], vectors=_ones(0))),  # was INTERNAL: max() of no shard answers
    ("upsert-short-vector-bytes", _upsert(vectors=pb.Vectors(dim=DIM, data=b"\0" * 7))),
    ("upsert-bad-payload-json", _upsert(payloads_json=[b"{'a': 1}"])),
    ("upsert-payload-count-mismatch", _upsert(ids=[5, 6], vectors=_ones(2), payloads_json=[b"{}"])),
    ("upsert-unknown-collection", _upsert(collection="nope")),
    ("upsert-bad-collection-name", _upsert(collection="../x")),
    ("upsert-past-max-batch", _upsert(ids=TOO_MANY, vectors=_ones(len(TOO_MANY)))),  # was OK: split per shard
    ("upsert-oversized-message", _upsert(payloads_json=[b'{"s": "' + b"x" * (65 << 20) + b'"}'])),
    ("upsert-huge-payload", _upsert(payloads_json=[b'{"s": "' + b"x" * (10 << 20) + b'"}'])),
    ("delete-id-2^63", ("Delete", pb.DeleteRequest(collection="p", ids=[2 ** 63]))),
    ("delete-no-ids", ("Delete", pb.DeleteRequest(collection="p", ids=[]))),  # was INTERNAL
    ("delete-past-max-batch", ("Delete", pb.DeleteRequest(collection="p", ids=TOO_MANY))),
    ("delete-unknown-collection", ("Delete", pb.DeleteRequest(collection="nope", ids=[1]))),
    ("get-id-2^63", ("Get", pb.GetRequest(collection="p", ids=[2 ** 63]))),
    ("get-no-ids", ("Get", pb.GetRequest(collection="p", ids=[]))),
    ("get-past-max-batch", ("Get", pb.GetRequest(collection="p", ids=TOO_MANY))),  # was OK
    ("get-unknown-collection", ("Get", pb.GetRequest(collection="nope", ids=[1]))),
    ("search-wrong-dim", _search(query=_ones(1, DIM + 1))),
    ("search-nan", _search(query=_nan(1))),
    ("search-two-rows", _search(query=_ones(2))),
    ("search-no-query", ("Search", pb.SearchRequest(collection="p", params=_p()))),
    ("search-top-k-0", _search(params=_p(top_k=0))),
    ("search-top-k-8000", _search(params=_p(top_k=8000))),  # was INVALID_ARGUMENT: 8000 x 1.5 over-fetch
    ("search-top-k-max", _search(params=_p(top_k=10_000))),
    ("search-top-k-past-max", _search(params=_p(top_k=10_001))),
    ("search-top-k-4e9", _search(params=_p(top_k=4_000_000_000))),
    ("search-nprobe-4e9", _search(params=_p(nprobe=4_000_000_000))),
    ("search-rerank-k-4e9", _search(params=_p(rerank_k=4_000_000_000))),  # was INTERNAL (MemoryError)
    ("search-eps-nan", _search(params=_p(eps=float("nan")))),
    ("search-eps-negative", _search(params=_p(eps=-1.0))),
    ("search-filter-not-json", _search(params=_p(filter_json="{g:"))),
    ("search-filter-unknown-operator", _search(params=_p(filter_json='{"$bogus": 1}'))),
    ("search-filter-number-past-64-bits", _search(params=_p(filter_json='{"g": 1180591620717411303424}'))),
    ("search-unknown-collection", _search(collection="nope")),
    ("batch-wrong-dim", ("BatchSearch", pb.BatchSearchRequest(collection="p", queries=_ones(2, DIM + 1), params=_p()))),
    ("batch-past-max-batch", ("BatchSearch", pb.BatchSearchRequest(collection="p", queries=_ones(10_001),
                                                                   params=_p()))),
    ("hybrid-without-text-index", ("HybridSearch", pb.HybridSearchRequest(collection="p", texts=["a"], params=_p()))),
    ("hybrid-nothing", ("HybridSearch", pb.HybridSearchRequest(collection="p", params=_p()))),
    ("hybrid-vector-alpha-nan", ("HybridSearch", pb.HybridSearchRequest(collection="p", queries=_ones(1), params=_p(),
                                                                        fusion=2, alpha=float("nan")))),  # was OK
    ("hybrid-vector-candidates-past-max", ("HybridSearch", pb.HybridSearchRequest(
        collection="p", queries=_ones(1), params=_p(), candidates=20_000))),  # was OK
    ("count-unknown", ("Count", pb.CountRequest(collection="nope"))),
    ("count-bad-name", ("Count", pb.CountRequest(collection="a/b"))),
    ("describe-unknown", ("DescribeCollection", pb.DescribeCollectionRequest(name="nope"))),
    ("stats-unknown", ("Stats", pb.StatsRequest(collection="nope"))),
    ("flush-unknown", ("Flush", pb.FlushRequest(collection="nope"))),
    ("drop-unknown", ("DropCollection", pb.DropCollectionRequest(name="nope"))),
    ("create-bad-name", _create(name="../etc")),
    ("create-dim-0", _create(dim=0)),
    ("create-dim-1e9", _create(dim=1_000_000_000)),
    ("create-metric-99", _create(metric=99)),
    ("create-options-not-json", _create(options_json="{")),
    ("create-unknown-option", _create(options_json='{"bogus": 1}')),
    ("create-bad-option-value", _create(options_json='{"head_ratio": -1}')),
    ("create-existing", _create(name="p")),
    ("create-existing-other-dim-exist-ok", _create(name="p", dim=8, exist_ok=True)),
]


def _fill(db) -> None:
    db.create_collection("p", DIM, bootstrap_rows=40)
    x = np.random.default_rng(3).normal(size=(120, DIM)).astype(np.float32)
    db.upsert("p", np.arange(120), x, payloads=[{"g": i % 3} for i in range(120)])


def _stub(target):
    big = [("grpc.max_send_message_length", 100 << 20), ("grpc.max_receive_message_length", 100 << 20)]
    return pb_grpc.VectorDBStub(grpc.insecure_channel(target, options=big))


def _shape(cluster) -> list:
    """What a wrongly failed-over or wrongly dropped replica would change."""
    return [(sh["term"], sh["primary"], sorted(sh["in_sync"]), len(m["readers"]))
            for sh, m in zip(cluster.controller.shards, cluster.controller.shard_map()["shards"])]


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    single = Running(root / "single", checkpoint_interval_s=3600)
    _fill(single.db)
    cluster = LocalCluster(root / "cluster", shards=2, replicas=2)
    cluster.wait_in_sync()
    router = cluster.router()
    _fill(router)
    cluster.wait_in_sync()
    server, port = create_server(router, load_settings({"port": 0}))
    server.start()
    before = _shape(cluster)
    yield _stub(single.target), _stub(f"127.0.0.1:{port}"), cluster, router, before
    server.stop(0).wait()
    cluster.close()
    single.stop()


@pytest.mark.parametrize("rpc, request_", [c for _, c in CASES], ids=[n for n, _ in CASES])
def test_a_bad_request_gets_the_status_one_node_gives_it(both, rpc, request_):
    single, routed, cluster, router, before = both

    def status(stub):
        try:
            getattr(stub, rpc)(request_, timeout=30)
            return grpc.StatusCode.OK
        except grpc.RpcError as e:
            assert "\n" not in (e.details() or "")
            return e.code()

    count = router.count("p")
    alone, through = status(single), status(routed)
    assert through == alone, f"one node: {alone.name}, through the router: {through.name}"
    assert through not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE)
    assert _shape(cluster) == before, "a bad request changed a term, a primary or the in-sync set"
    assert router.count("p") == count and router.list_collections() == ["p"], "a refused request wrote"


def test_absurd_knobs_are_cut_to_what_the_index_holds(tmp_path):
    """Regression: rerank_k = 4e9 (any head index) was INTERNAL MemoryError, nprobe or ef_search past int32
    with an HNSW head index INTERNAL OverflowError. Knobs past what the index holds change nothing in the
    answer: it equals the exhaustive one."""
    x = np.random.default_rng(5).normal(size=(400, DIM)).astype(np.float32)
    with vdb.connect(tmp_path / "db") as db:
        for kind in ("flat", "hnsw"):
            db.create_collection(kind, DIM, bootstrap_rows=40, head_index=kind, checkpoint_interval_s=3600)
            db.upsert(kind, np.arange(400), x)
            db.flush(kind)
            heads = db.describe_collection(kind)["heads"]
            exhaustive = db.search(kind, x[:5], top_k=10, nprobe=heads, rerank_k=400, use_cache=False)
            for knobs in ({"rerank_k": 4_000_000_000}, {"nprobe": 4_000_000_000}, {"nprobe": 2 ** 40}):
                got = db.search(kind, x[:5], top_k=10, use_cache=False, **{"nprobe": heads, "rerank_k": 400, **knobs})
                np.testing.assert_array_equal(got.ids, exhaustive.ids)
            index = db.collection(kind).index
            ids, _ = index.search(x[:5], 10, nprobe=heads, rerank_k=400, ef_search=2 ** 40)
            np.testing.assert_array_equal(ids, exhaustive.ids)
