"""Precise errors (issue 11.9): every case the review found answering INTERNAL (or a raw Python error) now gets the
status that says what is wrong, embedded and over the wire; an unexpected error is logged with its traceback
while the client gets one line."""
from __future__ import annotations

import json
import logging

import grpc
import numpy as np
import pytest

import vdb
from running import Running
from vdb.service import convert
from vdb.v1 import vector_db_pb2 as pb


@pytest.fixture
def server(tmp_path):
    r = Running(tmp_path / "data", checkpoint_interval_s=3600)
    with r.client() as c:
        c.create_collection("empty", dim=4)
        c.create_collection("c", dim=4)
        c.upsert("c", np.arange(20), np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32))
    yield r
    r.stop()


def _raw(target, method, request):
    with grpc.insecure_channel(target) as ch:
        rpc = ch.unary_unary(f"/vdb.v1.VectorDB/{method}", request_serializer=lambda m: m.SerializeToString(),
                             response_deserializer=lambda b: b)
        try:
            rpc(request, timeout=30)
            return grpc.StatusCode.OK, ""
        except grpc.RpcError as e:
            return e.code(), e.details()


def test_a_deeply_nested_filter_is_invalid_argument(server):
    deep = '{"$not":' * 10_000 + '{"a":1}' + "}" * 10_000
    params = convert.search_params(3)
    params.filter_json = deep
    code, details = _raw(server.target, "Search", pb.SearchRequest(
        collection="c", query=convert.to_vectors(np.zeros((1, 4), np.float32)), params=params))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "\n" not in details


def test_a_deeply_nested_payload_is_invalid_argument(server):
    deep = '{"a":' * 10_000 + "1" + "}" * 10_000
    code, _ = _raw(server.target, "Upsert", pb.UpsertRequest(
        collection="c", ids=[1], vectors=convert.to_vectors(np.zeros((1, 4), np.float32)), payloads_json=[deep.encode()]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    with server.client() as c:
        with pytest.raises(vdb.InvalidArgumentError, match="nested deeper"):
            nested = {"a": 1}
            for _ in range(100):
                nested = {"x": nested}
            c.upsert("c", [1], np.zeros((1, 4)), payloads=[nested])


def test_a_write_over_the_wal_record_limit_is_resource_exhausted(tmp_path, monkeypatch):
    import vdb.engine.collection as collection
    monkeypatch.setattr(collection, "WAL_RECORD_LIMIT", 64 << 10)  # the real limit is 256 MiB: too big to test
    with vdb.connect(tmp_path / "d") as db:
        db.create_collection("c", dim=64)
        with pytest.raises(vdb.ResourceExhaustedError, match="split it"):
            db.upsert("c", np.arange(1000), np.zeros((1000, 64), np.float32))
        assert db.count("c") == 0
        db.upsert("c", np.arange(10), np.zeros((10, 64), np.float32))


def test_a_garbled_catalog_is_data_loss_naming_the_file(tmp_path):
    with vdb.connect(tmp_path / "d") as db:
        db.create_collection("c", dim=4)
    (tmp_path / "d" / "catalog.json").write_text('{"collections": {"c": {"pa')
    with pytest.raises(vdb.DataLossError, match="catalog.json"):
        vdb.connect(tmp_path / "d")


def test_a_catalog_with_a_flipped_byte_is_data_loss(tmp_path):
    with vdb.connect(tmp_path / "d") as db:
        db.create_collection("abc", dim=4)
    path = tmp_path / "d" / "catalog.json"
    doc = json.loads(path.read_text())
    doc["collections"]["abd"] = doc["collections"].pop("abc")  # still valid JSON, names another collection
    path.write_text(json.dumps(doc))
    with pytest.raises(vdb.DataLossError, match="checksum"):
        vdb.connect(tmp_path / "d")


def test_searching_a_new_empty_collection_returns_no_results(server):
    with server.client() as c:
        res = c.search("empty", np.zeros((2, 4), np.float32), top_k=3)
        assert (res.ids == -1).all() and np.isinf(res.distances).all()
        assert (c.search("empty", np.zeros(4), top_k=3, filter={"a": 1}).ids == -1).all()


@pytest.mark.parametrize("knobs", [dict(eps=float("nan")), dict(nprobe=True), dict(nprobe=2.5), dict(eps="wide"),
                                   dict(rerank_k=-1), dict(nprobe=-1)])
def test_bad_knobs_are_invalid_argument_embedded_and_remote(server, knobs):
    with server.client() as c:
        with pytest.raises(vdb.InvalidArgumentError):
            c.search("c", np.zeros(4), top_k=3, **knobs)
    with pytest.raises(vdb.InvalidArgumentError):
        server.db.search("c", np.zeros(4), top_k=3, **knobs)


def test_the_client_raises_typed_errors_for_bad_arguments(server):
    with server.client() as c:
        for bad in (lambda: c.upsert(123, [1], np.zeros((1, 4))), lambda: c.search("c", np.zeros(4), top_k="x"),
                    lambda: c.upsert("c", [1], np.zeros((1, 4)), payloads=[{"a": object()}]),
                    lambda: c.get("c", ["x"]), lambda: c.delete("c", [[1, 2]])):
            with pytest.raises(vdb.InvalidArgumentError):
                bad()
        assert c.count("c") == 20


def test_an_unexpected_error_is_logged_with_its_traceback_and_the_server_stays_up(server, caplog, monkeypatch):
    def broken(name):
        raise RuntimeError("a bug\nwith a second line")
    monkeypatch.setattr(server.db, "count", broken)
    with caplog.at_level(logging.ERROR, logger="vdb.service.server"):
        with server.client() as c:
            with pytest.raises(vdb.InternalError) as e:
                c.count("c")
            assert "\n" not in str(e.value) and "a bug" in str(e.value)
            assert c.list_collections() == ["c", "empty"]
    assert "Traceback" in caplog.text and "RuntimeError" in caplog.text
