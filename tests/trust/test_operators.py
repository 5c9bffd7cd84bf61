"""Two processes on one directory, and the operator's commands (issues 11.2, 11.7, 11.10): a build, a check or an
embedded open cannot touch what a server holds; `vdbctl check` changes no byte of what it checks; `vdbctl repair`
is the explicit, loud repair; builds that died leave nothing behind for long."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import vdb
from index import BuildParams, build_index
from storage.errors import InUseError
from storage.lock import DirLock

CLI = [sys.executable, "-m", "vdb.cli"]


def _serve(data: Path, *extra):
    proc = subprocess.Popen([*CLI, "serve", "--data", str(data), "--port", "0", *extra], stderr=subprocess.PIPE,
                            text=True)
    for line in proc.stderr:
        if line.startswith("{"):
            return proc, json.loads(line)["serving"]
    raise AssertionError(f"server did not start (exit {proc.wait()})")


def _vdbctl(*args):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=300)


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def base():
    rng = np.random.default_rng(0)
    return rng.normal(size=(1500, 8)).astype(np.float32)


def test_build_overwrite_refuses_an_index_a_server_holds(tmp_path, base):
    idx = tmp_path / "idx"
    build_index(base, idx, params=BuildParams(head_ratio=0.02))
    np.save(tmp_path / "other.npy", base[:500])
    proc, target = _serve(tmp_path / "data", "--attach", f"docs={idx}")
    try:
        with vdb.Client(target) as c:
            c.upsert("docs", np.arange(5000, 5200), base[:200])  # acknowledged writes in the attached index
            out = _vdbctl("build", tmp_path / "other.npy", "--out", idx, "--overwrite", "-q")
            assert out.returncode != 0 and "in use by another process" in out.stderr, out.stderr
            assert c.count("docs") == 1700  # the server never noticed
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    with vdb.connect(tmp_path / "data") as db:  # after a restart: the old vectors and the writes are all there
        assert db.count("docs") == 1700 and len(db.get("docs", [5000, 5199])) == 2


def test_build_overwrite_refuses_a_collection_directory_with_a_wal(tmp_path, base):
    idx = tmp_path / "idx"
    build_index(base, idx)
    with vdb.connect(tmp_path / "data") as db:
        db.attach_collection("docs", idx)
        db.upsert("docs", [99999], base[:1])
        db.close(checkpoint=False)  # the write lives in the WAL only
    with pytest.raises(InUseError) as e:
        build_index(base[:100], idx, overwrite=True)
    assert "write-ahead log" in str(e.value)
    with vdb.connect(tmp_path / "data") as db:
        assert db.count("docs") == 1501


def test_check_and_embedded_open_refuse_a_served_data_directory(tmp_path, base):
    proc, target = _serve(tmp_path / "data")
    try:
        with vdb.Client(target) as c:
            c.create_collection("c", dim=8)
            c.upsert("c", np.arange(100), base[:100])
        out = _vdbctl("check", tmp_path / "data")
        assert out.returncode != 0 and "in use by another process" in out.stderr
        with pytest.raises(vdb.UnavailableError, match="in use by another process"):
            vdb.connect(tmp_path / "data")
        with vdb.Client(target) as c:
            assert c.count("c") == 100
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


def _killed_writer(data: Path) -> None:
    """A process that writes, checkpoints, writes more, and is SIGKILLed: its WAL holds records after the
    checkpoint (and possibly a torn tail)."""
    code = f"""
import numpy as np, os, signal, vdb
db = vdb.connect({str(data)!r}, checkpoint_interval_s=3600)
db.create_collection("c", dim=8, bootstrap_rows=200)
x = np.random.default_rng(0).normal(size=(600, 8)).astype(np.float32)
db.upsert("c", np.arange(300), x[:300]); db.flush("c")
db.upsert("c", np.arange(300, 600), x[300:]); db.delete("c", [1, 2, 3])
os.kill(os.getpid(), signal.SIGKILL)
"""
    assert subprocess.run([sys.executable, "-c", code]).returncode == -signal.SIGKILL


def test_check_is_read_only(tmp_path):
    data = tmp_path / "data"
    _killed_writer(data)
    seg = sorted((data / "collections" / "c" / "wal").glob("wal-*.log"))[-1]
    with open(seg, "ab") as f:
        f.write(b"\x07" * 9)  # a torn final write
    before = _tree_hash(data)
    out = _vdbctl("check", data)
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)[0]
    assert report["checked"]["wal_records_after_checkpoint"] == 2  # the upsert and the delete, not applied
    assert any("truncate" in n for n in report["notes"])  # what the next open will do, not done
    assert _tree_hash(data) == before
    with vdb.connect(data) as db:  # and the next open does it, keeping every acknowledged write
        assert db.count("c") == 597 and db.check("c")[0]["ok"]


def test_check_reports_what_was_dropped_and_repair_is_explicit(tmp_path):
    data = tmp_path / "data"
    _killed_writer(data)
    seg = sorted((data / "collections" / "c" / "wal").glob("wal-*.log"))[-1]
    raw = bytearray(seg.read_bytes())
    delete_record = 17 + 4 + 3 * 8
    raw[len(raw) - delete_record - 100] ^= 0xFF  # inside the upsert after the checkpoint; a valid delete follows
    seg.write_bytes(bytes(raw))
    before = _tree_hash(data)
    out = _vdbctl("check", data)
    assert out.returncode == 1 and "checksum" in out.stdout, out.stdout
    assert _tree_hash(data) == before
    with vdb.connect(data) as db:  # the damaged collection is reported, never guessed at
        assert "c" in db.problems()
        with pytest.raises(vdb.DataLossError, match="wal-"):
            db.count("c")
    out = _vdbctl("repair", data)
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)[0]
    assert report["repaired"] and any("LOST" in line for line in report["log"])
    assert _vdbctl("check", data).returncode == 0
    with vdb.connect(data) as db:  # the checkpointed 300 stay; the damaged upsert and the delete after it are LOST
        assert db.count("c") == 300 and len(db.get("c", [1, 2, 3])) == 3


def test_a_build_that_died_is_cleaned_up_and_a_running_one_is_left_alone(tmp_path, base):
    out = tmp_path / "idx"
    dead = tmp_path / ".idx.build-deadbeef"
    (dead / "meta").mkdir(parents=True)
    (dead / "vectors.f32").write_bytes(b"x" * 1000)
    alive = tmp_path / ".idx.build-cafecafe"
    alive.mkdir()
    lock = DirLock(alive, exclusive=True)  # as a build in progress holds it
    try:
        build_index(base[:300], out)
        assert not dead.exists() and alive.exists() and out.is_dir()
    finally:
        lock.close()
    assert os.listdir(alive) == ["LOCK"]
