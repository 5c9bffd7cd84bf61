"""Collection stats say whether the scan tier (index/tierscan.py) exists and serves: an operator sizing
memory_budget_mb sees if the codes fit (serving) and how many postings fall back to the posting file."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

import vdb
from index import BuildParams, build_index


@pytest.fixture(scope="module")
def coded(tmp_path_factory, base):
    path = tmp_path_factory.mktemp("coded") / "idx"
    build_index(base[:3000], path, params=BuildParams(head_ratio=0.02, seed=1, scan_code_bytes=8, target_recall=0))
    return path


def test_a_collection_without_scan_codes_reports_none(db, base):
    db.create_collection("empty", base.shape[1])  # before its first heads too: the index section is empty then
    assert db.stats("empty")["scan_tier"] == {"present": False, "serving": False, "locked": False,
                                              "stale_postings": None}
    db.upsert("empty", np.arange(2000), base[:2000])
    db.flush("empty")
    stats = db.stats("empty")
    assert stats["scan_tier"]["present"] is False and "scan_tier" not in stats["index"]  # one section, not two


def test_codes_opened_under_a_budget_serve_and_count_the_postings_writes_changed(tmp_path, coded, queries):
    path = shutil.copytree(coded, tmp_path / "c")
    with vdb.connect(tmp_path / "data", memory_budget_mb=64, checkpoint_interval_s=3600) as db:
        db.attach_collection("c", path)
        tier = db.stats("c")["scan_tier"]
        assert tier["present"] and tier["serving"] and tier["code_bytes"] == 8 and tier["stale_postings"] == 0
        assert tier["entries"] > 0 and tier["bytes"] == (path / "scan.pq").stat().st_size
        assert _gauges(db)["c"] == (1, tier["bytes"], 0)
        db.upsert("c", np.arange(10**6, 10**6 + 5), queries[:5] + np.float32(0.01))
        db.flush("c")  # the rows are in postings now: those postings no longer match their codes
        stale = db.stats("c")["scan_tier"]["stale_postings"]
        assert stale > 0 and _gauges(db)["c"] == (1, tier["bytes"], stale)
        assert db.search("c", queries[0], top_k=1).ids[0] == 10**6  # found all the same, from the posting file


def _gauges(db) -> dict:
    """{collection: (serving, bytes, stale postings)} as /metrics would export them (vdb/service/metrics.py)."""
    from vdb.service.metrics import Metrics
    fams = {f.name: f for f in Metrics(db).registry.collect()}
    values = {}
    for key in ("vdb_scan_tier_serving", "vdb_scan_tier_bytes", "vdb_scan_tier_stale_postings"):
        for sample in fams[key].samples:
            values.setdefault(sample.labels["collection"], []).append(sample.value)
    return {name: tuple(v) for name, v in values.items()}


def test_codes_opened_without_a_budget_are_present_but_do_not_serve(tmp_path, coded):
    path = shutil.copytree(coded, tmp_path / "c")
    with vdb.connect(tmp_path / "data", checkpoint_interval_s=3600) as db:
        db.attach_collection("c", path)
        tier = db.stats("c")["scan_tier"]
        assert _gauges(db)["c"] == (0, tier["bytes"], 0)
    assert tier["present"] and tier["code_bytes"] == 8 and tier["serving"] is False
    assert tier["stale_postings"] is None and "no memory budget" in tier["not_serving"]


def test_an_unreadable_or_truncated_scan_code_file_is_reported_not_raised(tmp_path, coded):
    """Review of the stats: a scan.pq that cannot be read (here a symlink loop: ELOOP, as EIO or EACCES would
    be) made info() and stats() raise OSError; a truncated one was reported healthy until a budgeted open
    failed on it."""
    from index import SpannIndex
    path = shutil.copytree(coded, tmp_path / "c")
    size = (path / "scan.pq").stat().st_size
    with open(path / "scan.pq", "r+b") as f:
        f.truncate(size // 2)
    with SpannIndex.open(path) as idx:
        tier = idx.info()["scan_tier"]
    assert tier["present"] and tier["serving"] is False and "layout needs" in tier["damaged"]
    (path / "scan.pq").unlink()
    (path / "scan.pq").symlink_to(path / "scan.pq")
    with SpannIndex.open(path) as idx:
        tier = idx.info()["scan_tier"]
    assert tier["present"] and tier["serving"] is False and tier["damaged"]
    with vdb.connect(tmp_path / "data", checkpoint_interval_s=3600) as db:
        db.attach_collection("c", path)
        assert db.stats("c")["scan_tier"]["damaged"]
