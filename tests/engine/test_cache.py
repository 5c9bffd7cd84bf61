"""The semantic cache: certified hits equal the uncached answer, deleted ids never come back, a new nearer
vector is never missed, and the counters, budget and size bound behave."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vdb

EXACT = dict(nprobe=100_000, eps=1e9, rerank_k=5_000)  # makes the index exact, so certificates are theorems


def _db(path, metric="l2", **kw):
    db = vdb.connect(path, cache_mb=kw.pop("cache_mb", 16), cache_shadow_rate=kw.pop("cache_shadow_rate", 0.0),
                     checkpoint_interval_s=3600, **kw)
    db.create_collection("c", dim=8, metric=metric, bootstrap_rows=200, split_limit=40)
    return db


def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(7).normal(0, 6, (5, 8))
    return (centres[rng.integers(0, 5, n)] + rng.normal(0, 1, (n, 8))).astype(np.float32)


ops = st.lists(st.one_of(
    st.tuples(st.just("query"), st.integers(0, 30), st.floats(0, 0.3)),
    st.tuples(st.just("upsert"), st.integers(0, 10**6), st.integers(1, 30)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 30)),
    st.tuples(st.just("flush"), st.just(0), st.just(0)),
), min_size=5, max_size=40)


@pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(stream=ops)
def test_every_served_answer_equals_the_uncached_one(tmp_path_factory, metric, stream):
    db = _db(tmp_path_factory.mktemp("cache") / "d", metric)
    try:
        x = _data(600)
        db.upsert("c", np.arange(600), x)
        db.flush("c")
        base_q = _data(31, seed=5)
        next_id, cached_searches = 1000, 0
        for op, a, b in stream:
            if op == "query":
                cached_searches += 1
                q = base_q[a] + np.random.default_rng(a).normal(0, b, 8).astype(np.float32)
                served = db.search("c", q, top_k=5, explain=True, **EXACT)
                truth = db.search("c", q, top_k=5, use_cache=False, **EXACT)
                assert np.array_equal(served.ids, truth.ids), served.explain
                assert np.allclose(served.distances, truth.distances, rtol=1e-4, atol=1e-4)
            elif op == "upsert":
                ids = np.arange(next_id, next_id + b)
                next_id += b
                db.upsert("c", ids, _data(b, seed=a))
            elif op == "delete":
                db.delete("c", np.random.default_rng(a).choice(600, b, replace=False))
            else:
                db.flush("c")
        st_ = db.stats("c")["cache"]  # every cached search is one lookup, and each lookup ends one way
        assert st_["lookups"] == cached_searches == st_["hits"] + st_["near_hits"] + st_["misses"]
        assert st_["near_hits"] == 0  # no error budget: only certified hits are served
    finally:
        db.close()


def test_repeated_queries_hit_and_deleted_ids_are_never_served(tmp_path):
    db = _db(tmp_path / "d")
    try:
        x = _data(1000)
        db.upsert("c", np.arange(1000), x)
        db.flush("c")
        q = x[10] + 0.01
        first = db.search("c", q, top_k=5, explain=True)
        assert first.explain["cache"] == "miss"
        second = db.search("c", q + 0.0005, top_k=5, explain=True)  # back again: admitted, entry filled
        assert second.explain["cache"] == "miss" and db.stats("c")["cache"]["admitted"] == 1
        again = db.search("c", q + 0.001, top_k=5, explain=True)
        assert again.explain["cache"] == "hit" and np.array_equal(first.ids, again.ids)
        db.delete("c", first.ids[:2])
        after = db.search("c", q, top_k=5, explain=True)
        assert not set(first.ids[:2]) & set(after.ids.tolist())
        assert np.array_equal(after.ids, db.search("c", q, top_k=5, use_cache=False).ids)
        db.flush("c")
        assert not set(first.ids[:2]) & set(db.search("c", q, top_k=5).ids.tolist())
    finally:
        db.close()


def test_a_new_nearer_vector_is_never_missed(tmp_path):
    db = _db(tmp_path / "d")
    try:
        x = _data(1000)
        db.upsert("c", np.arange(1000), x)
        db.flush("c")
        q = x[3] + 0.2
        db.search("c", q, top_k=5)
        db.search("c", q, top_k=5)
        assert db.search("c", q, top_k=5, explain=True).explain["cache"] == "hit"
        db.upsert("c", [5000], q[None, :])  # exactly at the query: must come first, before and after indexing
        assert db.search("c", q, top_k=5).ids[0] == 5000
        db.flush("c")
        res = db.search("c", q + 1e-4, top_k=5, explain=True)
        assert res.ids[0] == 5000
        assert db.stats("c")["cache"]["invalidations"] >= 1
    finally:
        db.close()


def test_use_cache_false_bypasses_and_counters_add_up(tmp_path):
    db = _db(tmp_path / "d", cache_shadow_rate=1.0)
    try:
        x = _data(800)
        db.upsert("c", np.arange(800), x)
        db.flush("c")
        for i in range(20):
            db.search("c", x[i % 5] + 0.0001 * i, top_k=4)
        db.search("c", x[0], top_k=4, use_cache=False)
        s = db.stats("c")["cache"]
        assert s["lookups"] == 20 and s["hits"] + s["near_hits"] + s["misses"] == 20 and s["hits"] >= 10
        assert s["admitted"] == 5
        assert s["shadow_checks"] == s["hits"] + s["near_hits"] and s["false_hits"] == 0
    finally:
        db.close()


def test_size_bound_evicts_least_recently_used(tmp_path):
    db = _db(tmp_path / "d", cache_mb=0.02)  # room for a handful of entries
    try:
        x = _data(800)
        db.upsert("c", np.arange(800), x)
        db.flush("c")
        for i in range(100):
            db.search("c", x[i], top_k=4)
            db.search("c", x[i], top_k=4)
        s = db.stats("c")["cache"]
        assert s["bytes"] <= s["max_bytes"] and s["evictions"] > 0 and 0 < s["entries"] < 100
    finally:
        db.close()


def test_error_budget_serves_near_hits_counted_apart(tmp_path):
    strict = _db(tmp_path / "a")
    loose = _db(tmp_path / "b", cache_error_budget=0.5)
    try:
        x = _data(800)
        for db in (strict, loose):
            db.upsert("c", np.arange(800), x)
            db.flush("c")
            for i in range(30):
                db.search("c", x[i], top_k=10)
                db.search("c", x[i], top_k=10)
            for i in range(30):
                db.search("c", x[i] + 0.3, top_k=10)
        assert strict.stats("c")["cache"]["near_hits"] == 0
        assert loose.stats("c")["cache"]["near_hits"] > 0
    finally:
        strict.close()
        loose.close()


def test_filtered_searches_are_cached_per_filter(tmp_path):
    db = _db(tmp_path / "d")
    try:
        x = _data(900)
        db.upsert("c", np.arange(900), x, payloads=[{"p": i % 3} for i in range(900)])
        db.flush("c")
        for f in ({"p": 0}, {"p": 1}):
            a = db.search("c", x[5], top_k=5, filter=f, explain=True)
            db.search("c", x[5] + 0.0005, top_k=5, filter=f)
            b = db.search("c", x[5] + 0.001, top_k=5, filter=f, explain=True)
            assert b.explain["cache"] == "hit" and all(i % 3 == f["p"] for i in b.ids)
            assert np.array_equal(a.ids, b.ids)
        db.upsert("c", [9999], x[5:6], payloads=[{"p": 0}])
        assert db.search("c", x[5], top_k=5, filter={"p": 0}).ids[0] == 9999
        assert 9999 not in db.search("c", x[5], top_k=5, filter={"p": 1}).ids
    finally:
        db.close()
