"""What the damage and poison matrices run in forked children (tests/trust/forkserver.py): building the base data
directory, probing a (possibly damaged) copy through the embedded engine, through gRPC and through `vdbctl check`,
and a writer for the SIGKILL half of the poison matrix.

Every probe returns plain JSON: each call's answer as ["ok", value] or its error as [class, gRPC code, message].
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

DIM = 8
SEARCH = dict(top_k=10, nprobe=64, rerank_k=2000)  # every posting probed, every candidate re-ranked: exact answers
GET_IDS = [0, 49, 50, 400, 799, 820, 899, 920, 949, 10**6]


def preload() -> None:
    """Import and compile everything once in the fork server (kernels included), then leave no thread behind."""
    import tempfile
    import threading

    import vdb
    import vdb.cli  # noqa: F401 - `vdbctl check` runs in the children
    import vdb.service.server  # noqa: F401
    with tempfile.TemporaryDirectory() as d:
        db = vdb.connect(d, checkpoint_interval_s=3600)
        db.create_collection("w", dim=DIM, bootstrap_rows=50)
        db.upsert("w", np.arange(120), _vectors(0, 120), payloads=[{"g": i % 3} for i in range(120)])
        db.flush("w")
        db.search("w", _vectors(1, 2), **SEARCH)
        db.search("w", _vectors(1, 2), top_k=3, filter={"g": 1})
        db.get("w", [1, 2])
        db.close()
    if threading.active_count() != 1:
        raise RuntimeError(f"threads left after the warm-up: {threading.enumerate()}")


def _vectors(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


# -- the base directory of the damage matrix -------------------------------------------------------------------
def build_base(path: str) -> dict:
    """Collection "a" (checkpointed rows, heads, postings, payloads, and WAL records after the checkpoint: LSN 1 is
    covered, 2-4 are not) and a small bystander "b". Closed without a final checkpoint, as after a crash."""
    import vdb
    from storage.meta import MetaStore
    from storage.wal.fs import RealFS
    from storage.wal.reader import _iter_records
    db = vdb.connect(path, checkpoint_interval_s=3600)
    db.create_collection("a", dim=DIM, bootstrap_rows=300)
    db.upsert("a", np.arange(800), _vectors(1, 800), payloads=[{"g": i % 3, "s": f"v{i}"} for i in range(800)])
    db.flush("a")                                                       # checkpoint: LSN 1
    db.upsert("a", np.arange(800, 900), _vectors(2, 100), payloads=[{"g": i % 3} for i in range(100)])  # LSN 2
    db.delete("a", np.arange(0, 50))                                    # LSN 3
    db.upsert("a", np.arange(900, 950), _vectors(3, 50))                # LSN 4
    db.create_collection("b", dim=DIM)
    db.upsert("b", np.arange(60), _vectors(4, 60), payloads=[{"g": i % 3} for i in range(60)])
    db.close(checkpoint=False)
    coll = Path(path) / "collections" / "a"
    meta = MetaStore(coll / "meta", readonly=True)
    try:
        directory = meta.get_array("directory")
        manifest = meta.manifest()
        arrays = sorted(n for n in ("state", "int2ext", "directory", "quantizer", "head_index", "pending")
                        if meta.get_array(n) is not None)
    finally:
        meta.close()
    seg = next((coll / "wal").glob("wal-*.log"))
    records = [(off, lsn, len(p)) for off, lsn, _t, p in _iter_records(RealFS(), str(seg), 32, seg.stat().st_size)]
    return {"postings": [(int(o), int(c)) for o, c in zip(directory["offset"], directory["count"])],
            "n_rows": manifest["n_rows"], "n_heads": manifest["n_heads"], "checkpoint_lsn": manifest["checkpoint_lsn"],
            "arrays": arrays, "wal_segment": seg.name, "wal_records": records}


# -- probes ------------------------------------------------------------------------------------------------
def _outcome(fn):
    import vdb
    try:
        return ["ok", fn()]
    except vdb.VdbError as e:
        return [type(e).__name__, e.code.name, e.message]
    except Exception as e:  # noqa: BLE001 - an untyped error is a finding, reported as such
        return ["UNTYPED", type(e).__name__, str(e)]


def _calls(api, names=("a", "b")) -> dict:
    q = _vectors(5, 4)
    out = {}
    for c in names:
        out[f"{c}.count"] = _outcome(lambda: api.count(c))
        out[f"{c}.get"] = _outcome(lambda: [(r.id, np.round(r.vector, 5).tolist(), r.payload)
                                            for r in api.get(c, GET_IDS)])
        out[f"{c}.search"] = _outcome(lambda: api.search(c, q, **SEARCH).ids.tolist())
        out[f"{c}.filtered"] = _outcome(lambda: api.search(c, q, top_k=5, filter={"g": 1}).ids.tolist())
        out[f"{c}.describe"] = _outcome(lambda: {k: v for k, v in api.describe_collection(c).items()
                                                 if k in ("name", "dim", "metric", "count", "heads")})
    return out


def probe(path: str) -> dict:
    """Open the data directory with the embedded engine and ask every collection the same questions."""
    import vdb
    try:
        db = vdb.connect(path, checkpoint_interval_s=3600)
    except vdb.VdbError as e:
        return {"connect": [type(e).__name__, e.code.name, e.message]}
    try:
        out = {"problems": db.problems(), **_calls(db)}
        out["check"] = _outcome(lambda: [{k: r[k] for k in ("collection", "ok", "violations")} for r in db.check()])
    finally:
        db.close(checkpoint=False)
    return out


def probe_grpc(path: str) -> dict:
    """The same questions over gRPC, to an in-process server over the directory."""
    import vdb
    from vdb.config import load_settings
    from vdb.service.server import create_server
    try:
        db = vdb.connect(path, checkpoint_interval_s=3600)
    except vdb.VdbError as e:
        return {"connect": [type(e).__name__, e.code.name, e.message]}
    server, port = create_server(db, load_settings({"port": 0}))
    server.start()
    try:
        with vdb.Client(f"127.0.0.1:{port}", retries=0, timeout=60) as client:
            return _calls(client)
    finally:
        server.stop(0).wait()
        db.close(checkpoint=False)


def check_cli(path: str) -> dict:
    """`vdbctl check PATH` through the CLI's own entry point; its exit code and what it printed."""
    from vdb.cli import cli
    try:
        cli.main(args=["check", path], prog_name="vdbctl")
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    sys.stdout.flush()
    sys.stderr.flush()
    return {"exit": code}


