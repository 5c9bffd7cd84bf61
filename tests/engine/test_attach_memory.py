"""The public path (vdb.connect + attach_collection + search, what `vdbctl serve --attach` runs) in a real memory
cgroup: a process that has paid its fixed costs (interpreter, libraries, compiled kernels) gets a limit of what
it holds plus the index's resident structures, its memory_budget_mb and a small slack, and must open a 1M-row
index and serve from it without being OOM-killed.

Regressions: opening grew an int64 id per row (8 bytes, 16 at the peak while copying) and searched through mmap
(at 10M x 128 the opened collection held 462 MB anonymous, peak 671 MB, and a 512 MiB cgroup killed it while
opening: docs/benchmarks.md); a delete of an unknown id made whole-array temporaries of ~24 bytes per row; the
first filtered search built a dict of every id (~100 bytes per row). Needs root and the cgroup v1 memory controller (skipped otherwise, saying why).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from index import BuildParams, SpannIndex, build_index

ROOT = Path(__file__).resolve().parents[2]
CGROUP_V1 = Path("/sys/fs/cgroup/memory")
N, DIM = 1_000_000, 8
BUDGET_MB = 4.0     # the collection's memory_budget_mb: resident structures + the posting cache
SLACK_MB = 16.0     # a search's buffers and temporaries, the WAL, LMDB's reads (page cache counts too)

CHILD = textwrap.dedent("""
    import json, sys, tempfile
    import numpy as np
    def step(name):  # where a kill happened, and what the process owned then (stderr ends up in the report)
        anon = [l for l in open("/proc/self/status") if l.startswith("RssAnon")][0].split()[1]
        print(f"{name}: RssAnon {anon} kB", file=sys.stderr, flush=True)
    import vdb
    from index.spann import release_free_memory
    index_dir, data_dir, budget = sys.argv[1], sys.argv[2], float(sys.argv[3])
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as warm:     # fixed costs first: kernels loaded, libraries initialised
        with vdb.connect(warm, memory_budget_mb=budget) as db:
            db.create_collection("w", dim=%(dim)d, bootstrap_rows=1000)
            db.upsert("w", np.arange(1500), rng.normal(size=(1500, %(dim)d)).astype(np.float32))
            db.flush("w")
            for q in rng.normal(size=(20, %(dim)d)).astype(np.float32):
                db.search("w", q, top_k=10)
    release_free_memory()
    print("READY", flush=True)
    step("ready")
    assert sys.stdin.readline().strip() == "GO"
    db = vdb.connect(data_dir, memory_budget_mb=budget)
    db.attach_collection("big", index_dir)
    step("attached")
    queries = np.load(index_dir + "/../queries.npy")
    found = [db.search("big", q, top_k=10).ids.tolist() for q in queries]
    step("searched")
    db.upsert("big", [10_000_000], queries[:1] * 1.0, payloads=[{"g": "a"}])  # read-your-writes on the disk path
    fresh = db.search("big", queries[0], top_k=1).ids.tolist()
    step("upserted")
    db.delete("big", [123_456_789])                     # an unknown id: a pass over every row
    step("deleted")
    filtered = db.search("big", queries[0], top_k=3, filter={"g": "a"}).ids.tolist()  # builds the payload index
    step("filtered")
    disk = db.collection("big").index.serves_from_disk
    db.close()
    print(json.dumps({"found": found, "fresh": fresh, "disk": disk, "filtered": filtered}), flush=True)
""") % {"dim": DIM}


def _cgroup_or_skip() -> Path:
    if os.geteuid() != 0:
        pytest.skip("needs root to create a memory cgroup")
    if not (CGROUP_V1 / "memory.limit_in_bytes").exists():
        pytest.skip(f"no cgroup v1 memory controller at {CGROUP_V1}")
    path = CGROUP_V1 / f"vdb-test-attach-{os.getpid()}"
    try:
        path.mkdir(exist_ok=True)
        (path / "memory.limit_in_bytes").write_text(str(4 << 30))
    except OSError as e:
        pytest.skip(f"cannot create a memory cgroup under {CGROUP_V1}: {e}")
    return path


def _read(cg: Path, name: str) -> int:
    return int((cg / name).read_text().split()[0])


def _oom_kills(cg: Path) -> int:
    text = (cg / "memory.oom_control").read_text()
    return int(text.split("oom_kill ")[1].split()[0]) if "oom_kill " in text else 0


@pytest.fixture(scope="module")
def big_index(tmp_path_factory):
    root = tmp_path_factory.mktemp("attach-mem")
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 4, (200, DIM)).astype(np.float32)
    x = centres[rng.integers(0, 200, N)] + rng.normal(size=(N, DIM)).astype(np.float32)
    # few heads, one replica, no calibration: the build takes seconds; the per-row structures are what matter
    build_index(x, root / "index", params=BuildParams(head_ratio=0.0005, max_replicas=1, candidates=4,
                                                      train_samples=2000, target_recall=0))
    np.save(root / "queries.npy", x[rng.integers(0, N, 40)] + 0.01)
    return root / "index", x


def test_attach_and_search_a_1m_row_index_inside_a_tight_memory_cgroup(tmp_path, big_index):
    path, x = big_index
    with SpannIndex.open(path) as idx:
        resident = idx.resident_bytes()["total"]
    cg = _cgroup_or_skip()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(tmp_path / "data"), str(BUDGET_MB)],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: (cg / "cgroup.procs").write_text(str(os.getpid())))
    try:
        assert proc.stdout.readline().strip() == "READY", proc.stderr.read()
        baseline = _read(cg, "memory.usage_in_bytes")
        # what the process holds now + the index's resident structures + its budget + slack: the per-row id
        # array alone (8 MB, 16 MB at the peak) does not fit
        allowance = resident + int((BUDGET_MB + SLACK_MB) * 2**20)
        (cg / "memory.limit_in_bytes").write_text(str(baseline + allowance))
        (cg / "memory.max_usage_in_bytes").write_text("0")
        kills = _oom_kills(cg)
        out, err = proc.communicate("GO\n", timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    peak = _read(cg, "memory.max_usage_in_bytes")
    killed = _oom_kills(cg) - kills
    (cg / "memory.limit_in_bytes").write_text(str(4 << 30))
    cg.rmdir()
    report = (f"exit {proc.returncode}, OOM kills {killed}, cgroup peak {peak - baseline:,} bytes over the "
              f"{baseline:,} held before opening (allowed {allowance:,}); stderr: {err[-1500:]}")
    print(report)
    assert proc.returncode == 0 and killed == 0, report
    res = json.loads(out.strip().splitlines()[-1])
    assert res["disk"] is True
    assert res["fresh"] == [10_000_000] and res["filtered"] == [10_000_000, -1, -1]
    queries = np.load(path.parent / "queries.npy")
    for q, ids in zip(queries, res["found"]):  # the answers are right, not only affordable
        nearest = int(np.argmin(((x - q) ** 2).sum(1)))
        assert nearest in ids
