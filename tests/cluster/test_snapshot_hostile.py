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


def _without(key):
    return lambda m: {k: v for k, v in m.items() if k != key}


MANIFEST_DAMAGE = {  # what a careless edit or a hostile sender does to MANIFEST.json
    "a JSON list": lambda m: [m],
    "no files": _without("files"),
    "files as a list": lambda m: {**m, "files": list(m["files"])},
    "a file entry as a string": lambda m: {**m, "files": {k: "x" for k in m["files"]}},
    "an lsn as a string": lambda m: {**m, "lsn": "7"},
    "a negative lsn": lambda m: {**m, "lsn": -5},
    "a count as a string": lambda m: {**m, "count": "x"},
    "no vectors file": lambda m: {**m, "files": {k: v for k, v in m["files"].items() if k != "vectors.f32"}},
    "no posting file": lambda m: {**m, "files": {k: v for k, v in m["files"].items() if k != "postings.dat"}},
    "a file that is also a directory": lambda m: {**m, "files": {**m["files"], "meta": m["files"]["heads.f32"]}},
    "another dimension": lambda m: {**m, "dim": m["dim"] + 1},
}


@pytest.mark.parametrize("damage", sorted(MANIFEST_DAMAGE))
def test_a_malformed_manifest_is_data_loss_and_restores_nothing(snapshot, tmp_path, damage):
    """Regression: these gave AttributeError, TypeError, KeyError or INTERNAL (FileNotFoundError), and an
    edited dim was restored without a word; a manifest is input like any other."""
    _, snap, _ = snapshot
    bad = tmp_path / "bad"
    shutil.copytree(snap, bad)
    manifest = json.loads((bad / MANIFEST).read_text())
    (bad / MANIFEST).write_text(json.dumps(MANIFEST_DAMAGE[damage](manifest)))
    with vdb.connect(tmp_path / "db") as db:
        with pytest.raises(DataLossError):
            restore_snapshot(db, "r", bad)
        assert db.list_collections() == []
        assert sorted(p.name for p in (tmp_path / "db" / "collections").iterdir()) == []


def test_archive_entries_that_clash_are_data_loss(snapshot, tmp_path):
    """Regression: a file `index` followed by `index/...` gave a bare FileExistsError."""
    tar, _, _ = snapshot
    bad = tmp_path / "clash.tar"
    with tarfile.open(tar) as src, tarfile.open(bad, "w") as out:
        blocker = tarfile.TarInfo(INDEX)
        out.addfile(blocker)
        for member in src:
            out.addfile(member, src.extractfile(member))
    with vdb.connect(tmp_path / "db") as db:
        with pytest.raises(DataLossError, match="clash"):
            restore_snapshot(db, "r", bad)
        assert db.list_collections() == []


def test_a_malformed_cluster_summary_is_a_typed_error(snapshot, tmp_path):
    from vdb.cluster.clustersnap import CLUSTER_FORMAT, CLUSTER_MANIFEST, restore_local
    from vdb.errors import FailedPreconditionError
    bad = tmp_path / "cluster-snap"
    bad.mkdir()
    with vdb.connect(tmp_path / "db") as db:
        for summary, error in (({"format": CLUSTER_FORMAT, "version": 1, "shards": "1"}, DataLossError),
                               ([1], FailedPreconditionError)):
            (bad / CLUSTER_MANIFEST).write_text(json.dumps(summary))
            with pytest.raises(error):
                restore_local(db, bad, "r")
        (bad / CLUSTER_MANIFEST).write_text("{")
        with pytest.raises(DataLossError):
            restore_local(db, bad, "r")
        assert db.list_collections() == []


@pytest.fixture
def full_disk(tmp_path):
    """A small tmpfs (root only) holding a data directory with one collection, filled to its last ~64 KiB."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({out.stderr.strip()}); run as root")
    try:
        db = vdb.connect(mnt / "db")
        db.create_collection("keep", 4, checkpoint_interval_s=3600)
        db.upsert("keep", [1, 2], np.ones((2, 4), np.float32))
        st = os.statvfs(mnt)
        with open(mnt / "filler", "wb") as f:
            f.write(b"\0" * (st.f_bavail * st.f_frsize - (64 << 10)))
        yield mnt, db
        db.close()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_under_restore_or_snapshot_is_resource_exhausted_and_leaves_nothing(snapshot, full_disk):
    """Regression: both raised a bare OSError (ENOSPC); now RESOURCE_EXHAUSTED, nothing half-written is left
    or served, the collection already there stays writable, and the restore works once space is freed."""
    tar, _, digest = snapshot
    mnt, db = full_disk
    with pytest.raises(ResourceExhaustedError):
        restore_snapshot(db, "r", tar)
    with pytest.raises(ResourceExhaustedError):
        write_snapshot(db, "keep", mnt / "keep.tar")
    assert db.list_collections() == ["keep"]
    assert sorted(os.listdir(mnt)) == ["db", "filler"]
    assert sorted(p.name for p in (mnt / "db" / "collections").iterdir()) == ["keep"]
    (mnt / "filler").unlink()
    db.upsert("keep", [3], np.ones((1, 4), np.float32))
    restore_snapshot(db, "r", tar)
    assert content_digest(db.collection("r")) == digest and db.count("keep") == 3
