"""`make demo`: the whole product on the embedded default dataset, in about two minutes.

  1. generate 100,000 x 128 clustered vectors (deterministic, vdb/inputs/synthetic.py) and 1,000 queries;
  2. `vdbctl build` them into a SPANN index directory;
  3. `vdbctl serve` that directory as a collection (a separate server process on a free loopback port);
  4. over gRPC with vdb.Client: search (recall@10 against exact search, latency), upsert new vectors and find
     them at once, delete some, filter by payload, repeat queries through the semantic cache, read stats;
  5. stop the server with SIGTERM (it drains and checkpoints), then a short task-centric evaluation
     (`vdbctl eval synthetic --quick`) and its information-loss funnel.

    python -m vdb.demo [--n 100000] [--dir demo-data]
"""
from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def say(title: str, **values) -> None:
    print(f"\n== {title}")
    for k, v in values.items():
        print(f"   {k:<34} {v}")


def start_server(data: Path, index: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "vdb.cli", "serve", "--data", str(data), "--port", "0",
                             "--attach", f"demo={index}", "--set", "cache_mb=32"],
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if line.startswith("{"):
            return proc, json.loads(line)["serving"]
    raise SystemExit(f"the server did not start (exit code {proc.wait()})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dir", default="demo-data")
    args = ap.parse_args()
    import vdb
    from index import FlatIndex, recall_at_k
    from vdb.inputs.synthetic import clustered, clustered_queries

    root = Path(args.dir)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    t = time.perf_counter()
    base, queries = clustered(args.n, 128), clustered_queries(1000, args.n, 128)
    np.save(root / "base.npy", base)
    np.save(root / "queries.npy", queries)
    say("1. data", vectors=f"{args.n} x 128 clustered (Zipf-sized anisotropic clusters)", queries=len(queries),
        seconds=round(time.perf_counter() - t, 1))

    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "vdb.cli", "build", str(root / "base.npy"), "--out",
                          str(root / "index"), "--quiet"], check=True, capture_output=True, text=True)
    summary = json.loads(out.stdout)
    say("2. vdbctl build", heads=summary["n_heads"], posting_lengths=summary["posting_lengths"],
        replicas_mean=summary["replicas_mean"], seconds=round(time.perf_counter() - t, 1))

    proc, target = start_server(root / "data", root / "index")
    say("3. vdbctl serve", address=target, collection="demo (the built index, attached without re-ingest)")
    try:
        with vdb.Client(target) as c:
            query_over_grpc(c, base, queries, FlatIndex, recall_at_k)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
    say("5. SIGTERM", exit_code=code, note="drained in-flight RPCs, checkpointed every collection")
    evaluate(root)


def query_over_grpc(c, base, queries, FlatIndex, recall_at_k) -> None:
    truth, _ = FlatIndex(base, "l2").search(queries, 10)
    for nprobe in (8, 32):
        lat = []
        for q in queries[:300]:
            t = time.perf_counter()
            c.search("demo", q, top_k=10, nprobe=nprobe, use_cache=False)
            lat.append(time.perf_counter() - t)
        t = time.perf_counter()
        ids, _ = c.search("demo", queries, top_k=10, nprobe=nprobe, use_cache=False)
        batch = time.perf_counter() - t
        say(f"4a. search over gRPC, nprobe={nprobe}", recall_at_10=round(recall_at_k(ids, truth, 10), 4),
            single_query_p50_ms=round(float(np.percentile(lat, 50)) * 1e3, 3),
            single_query_p99_ms=round(float(np.percentile(lat, 99)) * 1e3, 3),
            batch_of_1000_qps=round(len(queries) / batch))
    rng = np.random.default_rng(1)
    new = (base[rng.integers(0, len(base), 500)] + rng.normal(0, 0.5, (500, 128))).astype(np.float32)
    new_ids = np.arange(10_000_000, 10_000_500)
    lsn = c.upsert("demo", new_ids, new, payloads=[{"source": "demo", "n": int(i)} for i in range(500)])
    found, _ = c.search("demo", new[:50], top_k=1, use_cache=False)
    c.delete("demo", new_ids[:100])
    gone, _ = c.search("demo", new[:100], top_k=1, use_cache=False)
    filtered = c.search("demo", new[200], top_k=5, filter={"n": {"$gte": 150, "$lt": 250}}, explain=True)
    say("4b. writes over gRPC", upsert_lsn=lsn,
        new_vectors_found_immediately=f"{int((found[:, 0] == new_ids[:50]).sum())}/50",
        deleted_ids_returned=int(np.isin(gone[:, 0], new_ids[:100]).sum()), count=c.count("demo"),
        filtered_ids=filtered.ids.tolist(), filter_path=filtered.explain["path"])
    for _ in range(3):
        for q in queries[:200]:
            c.search("demo", q, top_k=10)
    cache = c.stats("demo")["cache"]
    say("4c. semantic cache (200 queries asked 3 times)", hits=cache["hits"], misses=cache["misses"],
        hit_rate=round(cache["hit_rate"], 3), false_hits=f"{cache['false_hits']} in {cache['shadow_checks']} "
                                                          f"shadow checks")
    st = c.stats("demo")
    say("4d. stats", pending_rows=st["pending_rows"], wal_bytes=st["wal"].get("bytes"),
        postings=st["maintenance"]["postings"], splits=st["maintenance"]["splits"],
        resident_bytes=st["index"]["resident_bytes"]["total"])


def evaluate(root: Path) -> None:
    from vdb.eval.datasets import load_dataset
    from vdb.eval.report import write_outputs
    from vdb.eval.runner import EvalConfig, run_eval
    t = time.perf_counter()
    result = run_eval(load_dataset("synthetic"), root / "eval", EvalConfig(quick=True, progress=False))
    write_outputs(result, root / "eval", command="vdbctl eval synthetic --quick")
    f = result.funnel
    lines = {name: (f"{loss:+.4f}" if loss is not None else "not measured") for name, loss in f.stages()}
    say(f"6. vdbctl eval synthetic --quick: funnel of {f.task}", ceiling=f"{f.ceiling:.4f} (exact, "
        f"{f.best_metric})", **lines, served=f"{f.final:.4f} at {f.served_point}",
        seconds=round(time.perf_counter() - t, 1))
    print(f"\nfull report: {root / 'eval' / 'report.md'}")


if __name__ == "__main__":
    main()
