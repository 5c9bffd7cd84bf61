"""Slow readers against a real `vdbctl serve`: clients that ask for large answers and never read them.

For each answer budget (`max_inflight_answers_mb`), a fresh server over the same small collection gets N raw HTTP/2
connections (tests/trust/slowclient.py: a flow-control window of 1 byte, never a WINDOW_UPDATE) that each start one
BatchSearch whose packed answer is about 24 MB, then the server's RSS is read from /proc and a normal client's
`count` is timed. The JSON has one row per budget. Never run by pytest.

    .venv/bin/python tools/bench_slow_readers.py --budgets 64,256,4096 --out docs/benchmarks/slow-readers.json
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "trust"))
import vdb  # noqa: E402
from slowclient import SlowReader  # noqa: E402
from vdb.service import convert  # noqa: E402
from vdb.v1 import vector_db_pb2 as pb  # noqa: E402


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) / 1024


def serve(data: Path, budget_mb: float):
    proc = subprocess.Popen([sys.executable, "-m", "vdb.cli", "serve", "--data", str(data), "--port", "0",
                             "--set", f"max_inflight_answers_mb={budget_mb}"], stderr=subprocess.PIPE, text=True)
    while True:
        line = proc.stderr.readline()
        if not line:
            raise SystemExit("the server did not start")
        if line.startswith("{") and "serving" in line:
            port = int(json.loads(line)["serving"].rsplit(":", 1)[1])
            break
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # drain its log
    return proc, port


def run(budget_mb: float, data: Path, readers: int, settle_s: float) -> dict:
    proc, port = serve(data, budget_mb)
    try:
        q = np.random.default_rng(1).normal(size=(200, 8)).astype(np.float32)
        req = pb.BatchSearchRequest(collection="c", queries=convert.to_vectors(q), packed=True,
                                    params=convert.search_params(10_000, use_cache=False)).SerializeToString()
        before = rss_mb(proc.pid)
        conns = []
        for _ in range(readers):
            r = SlowReader("127.0.0.1", port)
            r.call("BatchSearch", req)
            conns.append(r)
        time.sleep(settle_s)  # let every call be answered or refused: this measures memory, not speed
        after = rss_mb(proc.pid)
        with vdb.Client(f"127.0.0.1:{port}", retries=0) as c:
            t = time.perf_counter()
            c.count("c")
            count_s = time.perf_counter() - t
        for r in conns:
            r.close()
        return {"budget_mb": budget_mb, "slow_readers": readers, "answer_mb_each": round(200 * 10_000 * 12 / 2**20, 1),
                "rss_before_mb": round(before), "rss_with_slow_readers_mb": round(after),
                "rss_growth_mb": round(after - before), "normal_count_s": round(count_s, 3)}
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budgets", default="64,256,4096")
    ap.add_argument("--readers", type=int, default=30)
    ap.add_argument("--settle-s", type=float, default=20.0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    data = Path(tempfile.mkdtemp()) / "data"
    with vdb.connect(data) as db:
        db.create_collection("c", dim=8, bootstrap_rows=100_000)  # exact search over the memtable
        db.upsert("c", np.arange(10_000), np.random.default_rng(0).normal(size=(10_000, 8)).astype(np.float32))
    try:
        rows = [run(float(b), data, args.readers, args.settle_s) for b in args.budgets.split(",")]
    finally:
        shutil.rmtree(data.parent, ignore_errors=True)
    out = {"benchmark": "slow readers", "command": " ".join(sys.argv), "rows": rows,
           "note": "RSS of the vdbctl serve process; a budget of 4096 MB is more than the answers need (no limit)"}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
