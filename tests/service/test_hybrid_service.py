"""hybrid_search over gRPC (HybridSearch) and through the router: the same answers and errors as embedded."""
from __future__ import annotations

import grpc
import numpy as np
import pytest

import vdb
from running import Running
from vdb.service import convert
from vdb.service.router import ClusterConfig, create_router
from vdb.text.embed import HashingEmbedder
from vdb.v1 import vector_db_pb2 as pb
from vdb.v1 import vector_db_pb2_grpc as pb_grpc

EMB = HashingEmbedder(24)
WORDS = ["apple", "river", "stone", "cloud", "engine", "violin", "desert", "harbor", "lantern", "meadow"]


def _corpus(n=400):
    rng = np.random.default_rng(5)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 9)))) + f" tag{i}" for i in range(n)]
    return texts, EMB(texts)


def _script(db, texts, x):
    db.create_collection("h", dim=x.shape[1], metric="cosine", text_field="text", bootstrap_rows=200)
    db.create_collection("plain", dim=x.shape[1])
    db.upsert("h", np.arange(len(texts)), x, payloads=[{"text": t, "m": i % 3} for i, t in enumerate(texts)])
    out = []
    q = ["river stone", "violin harbor meadow", "tag17", "nothing here"]
    qv = EMB(q)
    out.append(db.hybrid_search("h", text=q, top_k=7))
    out.append(db.hybrid_search("h", text=q[0], top_k=5, filter={"m": 1}))
    out.append(db.hybrid_search("h", text=q, vector=qv, top_k=6, use_cache=False))
    out.append(db.hybrid_search("h", text=q[1], vector=qv[1], top_k=6, fusion="weighted", alpha=0.3, rrf_k=10,
                                candidates=20, use_cache=False))
    out.append(db.hybrid_search("h", vector=qv, top_k=4, use_cache=False))
    db.delete("h", [17])
    # ids only: BM25 statistics count a deleted document until tantivy's background commit and merges drop it
    out.append(db.hybrid_search("h", text="tag17 tag18", top_k=3).ids.tolist())
    for kw in (dict(name="plain", text="x"), dict(name="h", text="x", fusion="best"), dict(name="h", text="x", rrf_k=0),
               dict(name="h", text=5), dict(name="h")):
        with pytest.raises(vdb.VdbError) as e:
            db.hybrid_search(**kw)
        out.append(type(e.value).__name__)
    return out


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        if isinstance(x, tuple):
            assert np.allclose(x[1], y[1], rtol=1e-5, atol=1e-6), (x, y)
            # fused scores tie often (equal RRF sums): tied ids may come in either order, or either may be cut at k
            d = np.asarray(x[1], np.float64)
            tied = np.zeros(d.shape, bool)
            close = np.isclose(d[..., 1:], d[..., :-1], rtol=1e-5, atol=1e-6)
            tied[..., 1:] |= close
            tied[..., :-1] |= close
            tied[..., -1] = True  # the last kept may tie with the first one cut
            assert np.array_equal(np.asarray(x[0])[~tied], np.asarray(y[0])[~tied]), (x, y)
        else:
            assert x == y


def test_embedded_and_remote_hybrid_agree(tmp_path):
    texts, x = _corpus()
    local = vdb.connect(tmp_path / "local", checkpoint_interval_s=3600)
    try:
        expect = _script(local, texts, x)
    finally:
        local.close()
    assert expect[-5:] == ["FailedPreconditionError", "InvalidArgumentError", "InvalidArgumentError",
                           "InvalidArgumentError", "InvalidArgumentError"]
    assert expect[5] == [18, -1, -1]  # the deleted tag17 is gone at once
    r = Running(tmp_path / "remote", checkpoint_interval_s=3600, read_only_api_key="reader", api_key="admin")
    try:
        with r.client(api_key="admin") as c:
            _same(_script(c, texts, x), expect)
        with r.client(api_key="reader") as ro:  # a read-only key may search by text
            assert ro.hybrid_search("h", text="tag20", top_k=1).ids[0] == 20
        # a caller that sends no fusion and no rrf_k gets RRF with rrf_k 60 (the proto's defaults)
        stub = pb_grpc.VectorDBStub(grpc.insecure_channel(r.target))
        req = pb.HybridSearchRequest(collection="h", texts=["river stone"], queries=convert.to_vectors(EMB(["river stone"])),
                                     params=convert.search_params(6, use_cache=False))
        resp = stub.HybridSearch(req, metadata=(("authorization", "Bearer admin"),), timeout=10)
        ids, _, _ = convert.from_packed(resp.packed, 1, 6)
        assert np.array_equal(ids, expect[2].ids[:1])
    finally:
        r.stop()


def test_router_fuses_global_lists(tmp_path):
    texts, x = _corpus(600)
    shards = [Running(tmp_path / f"s{i}", checkpoint_interval_s=3600) for i in range(2)]
    router, port = create_router(ClusterConfig(shards=tuple(s.target for s in shards), timeout_s=10), port=0)
    router.start()
    single = vdb.connect(tmp_path / "single", checkpoint_interval_s=3600)
    try:
        with vdb.Client(f"127.0.0.1:{port}") as c:
            for db in (c, single):
                db.create_collection("h", dim=x.shape[1], metric="cosine", text_field="text")
                db.upsert("h", np.arange(600), x, payloads=[{"text": t} for t in texts])
            probe = [37, 150, 401, 599]
            tags = [f"tag{i}" for i in probe]
            got = c.hybrid_search("h", text=tags, top_k=3)
            assert got.ids[:, 0].tolist() == probe and (got.ids[:, 1] == -1).all()
            fused = c.hybrid_search("h", text=tags, vector=x[probe], top_k=5, use_cache=False)
            want = single.hybrid_search("h", text=tags, vector=x[probe], top_k=5, use_cache=False)
            assert fused.ids[:, 0].tolist() == want.ids[:, 0].tolist() == probe  # first in both lists
            assert np.allclose(fused.distances[:, 0], want.distances[:, 0])       # 2 / (60 + 1), globally ranked
            dense = c.hybrid_search("h", vector=x[5], top_k=3, use_cache=False)
            assert dense.ids[0] == 5
    finally:
        single.close()
        router.stop(0).wait()
        router.db.close()
        for s in shards:
            s.stop()
