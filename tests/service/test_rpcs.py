"""Every RPC and every error path, with its exact status code."""
from __future__ import annotations

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import vdb
from vdb.service import convert
from vdb.v1 import vector_db_pb2 as pb
from vdb.v1 import vector_db_pb2_grpc as pb_grpc

C = grpc.StatusCode


def test_every_rpc_round_trip(client, filled):
    assert client.list_collections() == ["c"]
    info = client.describe_collection("c")
    assert info["dim"] == 16 and info["metric"] == "l2" and info["count"] == 1500
    assert client.count("c") == 1500
    ids, d = client.search("c", filled[7], top_k=5)
    assert ids[0] == 7 and d[0] == pytest.approx(0, abs=1e-3) and len(ids) == 5
    ids, d = client.search("c", filled[:20], top_k=3)
    assert ids.shape == (20, 3) and (ids[:, 0] == np.arange(20)).all()
    res = client.search("c", filled[3], top_k=4, filter={"g": 0}, explain=True)
    assert all(i % 3 == 0 for i in res.ids) and res.explain["filter_matches"] == 500
    recs = client.get("c", [1, 2, 99_999])
    assert [r.id for r in recs] == [1, 2] and recs[0].payload == {"g": 1, "s": "v1"}
    assert np.allclose(recs[1].vector, filled[2])
    lsn = client.delete("c", [1])
    assert lsn > 0 and client.count("c") == 1499
    assert client.flush("c") >= lsn
    stats = client.stats("c")
    assert stats["count"] == 1499 and "wal" in stats and "maintenance" in stats
    client.drop_collection("c")
    assert client.list_collections() == []


def test_batch_search_packed_and_per_result_answers_agree(running, client, filled):
    """The client asks for packed arrays; a caller that does not (an older client) still gets one message per
    query, with the same ids and distances."""
    client.flush("c")  # nothing left for maintenance to move between the calls compared below
    stub = pb_grpc.VectorDBStub(grpc.insecure_channel(running.target))
    params = pb.SearchParams(top_k=4, explain=True)
    req = pb.BatchSearchRequest(collection="c", queries=convert.to_vectors(filled[:30]), params=params)
    per_result = stub.BatchSearch(req, timeout=10)
    assert len(per_result.results) == 30 and not per_result.HasField("packed")
    req.packed = True
    packed = stub.BatchSearch(req, timeout=10)
    assert not packed.results and packed.packed.top_k == 4 and packed.packed.explain.path
    ids, d, ex = convert.from_packed(packed.packed, 30, 4)
    old_ids, old_d, _ = convert.from_search_results(per_result.results, 4)
    assert np.array_equal(ids, old_ids) and np.array_equal(d, old_d)
    assert ex == convert.explain_dict(per_result.results[0].explain)
    res = client.search("c", filled[:30], top_k=4)
    assert np.array_equal(res.ids, ids) and res.explain is None


def test_malformed_packed_answer_is_data_loss():
    p = convert.packed_results(np.arange(6).reshape(2, 3), np.zeros((2, 3), np.float32), None)
    assert convert.from_packed(p, 2, 3)[0].tolist() == [[0, 1, 2], [3, 4, 5]]
    p.ids = p.ids[:-8]
    with pytest.raises(vdb.DataLossError, match="40 id bytes"):
        convert.from_packed(p, 2, 3)


def test_create_options_and_durability_travel(client):
    info = client.create_collection("d", dim=8, metric="ip", durability="batch", head_ratio=0.05)
    assert info["durability"] == "batch" and info["build_params"]["head_ratio"] == 0.05
    assert client.create_collection("d", dim=8, metric="ip", exist_ok=True)["name"] == "d"


@pytest.mark.parametrize("call, code", [
    (lambda c: c.upsert("c", [1], np.zeros((1, 15))), C.INVALID_ARGUMENT),
    (lambda c: c.upsert("c", [1], np.full((1, 16), np.nan)), C.INVALID_ARGUMENT),
    (lambda c: c.upsert("c", [1], np.full((1, 16), np.inf)), C.INVALID_ARGUMENT),
    (lambda c: c.upsert("c", [], np.zeros((0, 16))), C.INVALID_ARGUMENT),
    (lambda c: c.upsert("c", [4, 4], np.zeros((2, 16))), C.INVALID_ARGUMENT),
    (lambda c: c.upsert("c", [1, 2], np.zeros((1, 16))), C.INVALID_ARGUMENT),
    (lambda c: c.upsert("c", [2**63], np.zeros((1, 16))), C.INVALID_ARGUMENT),
    (lambda c: c.search("c", np.zeros(16), top_k=0), C.INVALID_ARGUMENT),
    (lambda c: c.search("c", np.zeros(16), top_k=10**7), C.INVALID_ARGUMENT),
    (lambda c: c.search("c", np.zeros(3), top_k=1), C.INVALID_ARGUMENT),
    (lambda c: c.search("c", np.zeros(16), filter={"$nope": 1}), C.INVALID_ARGUMENT),
    (lambda c: c.search("nope", np.zeros(16)), C.NOT_FOUND),
    (lambda c: c.count("nope"), C.NOT_FOUND),
    (lambda c: c.describe_collection("no/pe"), C.INVALID_ARGUMENT),
    (lambda c: c.create_collection("c", dim=16), C.ALREADY_EXISTS),
    (lambda c: c.create_collection("x", dim=16, metric="hamming"), C.INVALID_ARGUMENT),
    (lambda c: c.create_collection("x", dim=0), C.INVALID_ARGUMENT),
    (lambda c: c.create_collection("x", dim=4, durability="maybe"), C.INVALID_ARGUMENT),
    (lambda c: c.get("c", np.arange(20_001)), C.RESOURCE_EXHAUSTED),
    (lambda c: c.upsert("c", np.arange(70_000), np.zeros((70_000, 300))), C.RESOURCE_EXHAUSTED),
])
def test_errors_have_exact_status_codes_and_change_nothing(client, filled, call, code):
    with pytest.raises(vdb.VdbError) as e:
        call(client)
    assert e.value.code == code, str(e.value)
    assert str(e.value)
    assert client.count("c") == 1500 and client.list_collections() == ["c"]


