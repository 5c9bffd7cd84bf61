"""Snapshots and restores under hostile conditions: a process killed in the middle of a restore, malformed
manifests and archives, a full disk. Whatever the snapshot or the crash, restore writes nothing outside its
target, raises a typed error, and leaves a data directory that opens and serves what it served before."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

import vdb
from vdb.engine.snapshot import INDEX, MANIFEST, content_digest, restore_snapshot, write_snapshot
from vdb.errors import DataLossError, ResourceExhaustedError

DIM = 16
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    """(snapshot.tar, snapshot dir, content digest of the source) of a collection with payloads."""
    root = tmp_path_factory.mktemp("source")
    with vdb.connect(root / "db") as db:
        db.create_collection("c", DIM, bootstrap_rows=200, head_ratio=0.05, checkpoint_interval_s=3600)
        rng = np.random.default_rng(3)
        db.upsert("c", list(range(600)), rng.normal(size=(600, DIM)).astype(np.float32),
                  [{"i": i, "tag": f"t{i % 5}"} for i in range(600)])
        write_snapshot(db, "c", root / "snap.tar")
        write_snapshot(db, "c", root / "snap")
        digest = content_digest(db.collection("c"))
    return root / "snap.tar", root / "snap", digest


def _restore_killed_at(point: str, data: Path, src: Path) -> int:
    """Run a restore in a child process that SIGKILLs itself at crash point `point`; its return code."""
    code = ("import sys, vdb\nfrom vdb.cluster.clustersnap import restore_local\n"
            "with vdb.connect(sys.argv[1]) as db:\n    restore_local(db, sys.argv[2], 'r')\n")
    env = {**os.environ, "VDB_CRASH_AT": point, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code, str(data), str(src)], env=env, cwd=ROOT,
                          capture_output=True, timeout=120).returncode


@pytest.mark.parametrize("point", ["restore-unpacked:1", "restore-filled:1"])
def test_a_restore_killed_midway_into_a_new_data_directory_leaves_it_openable(snapshot, tmp_path, point):
    """Regression: the restore's collection directory (with its WAL) was written before the data directory
    had a catalog; a SIGKILL then left a directory that refused to open ("catalog.json: missing, but
    collections holds 1 collection(s) that were served"): a replica killed while being seeded never came back."""
    tar, _, digest = snapshot
    data = tmp_path / "fresh"
    assert _restore_killed_at(point, data, tar) == -9
    with vdb.connect(data) as db:  # opens, and serves no half-restored collection
        assert db.list_collections() == []
        assert not list(data.glob(".trash-*")), "the interrupted unpack is cleaned up"
        restore_snapshot(db, "r", tar)  # the name is free again
        assert content_digest(db.collection("r")) == digest