# -- the SIGKILL half of the poison matrix -------------------------------------------------------------------
def poison_writer(path: str, log: str) -> None:
    """Valid writes and poison between them, each outcome logged (after it happened) as one JSON line; then
    wait to be killed. The poison never reaches the WAL, so after the kill only the acknowledged writes exist."""
    import vdb
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    db = vdb.connect(path, checkpoint_interval_s=3600)
    db.create_collection("k", dim=4, exist_ok=True, bootstrap_rows=40)
    poison = [
        lambda i: db.upsert("k", [i], np.ones((1, 4), np.float32), payloads=[{"n": 10 ** 400}]),
        lambda i: db.upsert("k", [i], np.full((1, 4), np.nan, np.float32)),
        lambda i: db.upsert("k", [i, i], np.ones((2, 4), np.float32)),
        lambda i: db.upsert("k", [i], np.ones((1, 4), np.float32), payloads=[{"a.b": 1}]),
        lambda i: db.upsert("k", [i], np.ones((1, 4), np.float32), payloads=[{"s": "\ud800"}]),
        lambda i: db.upsert("k", [-i], np.ones((1, 4), np.float32)),
    ]
    rng = np.random.default_rng(7)
    for step in range(60):
        i = 1000 + step
        if step % 3 == 2:
            try:
                poison[step // 3 % len(poison)](i)
                os.write(fd, (json.dumps({"poison_acked": i}) + "\n").encode())
            except vdb.InvalidArgumentError:
                os.write(fd, (json.dumps({"refused": i}) + "\n").encode())
        else:
            db.upsert("k", [i], rng.normal(size=(1, 4)).astype(np.float32), payloads=[{"i": i}])
            os.write(fd, (json.dumps({"acked": i}) + "\n").encode())
    os.write(fd, b'{"done": true}\n')
    while True:
        time.sleep(60)
