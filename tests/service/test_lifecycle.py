"""A real `vdbctl serve` process: graceful shutdown on SIGTERM, clean recovery after SIGKILL."""
from __future__ import annotations

import json
import signal
import subprocess
import sys

import numpy as np
import pytest

import vdb


def _start(data, *extra):
    proc = subprocess.Popen([sys.executable, "-m", "vdb.cli", "serve", "--data", str(data), "--port", "0", *extra],
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if line.startswith("{"):
            return proc, json.loads(line)["serving"]
    raise AssertionError(f"server did not start (exit {proc.wait()})")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_acknowledged_writes_survive_shutdown_and_kill(tmp_path, sig):
    data = tmp_path / "data"
    proc, target = _start(data)
    x = np.random.default_rng(0).normal(size=(500, 8)).astype(np.float32)
    try:
        with vdb.Client(target) as c:
            c.create_collection("c", dim=8)
            for s in range(0, 500, 50):
                c.upsert("c", np.arange(s, s + 50), x[s:s + 50])
            c.delete("c", [3, 4])
    finally:
        proc.send_signal(sig)
        code = proc.wait(timeout=60)
    assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
    with vdb.connect(data) as db:
        assert db.count("c") == 498 and db.get("c", [3]) == []
        assert np.allclose(db.get("c", [499])[0].vector, x[499])
        assert db.search("c", x[10], top_k=1)[0][0] == 10
        st = db.stats("c")
        if sig == signal.SIGTERM:  # drained and checkpointed: nothing left to replay
            assert st["checkpoint_lsn"] == st["applied_lsn"] == 11
        assert db.check("c")[0]["ok"]


def test_bulk_index_attached_at_start_is_served(tmp_path):
    from index import BuildParams, build_index
    x = np.random.default_rng(1).normal(size=(800, 8)).astype(np.float32)
    build_index(x, tmp_path / "idx", params=BuildParams(head_ratio=0.05))
    proc, target = _start(tmp_path / "data", "--attach", f"bulk={tmp_path / 'idx'}")
    try:
        with vdb.Client(target) as c:
            assert c.count("bulk") == 800
            assert c.search("bulk", x[5], top_k=1)[0][0] == 5
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0


def test_a_second_server_on_the_same_data_is_refused(tmp_path):
    proc, _ = _start(tmp_path / "data")
    try:
        second = subprocess.run([sys.executable, "-m", "vdb.cli", "serve", "--data", str(tmp_path / "data"),
                                 "--port", "0"], capture_output=True, text=True, timeout=60)
        assert second.returncode == 1 and "in use by another process" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=60)
