"""The same calls through the embedded engine and through the gRPC client give identical results."""
from __future__ import annotations

import numpy as np

import vdb
from running import Running


def _script(db, x, q):
    out = []
    db.create_collection("c", dim=x.shape[1], metric="cosine", bootstrap_rows=500)
    out.append(db.upsert("c", np.arange(2000), x[:2000], payloads=[{"k": i % 4, "t": ["a", "b"][i % 2]}
                                                                     for i in range(2000)]))
    out.append(db.count("c"))
    out.append(db.search("c", q, top_k=7, use_cache=False))
    out.append(db.search("c", q[0], top_k=3, use_cache=False))
    out.append(db.search("c", q, top_k=5, filter={"$or": [{"k": 1}, {"t": "a"}]}, use_cache=False))
    out.append(db.delete("c", np.arange(0, 2000, 7)))
    out.append(db.upsert("c", np.arange(5000, 5300), x[2000:2300]))
    db.flush("c")
    out.append(db.search("c", q, top_k=10, nprobe=8, use_cache=False))
    out.append([(r.id, r.payload, r.vector.tolist()) for r in db.get("c", [1, 7, 5001, 999_999])])
    out.append(db.count("c"))
    out.append(sorted(db.list_collections()))
    return out


def test_embedded_and_remote_agree(tmp_path):
    from vdb.inputs.synthetic import ClusteredMixture
    m = ClusteredMixture(24, 10, 2)
    x, q = m.sample(2300, 1), m.sample(25, 2)
    local = vdb.connect(tmp_path / "local", checkpoint_interval_s=3600)
    try:
        expect = _script(local, x, q)
    finally:
        local.close()
    r = Running(tmp_path / "remote", checkpoint_interval_s=3600)
    try:
        with r.client() as c:
            got = _script(c, x, q)
    finally:
        r.stop()
    assert len(got) == len(expect)
    for a, b in zip(expect, got):
        if isinstance(a, tuple):  # (ids, distances)
            assert np.array_equal(a[0], b[0])
            assert np.allclose(a[1], b[1], rtol=1e-6, atol=1e-6)
        else:
            assert a == b


def _protocol_methods():
    import inspect
    from vdb.api import VectorDB
    return {n: inspect.signature(f) for n, f in vars(VectorDB).items()
            if callable(f) and not n.startswith("_")}


def test_every_implementation_has_the_protocols_exact_signatures():
    """The embedded Database, the gRPC Client and the Router take the same arguments, with the same names,
    kinds and defaults, for every method of vdb.api.VectorDB."""
    import inspect
    from vdb.cluster.replicadb import ReplicaDB
    from vdb.cluster.routing import ReplicatedRouter
    from vdb.service.router import Router
    methods = _protocol_methods()
    assert {"upsert", "delete", "search", "get", "create_collection", "flush", "close"} <= set(methods)
    for cls in (vdb.Database, vdb.Client, Router, ReplicatedRouter, ReplicaDB):
        for name, want in methods.items():
            got = list(inspect.signature(getattr(cls, name)).parameters.values())
            expect = list(want.parameters.values())
            # an implementation may add keyword-only options with defaults after the interface's parameters
            extra = got[len(expect):]
            assert all(p.kind is p.KEYWORD_ONLY and p.default is not p.empty for p in extra), f"{cls.__name__}.{name}"
            assert [(p.name, p.kind, p.default) for p in got[:len(expect)]] == \
                   [(p.name, p.kind, p.default) for p in expect], f"{cls.__name__}.{name}"
            assert getattr(cls, name).__doc__, f"{cls.__name__}.{name} has no docstring"


def test_implementations_are_vector_dbs(tmp_path):
    local = vdb.connect(tmp_path / "d")
    try:
        with vdb.Client("127.0.0.1:1") as remote:  # a channel connects lazily: nothing is called here
            assert isinstance(local, vdb.VectorDB) and isinstance(remote, vdb.VectorDB)
    finally:
        local.close()
