"""The poison matrix (issue 11.4): inputs that look ordinary but cannot be applied, stored or indexed.

Every poison is refused with INVALID_ARGUMENT before the WAL append, embedded and over gRPC (where the request is
built by hand, as a foreign client would send it: the Python client refuses most of these itself), and after it
the collection answers exactly as before: count, get, a filtered search, and again after a restart. The SIGKILL
half interleaves poison with acknowledged writes in a child that is then killed: after recovery every
acknowledged write is there, no refused one is, and filtered searches work.
"""
from __future__ import annotations

import json
import os
import signal
import time

import grpc
import numpy as np
import pytest

import vdb
from forkserver import describe, shared
from running import Running
from vdb.service import convert
from vdb.v1 import vector_db_pb2 as pb
from vdb.v1 import vector_db_pb2_grpc as pb_grpc

DIM = 4
DEEP = {"d": 0}
for _ in range(40):
    DEEP = {"d": DEEP}

# (name, the payload as a Python object for the embedded engine, its JSON text as a foreign client sends it)
POISON = [
    ("int-beyond-float", {"n": 10 ** 400}, '{"n": 1' + "0" * 400 + "}"),
    ("int-beyond-64-bits", {"n": 2 ** 64}, '{"n": 18446744073709551616}'),
    ("float-overflow", {"n": float("inf")}, '{"n": 1e400}'),
    ("nan", {"n": float("nan")}, '{"n": NaN}'),
    ("infinity-token", {"n": float("-inf")}, '{"n": -Infinity}'),
    ("dotted-key", {"a.b": 1}, '{"a.b": 1}'),
    ("lone-surrogate", {"s": "\ud800"}, '{"s": "\\ud800"}'),
    ("nested-too-deep", DEEP, json.dumps(DEEP)),
    ("not-an-object", [1, 2], "[1, 2]"),
    ("not-json", None, "{'n': 1}"),
]
EMBEDDED_ONLY = [
    ("non-string-key", {1: "x"}),
    ("bytes-value", {"b": b"\x00\x01"}),
    ("set-value", {"s": {1, 2}}),
    ("object-value", {"o": object()}),
]


def _fill(db) -> np.ndarray:
    db.create_collection("p", dim=DIM, bootstrap_rows=40)
    x = np.random.default_rng(3).normal(size=(120, DIM)).astype(np.float32)
    db.upsert("p", np.arange(120), x, payloads=[{"g": i % 3, "s": f"v{i}"} for i in range(120)])
    return x


def _answers(db, x) -> dict:
    res = db.search("p", x[:3], top_k=5, filter={"g": 1}, use_cache=False)
    return {"count": db.count("p"), "get": [(r.id, r.payload) for r in db.get("p", [0, 7, 999])],
            "filtered": res.ids.tolist()}


@pytest.mark.parametrize("payload", [p for _, p, _ in POISON if p is not None] + [p for _, p in EMBEDDED_ONLY],
                         ids=[n for n, p, _ in POISON if p is not None] + [n for n, _ in EMBEDDED_ONLY])
def test_poison_is_refused_embedded_and_changes_nothing(tmp_path, payload):
    db = vdb.connect(tmp_path / "d", checkpoint_interval_s=3600)
    try:
        x = _fill(db)
        before, lsn = _answers(db, x), db.stats("p")["wal"]["last_lsn"]
        with pytest.raises(vdb.InvalidArgumentError):
            db.upsert("p", [500], np.ones((1, DIM), np.float32), payloads=[payload])
        assert _answers(db, x) == before
        assert db.stats("p")["wal"]["last_lsn"] == lsn, "the refused write reached the WAL"
    finally:
        db.close()
    db = vdb.connect(tmp_path / "d", checkpoint_interval_s=3600)
    try:
        assert _answers(db, x) == before, "after a restart"
    finally:
        db.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    r = Running(tmp_path_factory.mktemp("poison") / "d", checkpoint_interval_s=3600)
    x = _fill(r.db)
    yield r, x
    r.stop()


WIRE_ONLY = [("invalid-utf8", b'{"s": "\xff\xfe"}'), ("two-objects", b'{"a": 1} {"b": 2}')]


@pytest.mark.parametrize("text", [t for _, _, t in POISON] + [t for _, t in WIRE_ONLY],
                         ids=[n for n, _, _ in POISON] + [n for n, _ in WIRE_ONLY])
