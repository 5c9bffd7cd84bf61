"""Fuzzing the wire: random bytes and random (often invalid) messages to every RPC.

The server must answer each with a precise status (never INTERNAL or UNKNOWN), stay healthy, and leave a
collection the fuzzer does not address exactly as it was.
"""
from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vdb.service.server import METHODS
from vdb.v1 import vector_db_pb2 as pb

BAD_CODES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
names = st.one_of(st.sampled_from(["fuzz", "nope", "", "../x", "a" * 70, "ok-1"]), st.text(max_size=12))
floats = st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), max_size=40)
json_text = st.one_of(st.just(""), st.text(max_size=30),
                      st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text(max_size=4)),
                                   lambda c: st.one_of(st.lists(c, max_size=3),
                                                       st.dictionaries(st.text(max_size=5), c, max_size=3)),
                                   max_leaves=8).map(json.dumps))


def vectors(dim, values):
    return pb.Vectors(dim=dim, data=np.asarray(values, "<f4").tobytes())


params = st.builds(pb.SearchParams, top_k=st.integers(0, 2**32 - 1), nprobe=st.integers(0, 5000),
                   rerank_k=st.integers(0, 5000), filter_json=json_text, explain=st.booleans())
requests = st.one_of(
    st.builds(lambda n, d, v, p: ("Search", pb.SearchRequest(collection=n, query=vectors(d, v), params=p)),
              names, st.integers(0, 40), floats, params),
    st.builds(lambda n, d, v, p: ("BatchSearch", pb.BatchSearchRequest(collection=n, queries=vectors(d, v), params=p)),
              names, st.integers(0, 40), floats, params),
    st.builds(lambda n, ids, d, v, pl: ("Upsert", pb.UpsertRequest(collection=n, ids=ids, vectors=vectors(d, v),
                                                                    payloads_json=[p.encode() for p in pl])),
              names, st.lists(st.integers(0, 2**64 - 1), max_size=6), st.integers(0, 8), floats,
              st.lists(json_text, max_size=6)),
    st.builds(lambda n, ids: ("Delete", pb.DeleteRequest(collection=n, ids=ids)),
              names, st.lists(st.integers(0, 2**64 - 1), max_size=6)),
    st.builds(lambda n, ids: ("Get", pb.GetRequest(collection=n, ids=ids)), names,
              st.lists(st.integers(0, 2**64 - 1), max_size=6)),
    st.builds(lambda n, d, m, o: ("CreateCollection", pb.CreateCollectionRequest(name=n, dim=d, metric=m,
                                                                                 options_json=o)),
              names, st.integers(0, 70000), st.integers(0, 5), json_text),
    st.builds(lambda n: ("DropCollection", pb.DropCollectionRequest(name=n)), names.filter(lambda n: n != "keep")),
    st.builds(lambda n: ("Stats", pb.StatsRequest(collection=n)), names),
    st.builds(lambda m, b: (m, b), st.sampled_from(sorted(METHODS)), st.binary(max_size=64)),
)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    from running import Running
    r = Running(tmp_path_factory.mktemp("fuzz") / "data", checkpoint_interval_s=3600)
    with r.client() as c:
        c.create_collection("keep", dim=8)
        c.upsert("keep", np.arange(300), np.random.default_rng(0).normal(size=(300, 8)))
        c.create_collection("fuzz", dim=8)
        before = c.search("keep", np.ones(8), top_k=10)
    channel = grpc.insecure_channel(r.target)
    yield r, channel, before
    channel.close()
    r.stop()


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(requests)
def test_random_requests_get_precise_answers(fuzz_server, item):
    r, channel, _ = fuzz_server
    method, message = item
    if method in ("DropCollection",) and getattr(message, "name", "") == "keep":
        return
    data = message if isinstance(message, bytes) else message.SerializeToString()
    call = channel.unary_unary(f"/vdb.v1.VectorDB/{method}", request_serializer=lambda b: b,
                               response_deserializer=lambda b: b)
    try:
        call(data, timeout=30)
    except grpc.RpcError as e:
        assert e.code() not in BAD_CODES, f"{method}: {e.code()} {e.details()}"


def test_after_fuzzing_the_server_is_healthy_and_untouched_data_is_intact(fuzz_server):
    r, channel, before = fuzz_server
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    with r.client() as c:
        assert c.count("keep") == 300
        after = c.search("keep", np.ones(8), top_k=10)
        assert np.array_equal(before[0], after[0])
        assert r.db.check("keep")[0]["ok"]
