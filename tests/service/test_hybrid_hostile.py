"""HybridSearch under hostile requests, found by review: its queries obey max_batch as BatchSearch's do, and its
answer is charged to the server's answer budget before any work (it was charged only once computed, so a request
of 5,000 texts x top_k 2,000 built a 120 MB answer, and the server's memory, before it was refused)."""
from __future__ import annotations

import grpc
import numpy as np
import pytest

import vdb
from running import Running
from vdb.config import load_settings
from vdb.service.server import create_server
from vdb.text.embed import HashingEmbedder
from vdb.v1 import vector_db_pb2 as pb

EMB = HashingEmbedder(16)


class Counting:
    """A VectorDB that counts the hybrid searches it is asked to run."""

    def __init__(self, db):
        self.db, self.hybrid_calls = db, 0

    def hybrid_search(self, *args, **kwargs):
        self.hybrid_calls += 1
        return self.db.hybrid_search(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.db, name)


def _fill(db, n=50):
    db.create_collection("c", dim=16, metric="cosine", text_field="text")
    db.upsert("c", np.arange(n), EMB([f"cat {i}" for i in range(n)]), payloads=[{"text": f"cat {i}"} for i in range(n)])


def test_a_hybrid_answer_over_the_budget_is_refused_before_any_work(tmp_path):
    inner = vdb.connect(tmp_path / "d", checkpoint_interval_s=3600)
    db = Counting(inner)
    server, port = create_server(db, load_settings({"port": 0, "max_inflight_answers_mb": 1}))
    server.start()
    try:
        with vdb.Client(f"127.0.0.1:{port}") as c:
            _fill(c)
            assert c.hybrid_search("c", text="cat 7", top_k=1).ids[0] == 7 and db.hybrid_calls == 1
            for kw in (dict(text=["cat"] * 200), dict(text=["cat"] * 200, vector=EMB(["cat"] * 200)),
                       dict(vector=EMB(["cat"] * 200))):
                with pytest.raises(vdb.ResourceExhaustedError, match="answer"):
                    c.hybrid_search("c", top_k=1000, **kw)   # 200 x 1000 x 12 bytes > 1 MiB
            assert db.hybrid_calls == 1  # refused before the engine was asked
    finally:
        server.stop(0).wait()
        inner.close()


def test_hybrid_queries_obey_max_batch_embedded_and_remote(tmp_path):
    r = Running(tmp_path / "d", checkpoint_interval_s=3600, max_batch=5)
    try:
        with r.client() as c:
            _fill(c, 5)
            for db in (r.db, c):
                assert db.hybrid_search("c", text=["cat"] * 5, top_k=1).ids.shape == (5, 1)
                for kw in (dict(text=["cat"] * 6), dict(text=["cat"] * 6, vector=EMB(["cat"] * 6))):
                    with pytest.raises(vdb.ResourceExhaustedError, match="max_batch=5"):
                        db.hybrid_search("c", top_k=1, **kw)
            stub = grpc.insecure_channel(r.target).unary_unary(
                "/vdb.v1.VectorDB/HybridSearch", request_serializer=pb.HybridSearchRequest.SerializeToString,
                response_deserializer=pb.HybridSearchResponse.FromString)
            with pytest.raises(grpc.RpcError) as e:
                stub(pb.HybridSearchRequest(collection="c", texts=["cat"] * 6, params=pb.SearchParams(top_k=1)),
                     timeout=10)
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        r.stop()


def test_bad_text_on_the_wire_is_invalid_argument(tmp_path):
    r = Running(tmp_path / "d", checkpoint_interval_s=3600)
    try:
        with r.client() as c:
            _fill(c)
            for db in (r.db, c):  # the same typed error embedded and through the client
                with pytest.raises(vdb.InvalidArgumentError, match="text 0: string is not valid Unicode"):
                    db.hybrid_search("c", text="cat \ud800", top_k=1)
            raw = grpc.insecure_channel(r.target).unary_unary("/vdb.v1.VectorDB/HybridSearch",
                                                              request_serializer=lambda b: b,
                                                              response_deserializer=lambda b: b)
            good = pb.HybridSearchRequest(collection="c", texts=["cat"], params=pb.SearchParams(top_k=1))
            assert raw(good.SerializeToString(), timeout=10)
            with pytest.raises(grpc.RpcError) as e:  # invalid UTF-8 in a string field
                raw(good.SerializeToString().replace(b"cat", b"c\xffa"), timeout=10)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert c.hybrid_search("c", text="cat 3", top_k=1).ids[0] == 3  # the server serves on
    finally:
        r.stop()
