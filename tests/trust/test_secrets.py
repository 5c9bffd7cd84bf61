"""The auth matrix and the secrets scan (issue 11.1): every RPC with no key, a wrong key, the read-only key and the
admin key gets exactly the status it should, and no response, error message, log line or metrics page ever
contains a key."""
from __future__ import annotations

import logging
import socket
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from running import Running
from vdb.service import convert
from vdb.service.auth import READ_METHODS
from vdb.service.server import METHODS
from vdb.v1 import vector_db_pb2 as pb

ADMIN, READER = "ADMIN-key-7f3a9c", "READER-key-b21e4d"
SECRETS = (ADMIN, READER)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(method: str):
    """A valid request for every RPC, against collection "c" (Drop and Create use their own names)."""
    q = convert.to_vectors(np.ones((2, 4), np.float32))
    return {
        "CreateCollection": pb.CreateCollectionRequest(name="made", dim=4, metric=pb.METRIC_L2),
        "ListCollections": pb.ListCollectionsRequest(),
        "DescribeCollection": pb.DescribeCollectionRequest(name="c"),
        "DropCollection": pb.DropCollectionRequest(name="gone"),
        "Upsert": pb.UpsertRequest(collection="c", ids=[7], vectors=convert.to_vectors(np.ones((1, 4))),
                                   payloads_json=[b'{"k": 1}']),
        "Delete": pb.DeleteRequest(collection="c", ids=[8]),
        "Get": pb.GetRequest(collection="c", ids=[1, 2]),
        "Search": pb.SearchRequest(collection="c", query=convert.to_vectors(np.ones((1, 4))),
                                   params=convert.search_params(3, explain=True)),
        "BatchSearch": pb.BatchSearchRequest(collection="c", queries=q, params=convert.search_params(3), packed=True),
        "Count": pb.CountRequest(collection="c"),
        "Flush": pb.FlushRequest(collection="c"),
        "Stats": pb.StatsRequest(collection="c"),
        "HybridSearch": pb.HybridSearchRequest(collection="c", texts=["common"], params=convert.search_params(3)),
    }[method]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    r = Running(tmp_path_factory.mktemp("sec") / "data", api_key=ADMIN, read_only_api_key=READER,
                metrics_port=_free_port(), checkpoint_interval_s=3600)
    with r.client(api_key=ADMIN) as c:
        c.create_collection("c", dim=4, text_field="text")
        c.upsert("c", np.arange(50), np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32),
                 payloads=[{"i": i, "text": f"word{i % 5} common"} for i in range(50)])
    yield r
    r.stop()


def _call(target: str, method: str, key: str | None):
    """(status code, response bytes or error details) of one raw call."""
    channel = grpc.insecure_channel(target)
    try:
        rpc = channel.unary_unary(f"/vdb.v1.VectorDB/{method}", request_serializer=lambda m: m.SerializeToString(),
                                  response_deserializer=lambda b: b)
        md = (("authorization", f"Bearer {key}"),) if key is not None else ()
        try:
            return grpc.StatusCode.OK, rpc(_request(method), metadata=md, timeout=30)
        except grpc.RpcError as e:
            return e.code(), (e.details() or "").encode()
    finally:
        channel.close()


def _prepare(server, method: str) -> None:
    """Make the call's target exist (or not) so that an allowed call succeeds."""
    with server.client(api_key=ADMIN) as c:
        if method == "DropCollection" and "gone" not in c.list_collections():
            c.create_collection("gone", dim=4)
        if method == "CreateCollection" and "made" in c.list_collections():
            c.drop_collection("made")


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("who", ["none", "wrong", "reader", "admin"])
def test_every_rpc_with_every_key(server, method, who, caplog):
    key = {"none": None, "wrong": "Bearer-but-wrong", "reader": READER, "admin": ADMIN}[who]
    _prepare(server, method)
    with caplog.at_level(logging.DEBUG):
        code, body = _call(server.target, method, key)
    if who in ("none", "wrong"):
        assert code == grpc.StatusCode.UNAUTHENTICATED, (method, who, code)
    elif who == "reader" and method not in READ_METHODS:
        assert code == grpc.StatusCode.PERMISSION_DENIED, (method, code)
    else:
        assert code == grpc.StatusCode.OK, (method, who, code, body[:200])
    for secret in SECRETS:  # nothing the server says, in answers, errors or logs, holds a key
        assert secret.encode() not in body, (method, who)
        assert secret not in caplog.text, (method, who)


def test_health_needs_no_key_and_says_nothing_secret(server):
    with grpc.insecure_channel(server.target) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    assert not any(s.encode() in resp.SerializeToString() for s in SECRETS)


def test_stats_show_collection_settings_only(server):
    with server.client(api_key=READER) as c:
        stats = c.stats("c")
    assert "api_key" not in stats["settings"] and "read_only_api_key" not in stats["settings"]
    assert not any(s in repr(stats) for s in SECRETS)


def test_metrics_need_a_key_and_never_show_one(server):
    url = f"http://127.0.0.1:{server.server.metrics_port}/metrics"
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url, timeout=10)
    assert e.value.code == 401
    for key in (READER, ADMIN):
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
        page = urllib.request.urlopen(req, timeout=10).read().decode()
        assert "vdb_requests" in page and 'collection="c"' in page
        assert not any(s in page for s in SECRETS)


def test_metrics_bind_loopback_by_default(server):
    import vdb.config
    assert vdb.config.BY_NAME["metrics_host"].default == "127.0.0.1"
    assert server.server.metrics.bound_host == "127.0.0.1"


def test_a_bad_secret_setting_is_never_echoed():
    import vdb.config as config
    from vdb.errors import InvalidArgumentError
    secret = config.Setting("api_key", "", "help", check=lambda v: False, secret=True)
    with pytest.raises(InvalidArgumentError) as e:
        config._coerce(secret, ADMIN)
    assert ADMIN not in str(e.value) and "api_key" in str(e.value)
    assert config.redacted({"api_key": ADMIN, "port": 1}) == {"api_key": "<redacted>", "port": 1}
