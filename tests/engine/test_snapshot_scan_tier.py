"""A snapshot carries the scan tier (scan.pq): a restored collection serves from disk as its source did, with
the same stale entries (each names the posting CRC it encoded), not silently through the slower INT8 path."""
from __future__ import annotations

import shutil

import numpy as np

import vdb
from index import BuildParams, SpannIndex, build_index
from vdb.engine.snapshot import restore_snapshot, write_snapshot


def test_a_restored_snapshot_keeps_the_scan_codes_and_answers_as_its_source(tmp_path, base, queries):
    src = tmp_path / "built"
    build_index(base, src, params=BuildParams(metric="l2", head_ratio=0.02, seed=1, scan_code_bytes=16))
    with vdb.connect(tmp_path / "db") as db:
        db.attach_collection("c", src)
        db.upsert("c", [10**6], (queries[0] + np.float32(0.01))[None, :])  # one posting changes: a stale entry
        db.flush("c")
        write_snapshot(db, "c", tmp_path / "snap")
        restore_snapshot(db, "r", tmp_path / "snap")
        restored = db.collection("r").index.path
        source = db.collection("c").index.path
    copies = [shutil.copytree(p, tmp_path / name) for p, name in ((source, "source"), (restored, "restored"))]
    answers = []
    for path in copies:
        with SpannIndex.open(path, memory_budget_mb=64) as idx:
            assert idx.tier is not None, path
            answers.append((idx.tier.stale_postings(), *idx.search(queries[:20], 10, nprobe=8)))
    (stale_a, ids_a, d_a), (stale_b, ids_b, d_b) = answers
    assert stale_a == stale_b
    assert np.array_equal(ids_a, ids_b) and np.allclose(d_a, d_b)
    assert 10**6 in ids_b[0]
