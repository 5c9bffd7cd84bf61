"""Posting-file compaction: garbage reclaimed, answers unchanged, and a crash on either side of the
checkpoint that commits the new file leaves exactly one good posting file."""
from __future__ import annotations

import numpy as np

import vdb


def _churn(db, x, compact_min_mb=1e6):
    db.create_collection("c", dim=16, split_limit=40, bootstrap_rows=300, compact_min_mb=compact_min_mb)
    db.upsert("c", np.arange(3000), x)
    db.flush("c")
    for round_ in range(3):  # replace most vectors: their old records become garbage
        ids = np.arange(0, 3000, 1 + round_ % 2)
        db.upsert("c", ids, x[ids] + 0.01 * (round_ + 1))
    db.delete("c", np.arange(0, 3000, 7))
    db.flush("c")


def _posting_files(path):
    return sorted(f.name for f in (path / "collections" / "c").glob("postings*.dat"))


def test_compaction_reclaims_space_and_keeps_answers(tmp_path):
    x = np.random.default_rng(0).normal(size=(3000, 16)).astype(np.float32)
    db = vdb.connect(tmp_path / "d", checkpoint_interval_s=3600)
    try:
        _churn(db, x)
        garbage = db.stats("c")["maintenance"]["posting_garbage_bytes"]
        before = db.search("c", x[:50], top_k=5, nprobe=1000, eps=1e9, rerank_k=500, use_cache=False)
        assert garbage > 0 and db.maintain("c", compact=True)
        assert db.stats("c")["maintenance"]["posting_garbage_bytes"] < garbage
        after = db.search("c", x[:50], top_k=5, nprobe=1000, eps=1e9, rerank_k=500, use_cache=False)
        assert np.array_equal(before[0], after[0])
        db.flush("c")
        assert len(_posting_files(tmp_path / "d")) == 1
        assert db.check("c")[0]["ok"]
    finally:
        db.close()
    with vdb.connect(tmp_path / "d") as db:
        again = db.search("c", x[:50], top_k=5, nprobe=1000, eps=1e9, rerank_k=500, use_cache=False)
        assert np.array_equal(before[0], again[0]) and db.check("c")[0]["ok"]


CHILD = """
import sys
import numpy as np
import vdb
sys.path.insert(0, sys.argv[2])
from test_compaction import _churn
x = np.random.default_rng(1).normal(size=(3000, 16)).astype(np.float32)
db = vdb.connect(sys.argv[1], checkpoint_interval_s=3600)
_churn(db, x)
np.save(sys.argv[1] + "/../want.npy", db.search("c", x[:40], top_k=5, nprobe=1000, eps=1e9, rerank_k=500,
                                                 use_cache=False)[0])
db.maintain("c", compact=True)  # VDB_CRASH_AT=compact:1 kills the process right after the new file is served
"""


def test_crash_between_compaction_and_checkpoint(tmp_path):
    """A real SIGKILL between the compaction and the checkpoint that would commit its file."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path
    env = {**os.environ, "VDB_CRASH_AT": "compact:1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "d"), str(Path(__file__).parent)],
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert len(_posting_files(tmp_path / "d")) == 2  # the committed manifest still names the old file
    x = np.random.default_rng(1).normal(size=(3000, 16)).astype(np.float32)
    with vdb.connect(tmp_path / "d") as db:
        assert len(_posting_files(tmp_path / "d")) == 1  # the uncommitted new file was removed
        got = db.search("c", x[:40], top_k=5, nprobe=1000, eps=1e9, rerank_k=500, use_cache=False)[0]
        assert np.array_equal(np.load(tmp_path / "want.npy"), got) and db.check("c")[0]["ok"]


def test_maintenance_compacts_on_its_own(tmp_path):
    x = np.random.default_rng(2).normal(size=(3000, 16)).astype(np.float32)
    with vdb.connect(tmp_path / "d", checkpoint_interval_s=3600) as db:
        _churn(db, x, compact_min_mb=0.001)
        db.maintain("c")
        db.flush("c")
        assert db.stats("c")["maintenance"].get("compactions", 0) >= 1
        assert len(_posting_files(tmp_path / "d")) == 1 and db.check("c")[0]["ok"]