def _raw(running, method: str, data: bytes):
    channel = grpc.insecure_channel(running.target)
    call = channel.unary_unary(f"/vdb.v1.VectorDB/{method}", request_serializer=lambda b: b,
                               response_deserializer=lambda b: b)
    try:
        return call(data, timeout=10)
    finally:
        channel.close()


@pytest.mark.parametrize("method", ["Search", "Upsert", "Get", "CreateCollection", "BatchSearch"])
def test_garbage_bytes_are_invalid_argument(running, client, filled, method):
    with pytest.raises(grpc.RpcError) as e:
        _raw(running, method, b"\xff\xfe\x00garbage\x12\x99")
    assert e.value.code() == C.INVALID_ARGUMENT
    assert client.count("c") == 1500


def test_malformed_vectors_are_invalid_argument(running, filled):
    stub = pb_grpc.VectorDBStub(grpc.insecure_channel(running.target))
    bad = [pb.SearchRequest(collection="c", query=pb.Vectors(dim=16, data=b"\0" * 10), params=pb.SearchParams(top_k=1)),
           pb.SearchRequest(collection="c", query=pb.Vectors(dim=0, data=b""), params=pb.SearchParams(top_k=1)),
           pb.SearchRequest(collection="c", query=pb.Vectors(dim=16, data=b"\0" * 128), params=pb.SearchParams(top_k=1)),
           pb.SearchRequest(collection="c", query=pb.Vectors(dim=16, data=b"\0" * 64),
                            params=pb.SearchParams(top_k=1, filter_json="{not json"))]
    for req in bad:
        with pytest.raises(grpc.RpcError) as e:
            stub.Search(req, timeout=10)
        assert e.value.code() == C.INVALID_ARGUMENT, e.value.details()


def test_oversized_message_is_resource_exhausted(tmp_path):
    from running import Running
    r = Running(tmp_path / "small", max_message_mb=1)
    try:
        with r.client() as c:
            c.create_collection("c", dim=64)
            with pytest.raises(vdb.ResourceExhaustedError):
                c.upsert("c", np.arange(8000), np.zeros((8000, 64)))
            assert c.count("c") == 0
            c.upsert_batched("c", np.arange(8000), np.ones((8000, 64)), batch_size=2000)
            assert c.count("c") == 8000
    finally:
        r.stop()


def test_expired_deadline_is_deadline_exceeded(running, filled):
    stub = pb_grpc.VectorDBStub(grpc.insecure_channel(running.target))
    req = pb.BatchSearchRequest(collection="c", queries=pb.Vectors(dim=16, data=np.zeros((2000, 16), "<f4").tobytes()),
                                params=pb.SearchParams(top_k=10, nprobe=64))
    with pytest.raises(grpc.RpcError) as e:
        stub.BatchSearch(req, timeout=0.0005)
    assert e.value.code() == C.DEADLINE_EXCEEDED


def test_health_and_reflection_are_on(running):
    channel = grpc.insecure_channel(running.target)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "vdb.v1.VectorDB"):
        assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == \
            health_pb2.HealthCheckResponse.SERVING
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert "vdb.v1.VectorDB" in names and "grpc.health.v1.Health" in names


def test_concurrent_searches_and_writes(client, filled):
    import threading
    errors = []

    def searcher():
        try:
            for i in range(40):
                ids, _ = client.search("c", filled[i], top_k=3)
                assert ids[0] == i
        except Exception as e:
            errors.append(e)

    def writer(t):
        try:
            for i in range(20):
                client.upsert("c", [10_000 + t * 100 + i], filled[i:i + 1] + 50)
        except Exception as e:
            errors.append(e)
    threads = [threading.Thread(target=searcher) for _ in range(3)] + \
              [threading.Thread(target=writer, args=(t,)) for t in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert client.count("c") == 1560


def test_metrics_endpoint_counts_rpcs_by_method_and_code(tmp_path):
    import socket
    import urllib.request
    from running import Running
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        mport = s.getsockname()[1]
    r = Running(tmp_path / "m", metrics_port=mport)
    try:
        with r.client() as c:
            c.create_collection("c", dim=4)
            c.upsert("c", [1], np.ones((1, 4)))
            c.search("c", np.ones(4), top_k=1)
            with pytest.raises(vdb.NotFoundError):
                c.count("zz")
        text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10).read().decode()
        assert 'vdb_requests_total{code="OK",method="Search"} 1.0' in text
        assert 'vdb_requests_total{code="NOT_FOUND",method="Count"} 1.0' in text
        assert 'vdb_vectors{collection="c"} 1.0' in text and "vdb_request_seconds_bucket" in text
        assert 'vdb_disk_bytes{collection="c",file="vectors.f32"}' in text  # disk per file (issue 13)
        assert 'vdb_dead_rows{collection="c"} 0.0' in text and 'vdb_uncheckpointed_lsns{collection="c"}' in text
        assert 'vdb_rows_relocated{collection="c"} 0.0' in text  # live rows moved out of sparse blocks
        assert 'vdb_vector_garbage_bytes{collection="c"} 0.0' in text
    finally:
        r.stop()
