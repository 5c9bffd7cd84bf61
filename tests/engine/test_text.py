"""Full-text and hybrid search in the engine: BM25 over a payload text field, writes visible at once, filters,
fusion, recovery of the derived text index (clean close, crash, damaged or missing index)."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

import vdb
from vdb.text import fusion
from vdb.text.embed import HashingEmbedder
from vdb.text.index import TextIndex

EMB = HashingEmbedder(32)
TEXTS = ["the cat sat on the mat", "a dog and a cat", "light of the world", "dogs are running fast",
         "in the beginning god created light", "zebra crossing near the station", "the quick brown fox",
         "a lazy dog sleeps", "stars give light at night", "trains leave the station at noon"]


def _fill(db, texts=TEXTS, start=0, **create):
    if "c" not in db.list_collections():
        db.create_collection("c", dim=32, metric="cosine", text_field="text", **create)
    ids = np.arange(start, start + len(texts))
    db.upsert("c", ids, EMB(texts), payloads=[{"text": t, "k": int(i % 2)} for i, t in zip(ids, texts)])
    return ids


def _text_ids(db, q, k=10, **kw):
    r = db.hybrid_search("c", text=q, top_k=k, **kw)
    return [int(i) for i in r.ids if i >= 0]


# -- fusion -------------------------------------------------------------------------------------------------
def test_rrf_sums_reciprocal_ranks_and_breaks_ties_by_first_seen():
    a = (np.array([[1, 2, 3]]), np.array([[9.0, 8.0, 7.0]]))
    b = (np.array([[3, 4, -1]]), np.array([[5.0, 1.0, -np.inf]]))
    ids, s = fusion.rrf([a, b], 4, rrf_k=60)
    # 3: 1/63 + 1/61; 1: 1/61; 2: 1/62; 4: 1/62 (2 was met first)
    assert ids.tolist() == [[3, 1, 2, 4]]
    assert np.allclose(s[0], [1 / 63 + 1 / 61, 1 / 61, 1 / 62, 1 / 62])


def test_weighted_fusion_normalises_each_list_and_pads():
    a = (np.array([[1, 2, -1]]), np.array([[3.0, 1.0, -np.inf]]))     # normalised: 1 -> 1, 2 -> 0
    b = (np.array([[2, 5, 6]]), np.array([[10.0, 10.0, 0.0]]))        # 2 -> 1, 5 -> 1, 6 -> 0
    ids, s = fusion.weighted([a, b], [0.75, 0.25], 5)
    assert ids.tolist() == [[1, 2, 5, 6, -1]]
    assert np.allclose(s[0][:4], [0.75, 0.25, 0.25, 0.0]) and s[0][4] == -np.inf
    one = (np.array([[7]]), np.array([[2.0]]))                         # a single score normalises to 1
    assert fusion.weighted([one, (np.array([[-1]]), np.array([[-np.inf]]))], [0.5, 0.5], 1)[1][0, 0] == 0.5


# -- the text index on its own ------------------------------------------------------------------------------
def _index(path, **kw):
    t = TextIndex(path, "text", **kw)
    t.recover(0, lambda a, b: iter(()), lambda: np.zeros(0, np.int64))
    return t


def test_fresh_tier_scores_equal_tantivys_after_the_commit(tmp_path):
    t = _index(tmp_path / "t", commit_interval_s=3600)
    t.applied(np.arange(len(TEXTS)), [{"text": s} for s in TEXTS], (), len(TEXTS))
    allow = np.ones(len(TEXTS), bool)
    before = t.search(["cat light", "station dog", "nothing matches"], 5, allow)
    assert t.stats()["committed_docs"] == 0 and t.commit()
    after = t.search(["cat light", "station dog", "nothing matches"], 5, allow)
    assert t.stats()["committed_docs"] == len(TEXTS) and t.stats()["fresh_rows"] == 0
    assert np.array_equal(before[0], after[0])
    assert np.allclose(before[1], after[1], rtol=1e-5)
    assert (after[0][2] == -1).all()
    t.close()


def test_deletes_reach_tantivy(tmp_path):
    """Regression: delete_documents_by_term with a Python int never matched the u64 row field."""
    t = _index(tmp_path / "t", commit_interval_s=3600)
    t.applied(np.arange(4), [{"text": s} for s in TEXTS[:4]], (), 4)
    t.commit()
    t.applied(None, None, [1, 3], 4)
    t.commit()
    assert t.stats()["committed_docs"] == 2
    t.close()


def test_a_restricted_search_scores_like_an_unrestricted_one(tmp_path):
    t = _index(tmp_path / "t", commit_interval_s=3600)
    t.applied(np.arange(len(TEXTS)), [{"text": s} for s in TEXTS], (), len(TEXTS))
    t.commit()
    allow = np.zeros(len(TEXTS), bool)
    allow[[1, 3, 7]] = True
    masked = t.search(["dog"], 3, allow)
    restricted = t.search(["dog"], 3, allow, restrict=np.array([1, 3, 7]))
    assert sorted(masked[0][0].tolist()) == [1, 3, 7]
    assert np.array_equal(masked[0], restricted[0]) and np.allclose(masked[1], restricted[1])
    t.close()


# -- through the database -----------------------------------------------------------------------------------
def test_writes_replacements_and_deletes_are_visible_at_once(db):
    _fill(db)
    assert _text_ids(db, "zebra") == [5]
    db.upsert("c", [5], EMB(["a yak"]), payloads=[{"text": "a yak on a hill"}])
    assert _text_ids(db, "zebra") == [] and _text_ids(db, "yak") == [5]
    db.delete("c", [1, 3, 7])
    assert _text_ids(db, "dog") == []
    db.flush("c")  # now from tantivy's segments rather than the fresh tier
    assert _text_ids(db, "yak") == [5] and _text_ids(db, "dog") == [] and _text_ids(db, "zebra") == []
    db.upsert("c", [1], EMB(["dog"]), payloads=[{"text": "dog"}])
    assert _text_ids(db, "dog") == [1]


def test_text_search_ranks_by_bm25_and_stems(db):
    _fill(db)
    ids = _text_ids(db, "Dogs!")
    assert set(ids) == {1, 3, 7}          # dog, dogs: one stem
    r = db.hybrid_search("c", text=["light", "station"], top_k=3)
    assert r.ids.shape == (2, 3) and set(r.ids[0]) == {2, 4, 8} and set(r.ids[1][:2]) == {5, 9}
    assert (np.diff(r.distances[0]) >= 0).all()  # -BM25: smaller is better, sorted


def test_filters_apply_to_both_lists(db):
    _fill(db)
    assert set(_text_ids(db, "dog light", filter={"k": 1})) == {1, 3, 7}
    r = db.hybrid_search("c", text="dog light", vector=EMB(["dog light"])[0], top_k=10, filter={"k": 0})
    assert set(r.ids[r.ids >= 0].tolist()) <= {0, 2, 4, 6, 8}


def test_a_wide_filter_pages_through_tantivy(tmp_path):
    db = vdb.connect(tmp_path / "d", exact_filter_rows=2)  # force the masked (not restricted) path
    try:
        texts = [f"common word{i % 7}" for i in range(300)]
        db.create_collection("c", dim=32, metric="cosine", text_field="text")
        db.upsert("c", np.arange(300), EMB(texts), payloads=[{"text": t, "k": int(i % 50 == 0)}
                                                              for i, t in enumerate(texts)])
        db.flush("c")
        ids = _text_ids(db, "common", k=10, filter={"k": 1})
        assert sorted(ids) == list(range(0, 300, 50))
    finally:
        db.close()


def test_hybrid_rrf_is_the_fusion_of_the_two_lists(db):
    _fill(db)
    q, k = "cat light station", 5
    v = EMB([q])
    text = db.hybrid_search("c", text=[q], top_k=50)
    dense = db.search("c", v, top_k=50, use_cache=False)
    expect = fusion.rrf([(dense.ids, -dense.distances.astype(float)), (text.ids, -text.distances.astype(float))], k)
    got = db.hybrid_search("c", text=[q], vector=v, top_k=k, use_cache=False)
    assert np.array_equal(got.ids, expect[0]) and np.allclose(got.distances, -expect[1])
    w = db.hybrid_search("c", text=q, vector=v[0], top_k=k, fusion="weighted", alpha=1.0, use_cache=False)
    assert w.ids[0] == dense.ids[0, 0]     # alpha 1: the dense list's best comes first
    only_dense = db.hybrid_search("c", vector=v[0], top_k=k, use_cache=False)
    assert np.array_equal(only_dense.ids, dense.ids[0, :k])


def test_bad_hybrid_requests_are_typed_errors(db):
    _fill(db)
    db.create_collection("plain", dim=32)
    with pytest.raises(vdb.FailedPreconditionError, match="no full-text index"):
        db.hybrid_search("plain", text="cat")
    cases = [dict(), dict(text=3), dict(text=[]), dict(text="a", fusion="max"), dict(text="a", alpha=2.0),
             dict(text="a", rrf_k=0), dict(text="a", top_k=0), dict(text="a", candidates=1, top_k=5),
             dict(text=["a", "b"], vector=EMB(["a"])), dict(text="a", vector=np.zeros(5)),
             dict(text="a", filter={"$bad": 1})]
    for kw in cases:
        with pytest.raises(vdb.InvalidArgumentError):
            db.hybrid_search("c", **kw)
    assert db.stats("c")["text"]["field"] == "text" and db.stats("plain")["text"] == {"enabled": False}


@pytest.mark.parametrize("how", ["clean", "crash", "index-deleted", "state-damaged", "state-ahead"])
def test_the_text_index_recovers(tmp_path, how):
    path = tmp_path / "d"
    db = vdb.connect(path, checkpoint_interval_s=3600)
    _fill(db, text_commit_interval_s=0.05)
    db.flush("c")
    db.upsert("c", [20], EMB(["okapi"]), payloads=[{"text": "okapi in the forest"}])  # after the checkpoint
    db.delete("c", [2])
    if how in ("crash", "state-ahead"):  # let the committer store both in tantivy: the checkpoint does not cover them
        deadline = time.monotonic() + 30
        while db.stats("c")["text"]["watermark"] < len(TEXTS) + 1 or db.stats("c")["text"]["pending_deletes"]:
            assert time.monotonic() < deadline, db.stats("c")["text"]
            time.sleep(0.02)
    coll_dir = Path(db.describe_collection("c")["path"])
    db.close(checkpoint=(how == "clean"))
    state = coll_dir / "text" / "state.json"
    if how == "index-deleted":
        shutil.rmtree(coll_dir / "text")
    elif how == "state-damaged":
        state.write_bytes(b"{not json")
    elif how == "state-ahead":  # a text commit after the last checkpoint claims rows the replay will write again
        s = json.loads(state.read_bytes())
        state.write_text(json.dumps({**s, "watermark": 10_000}))
    db = vdb.connect(path, checkpoint_interval_s=3600)
    try:
        assert _text_ids(db, "okapi") == [20]
        assert _text_ids(db, "light") and 2 not in _text_ids(db, "light")
        assert set(_text_ids(db, "dog")) == {1, 3, 7}
        db.flush("c")
        st = db.stats("c")["text"]
        assert st["committed_docs"] == len(TEXTS)  # 10 - 1 deleted + 1 new: nothing twice, nothing dead
    finally:
        db.close()
