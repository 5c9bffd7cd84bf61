"""Hybrid search beside the semantic cache: an answer served through the cache is the answer without it, before and
after writes that change texts, filter fields and membership (found by review: tied dense distances, which
duplicate documents have, were ordered differently by the cache and the index, and RRF turned that order into
different fused scores and a different top hit)."""
from __future__ import annotations

import numpy as np

import vdb
from vdb.text import fusion
from vdb.text.embed import HashingEmbedder

EMB = HashingEmbedder(32)
WORDS = ["apple", "river", "stone", "cloud", "engine", "violin", "desert", "harbor", "lantern", "meadow", "copper",
         "garden", "island", "jungle", "kettle", "ladder", "marble", "needle", "orchid", "pepper"]


def test_rrf_does_not_depend_on_the_order_of_tied_entries():
    text = (np.array([[3, 9, -1]]), np.array([[2.0, 1.0, -np.inf]]))
    one = (np.array([[1, 2, 3, 4]]), np.array([[5.0, 4.0, 4.0, 1.0]]))
    other = (np.array([[1, 3, 2, 4]]), np.array([[5.0, 4.0, 4.0, 1.0]]))   # 2 and 3 tied, the other way round
    a, b = fusion.rrf([one, text], 5), fusion.rrf([other, text], 5)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    # ranks 1, 2, 2, 4: 3 gets 1/62 + 1/61, 2 gets 1/62, 4 gets 1/64; 9 gets 1/62 and ties 2 (smaller id first)
    assert a[0].tolist() == [[3, 1, 2, 9, 4]]
    assert np.allclose(a[1][0], [1 / 62 + 1 / 61, 1 / 61, 1 / 62, 1 / 62, 1 / 64])
    w1, w2 = fusion.weighted([one, text], [0.5, 0.5], 5), fusion.weighted([other, text], [0.5, 0.5], 5)
    assert np.array_equal(w1[0], w2[0]) and np.array_equal(w1[1], w2[1])


def _same(db, q, qv, **kw):
    cached = db.hybrid_search("c", text=q, vector=qv, top_k=10, **kw)
    fresh = db.hybrid_search("c", text=q, vector=qv, top_k=10, use_cache=False, **kw)
    assert np.array_equal(cached.ids, fresh.ids), (cached.ids, fresh.ids)
    assert np.allclose(cached.distances, fresh.distances, rtol=0, atol=1e-7)
    return cached


def test_cached_hybrid_answers_equal_uncached_ones_across_writes(tmp_path):
    rng = np.random.default_rng(1)
    # every text three times: tied groups of three distances, well within what the fusion keeps past its cut
    texts = [t for t in (" ".join(rng.choice(WORDS, 5)) + f" tag{i}" for i in range(500)) for _ in range(3)]
    db = vdb.connect(tmp_path / "d", checkpoint_interval_s=3600, cache_mb=16)
    try:
        db.create_collection("c", dim=32, metric="cosine", text_field="text", bootstrap_rows=500)
        db.upsert("c", np.arange(len(texts)), EMB(texts),
                  payloads=[{"text": t, "g": i % 2} for i, t in enumerate(texts)])
        db.flush("c")
        q = ["river stone apple", "violin meadow"]
        qv = EMB(q)
        for _ in range(4):  # a first sighting leaves a ghost, the next fills, the rest hit
            first = _same(db, q, qv, filter={"g": 0})
        assert db.stats("c")["cache"]["hits"] > 0
        changed, gone = int(first.ids[0, 0]), int(first.ids[0, 1])
        db.upsert("c", [changed], EMB([texts[changed]]), payloads=[{"text": "zebra only", "g": 1}])  # same vector
        db.delete("c", [gone])
        for stage in ("memtable", "indexed"):
            if stage == "indexed":
                db.flush("c")
            hits = db.stats("c")["cache"]["hits"]
            for _ in range(3):  # indexing evicted the entries the new rows fall into: they fill again
                got = _same(db, q, qv, filter={"g": 0})
                _same(db, q, qv)
            assert db.stats("c")["cache"]["hits"] > hits, stage       # the cache really answered
            assert changed not in got.ids and gone not in got.ids, stage
            z = db.hybrid_search("c", text="zebra", vector=EMB(["zebra"])[0], top_k=3, filter={"g": 1})
            assert changed in z.ids.tolist()
            assert db.hybrid_search("c", text="zebra", top_k=2).ids.tolist() == [changed, -1]
    finally:
        db.close()