def test_poison_over_grpc_is_invalid_argument_and_changes_nothing(served, text):
    r, x = served
    before, lsn = _answers(r.db, x), r.db.stats("p")["wal"]["last_lsn"]
    stub = pb_grpc.VectorDBStub(grpc.insecure_channel(r.target))
    req = pb.UpsertRequest(collection="p", ids=[500], vectors=convert.to_vectors(np.ones((1, DIM), np.float32)),
                           payloads_json=[text if isinstance(text, bytes) else text.encode()])
    with pytest.raises(grpc.RpcError) as e:
        stub.Upsert(req, timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    assert "\n" not in e.value.details()
    assert _answers(r.db, x) == before and r.db.stats("p")["wal"]["last_lsn"] == lsn
    with r.client() as c:  # and the server serves
        assert c.count("p") == before["count"]


def test_poison_between_acknowledged_writes_then_sigkill(tmp_path):
    fork = shared()
    log = tmp_path / "writer.log"
    pid = fork.spawn("poison_writer", tmp_path / "writer.json", path=str(tmp_path / "d"), log=str(log))
    deadline = time.monotonic() + 120
    while not (log.exists() and b'"done"' in log.read_bytes()):
        assert time.monotonic() < deadline, "the writer did not finish"
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    status = fork.reap(pid)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, describe(status, tmp_path / "w.json")
    events = [json.loads(line) for line in log.read_text().splitlines()]
    acked = [e["acked"] for e in events if "acked" in e]
    refused = [e["refused"] for e in events if "refused" in e]
    assert not [e for e in events if "poison_acked" in e], "a poison write was acknowledged"
    assert len(acked) == 40 and len(refused) == 20
    db = vdb.connect(tmp_path / "d", checkpoint_interval_s=3600)
    try:
        got = {r.id: r.payload for r in db.get("k", acked + refused)}
        assert set(got) == set(acked), "acknowledged writes lost or refused ones present"
        assert all(got[i] == {"i": i} for i in acked)
        hits = db.search("k", np.ones((1, 4), np.float32), top_k=10, filter={"i": {"$gte": 1000}})
        assert set(hits.ids[0][hits.ids[0] >= 0].tolist()) <= set(acked) and (hits.ids[0] >= 0).sum() == 10
    finally:
        db.close()


# ids, vectors, knobs and names: the same bad request through the embedded engine and the gRPC client gives the
# same typed error, and changes nothing
BAD_REQUESTS = [
    ("negative-id", lambda a: a.upsert("p", [-1], np.ones((1, DIM), np.float32)), vdb.InvalidArgumentError),
    ("id-beyond-63-bits", lambda a: a.upsert("p", [2 ** 63], np.ones((1, DIM), np.float32)),
     vdb.InvalidArgumentError),
    ("duplicate-ids", lambda a: a.upsert("p", [5, 5], np.ones((2, DIM), np.float32)), vdb.InvalidArgumentError),
    ("ids-vectors-mismatch", lambda a: a.upsert("p", [5, 6], np.ones((1, DIM), np.float32)),
     vdb.InvalidArgumentError),
    ("nan-vector", lambda a: a.upsert("p", [5], np.full((1, DIM), np.nan, np.float32)), vdb.InvalidArgumentError),
    ("inf-vector", lambda a: a.upsert("p", [5], np.full((1, DIM), np.inf, np.float32)), vdb.InvalidArgumentError),
    ("wrong-dim", lambda a: a.upsert("p", [5], np.ones((1, DIM + 1), np.float32)), vdb.InvalidArgumentError),
    ("nan-query", lambda a: a.search("p", np.full(DIM, np.nan), top_k=3), vdb.InvalidArgumentError),
    ("top-k-zero", lambda a: a.search("p", np.ones(DIM), top_k=0), vdb.InvalidArgumentError),
    ("nprobe-negative", lambda a: a.search("p", np.ones(DIM), top_k=3, nprobe=-1), vdb.InvalidArgumentError),
    ("eps-nan", lambda a: a.search("p", np.ones(DIM), top_k=3, eps=float("nan")), vdb.InvalidArgumentError),
    ("bad-filter", lambda a: a.search("p", np.ones(DIM), top_k=3, filter={"$bogus": 1}), vdb.InvalidArgumentError),
    ("filter-number-beyond-64-bits", lambda a: a.search("p", np.ones(DIM), top_k=3, filter={"g": 2 ** 70}),
     vdb.InvalidArgumentError),
    ("name-with-slash", lambda a: a.create_collection("../etc", dim=DIM), vdb.InvalidArgumentError),
    ("name-too-long", lambda a: a.create_collection("x" * 65, dim=DIM), vdb.InvalidArgumentError),
    ("unknown-collection", lambda a: a.count("nope"), vdb.NotFoundError),
    ("dim-zero", lambda a: a.create_collection("z", dim=0), vdb.InvalidArgumentError),
]


@pytest.mark.parametrize("call, error", [(c, e) for _, c, e in BAD_REQUESTS], ids=[n for n, _, _ in BAD_REQUESTS])
def test_bad_ids_vectors_knobs_and_names_embedded_and_remote(served, call, error):
    r, x = served
    before, lsn = _answers(r.db, x), r.db.stats("p")["wal"]["last_lsn"]
    with pytest.raises(error) as embedded:
        call(r.db)
    with r.client() as c, pytest.raises(error) as remote:
        call(c)
    assert embedded.value.code == remote.value.code and "\n" not in remote.value.message
    assert _answers(r.db, x) == before and r.db.stats("p")["wal"]["last_lsn"] == lsn
    assert r.db.list_collections() == ["p"]
