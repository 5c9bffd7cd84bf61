"""A damaged text index (derived data) is never a silent wrong answer: found by tantivy's footer CRCs at open (and
rebuilt from the payloads), a DATA_LOSS while open, reported by `check` and rebuilt by `repair`."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

import vdb
from vdb.engine.check import check_stored
from vdb.text.embed import HashingEmbedder

EMB = HashingEmbedder(16)
N = 200
TEXTS = [f"word{i % 10} common doc{i}" for i in range(N)]


def _make(path):
    db = vdb.connect(path, checkpoint_interval_s=3600)
    db.create_collection("c", dim=16, metric="cosine", text_field="text")
    db.upsert("c", np.arange(N), EMB(TEXTS), payloads=[{"text": t} for t in TEXTS])
    db.flush("c")  # every text in tantivy's segments
    return db, Path(db.describe_collection("c")["path"]) / "text" / "tantivy"


def _segment_file(where: Path, ext: str) -> Path:
    (f,) = [where / n for n in os.listdir(where) if n.endswith(ext) and not n.startswith(".")]
    return f


def _damage(where: Path, how: str) -> None:
    if how == "meta-deleted":
        os.remove(where / "meta.json")
        return
    f = _segment_file(where, how.split("-")[1])
    b = bytearray(f.read_bytes())
    if how.startswith("zero"):
        b[len(b) // 4: len(b) // 2] = bytes(len(b) // 2 - len(b) // 4)
    else:
        b[len(b) // 3] ^= 0xFF
    with open(f, "r+b") as out:  # in place, as bit rot would: an open searcher's mmap sees it
        out.write(bytes(b))


def _wait_committed(db):
    """The rebuilt texts reach tantivy on the committer's schedule (a flush with nothing new to checkpoint
    does not commit the text index)."""
    deadline = time.monotonic() + 30
    while db.stats("c")["text"]["fresh_rows"]:
        assert time.monotonic() < deadline, db.stats("c")["text"]
        time.sleep(0.05)


def _answers_right(db):
    r = db.hybrid_search("c", text=["word3", "doc77", "common"], top_k=N)
    assert sorted(int(i) for i in r.ids[0] if i >= 0) == list(range(3, N, 10))
    assert r.ids[1][0] == 77 and r.ids[1][1] == -1
    assert int((r.ids[2] >= 0).sum()) == N


@pytest.mark.parametrize("how", ["meta-deleted", "zero-.idx", "zero-.term", "flip-.term", "flip-.fieldnorm"])
def test_a_damaged_text_index_is_rebuilt_at_open(tmp_path, how):
    db, where = _make(tmp_path / "d")
    db.close()
    _damage(where, how)
    notes = check_stored(where.parent.parent)["notes"]
    assert any("text index damaged" in n for n in notes), notes
    db = vdb.connect(tmp_path / "d", checkpoint_interval_s=3600)
    try:
        _answers_right(db)
        assert db.stats("c")["text"]["watermark"] == 0  # started over
        _wait_committed(db)
        assert db.stats("c")["text"]["committed_docs"] == N
        _answers_right(db)
        assert db.check("c")[0]["ok"]
    finally:
        db.close()


def test_damage_while_open_is_data_loss_then_check_and_repair(tmp_path):
    db, where = _make(tmp_path / "d")
    try:
        _answers_right(db)
        _damage(where, "zero-.idx")
        with pytest.raises(vdb.DataLossError, match="repair"):
            db.hybrid_search("c", text="common word3", top_k=N)
        with pytest.raises(vdb.DataLossError):  # the hybrid form too; and the vectors still answer
            db.hybrid_search("c", text="common", vector=EMB(["common"])[0], top_k=5, use_cache=False)
        assert db.search("c", EMB([TEXTS[5]])[0], top_k=1, use_cache=False).ids[0] == 5
        report = db.check("c")[0]
        assert not report["ok"] and any(v.startswith("text index:") for v in report["violations"]), report
        db.upsert("c", [N], EMB(["okapi"]), payloads=[{"text": "okapi common"}])  # in the fresh tier
        db.delete("c", [0])
        done = db.repair("c")
        assert done["text_index_rebuilt"] and done["ok"], done
        r = db.hybrid_search("c", text=["okapi", "doc0", "common"], top_k=N + 1)
        assert r.ids[0].tolist()[:2] == [N, -1] and r.ids[1][0] == -1 and int((r.ids[2] >= 0).sum()) == N
    finally:
        db.close()
