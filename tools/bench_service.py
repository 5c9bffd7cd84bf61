"""gRPC service load benchmark (issue: the gRPC service).

A 1M x 128 collection (bulk-built, attached) is served by a `vdbctl serve` process. For each concurrency level
(default 1, 4, 16) that many client *processes* run a mixed workload for --seconds: 90% single-query searches
(top_k 10), 10% upserts of --upsert-batch new vectors. Reported per level and RPC: QPS, p50/p99, errors (must
be 0). Before the server starts, the same searches run in-process (vdb.connect on the same directory) so the
gRPC overhead is measured on the same index and recall: single-query p50 and a batch of 100 queries.

    python tools/bench_service.py --n 1000000 --seconds 60 --out bench-results/service-1m.json
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import vdb  # noqa: E402

vdb.tune_process()  # process-wide settings, as `vdbctl serve` applies them
from index import BuildParams, FlatIndex, build_index, recall_at_k  # noqa: E402
from vdb.service import convert  # noqa: E402
from vdb.v1 import vector_db_pb2 as pb  # noqa: E402
from vdb.inputs.synthetic import clustered, clustered_queries  # noqa: E402
from benchkit.grpc_echo import floor_p50  # noqa: E402

RESPONSE_BYTES = 64  # about a SearchResponse with 10 ids and distances (56 bytes)


def client_loop(target, queries, seconds, seed, upsert_batch, dim, out):
    rng = np.random.default_rng(seed)
    lat = {"Search": [], "Upsert": []}
    errors, messages = 0, []
    next_id = 10_000_000 + seed * 1_000_000
    with vdb.Client(target, retries=0) as c:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t = time.perf_counter()
            try:
                if rng.random() < 0.9:
                    c.search("bench", queries[rng.integers(0, len(queries))], top_k=10, use_cache=False)
                    kind = "Search"
                else:
                    v = queries[rng.integers(0, len(queries), upsert_batch)] + rng.normal(0, 0.5, (upsert_batch, dim))
                    c.upsert("bench", np.arange(next_id, next_id + upsert_batch), v.astype(np.float32))
                    next_id += upsert_batch
                    kind = "Upsert"
                lat[kind].append(time.perf_counter() - t)
            except vdb.VdbError as e:
                errors += 1
                if len(messages) < 5:
                    messages.append(f"{kind_of(e)}: {e}"[:300])
    out.put({"lat": lat, "errors": errors, "messages": messages})


def kind_of(e) -> str:
    code = getattr(e, "code", None)
    return f"{type(e).__name__}({getattr(code, 'name', code)})"


def summarize(results, seconds):
    out = {"errors": sum(r["errors"] for r in results),
           "error_messages": [m for r in results for m in r["messages"]][:10]}
    for kind in ("Search", "Upsert"):
        a = np.concatenate([np.array(r["lat"][kind]) for r in results]) if results else np.zeros(0)
        if len(a):
            out[kind] = {"qps": round(len(a) / seconds, 1), "p50_ms": round(float(np.percentile(a, 50)) * 1e3, 3),
                         "p99_ms": round(float(np.percentile(a, 99)) * 1e3, 3), "n": int(len(a))}
    return out


def in_process(data, queries, nprobe):
    db = vdb.connect(data)
    try:
        for q in queries[:200]:
            db.search("bench", q, top_k=10, nprobe=nprobe, use_cache=False)
        lat = []
        for q in queries[:2000]:
            t = time.perf_counter()
            db.search("bench", q, top_k=10, nprobe=nprobe, use_cache=False)
            lat.append(time.perf_counter() - t)
        batches = []
        for s in range(0, 2000, 100):
            t = time.perf_counter()
            db.search("bench", queries[s: s + 100], top_k=10, nprobe=nprobe, use_cache=False)
            batches.append(time.perf_counter() - t)
        ids, _ = db.search("bench", queries[:1000], top_k=10, nprobe=nprobe, use_cache=False)
    finally:
        db.close()
    return np.array(lat), np.array(batches), ids


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--levels", default="1,4,16")
    ap.add_argument("--nprobe", type=int, default=32)
    ap.add_argument("--upsert-batch", type=int, default=10)
    ap.add_argument("--scratch", default="bench-data/service")
    ap.add_argument("--out", default="bench-results/service.json")
    args = ap.parse_args()
    scratch = Path(args.scratch)
    import shutil
    shutil.rmtree(scratch, ignore_errors=True)
    x = clustered(args.n, 128)
    queries = clustered_queries(10_000, args.n, 128)
    build_index(x, scratch / "idx", params=BuildParams())
    with vdb.connect(scratch / "data") as db:
        db.attach_collection("bench", scratch / "idx")
    truth, _ = FlatIndex(x, "l2").search(queries[:1000], 10)
    lat, batches, ids = in_process(scratch / "data", queries, args.nprobe)
    proc = subprocess.Popen([sys.executable, "-m", "vdb.cli", "serve", "--data", str(scratch / "data"), "--port",
                             "0", "--set", f"workers={max(16, max(int(x) for x in args.levels.split(',')) * 2)}"],
                            stderr=subprocess.PIPE, text=True)
    target = next(json.loads(line)["serving"] for line in proc.stderr if line.startswith("{"))
    server_log = open(scratch / "server.log", "w")  # keep draining stderr: a full pipe would block the server
    threading.Thread(target=lambda: server_log.writelines(proc.stderr), daemon=True).start()
    result = {"benchmark": "bench_service", "n": args.n, "nprobe": args.nprobe, "seconds": args.seconds,
              "upsert_batch": args.upsert_batch, "machine": platform.platform(), "levels": {}}
    try:
        with vdb.Client(target) as c:
            for q in queries[:200]:
                c.search("bench", q, top_k=10, nprobe=args.nprobe, use_cache=False)
            glat = []
            for q in queries[:2000]:
                t = time.perf_counter()
                c.search("bench", q, top_k=10, nprobe=args.nprobe, use_cache=False)
                glat.append(time.perf_counter() - t)
            gb = []
            for s in range(0, 2000, 100):
                t = time.perf_counter()
                c.search("bench", queries[s: s + 100], top_k=10, nprobe=args.nprobe, use_cache=False)
                gb.append(time.perf_counter() - t)
            gids, _ = c.search("bench", queries[:1000], top_k=10, nprobe=args.nprobe, use_cache=False)
        # the framework floor: a bare Python gRPC server, same payload sizes, same client process
        req = pb.SearchRequest(collection="bench", query=convert.to_vectors(queries[:1]),
                                                 params=convert.search_params(10, args.nprobe, None, None, None,
                                                                              False, False, False))
        echo = subprocess.Popen([sys.executable, str(Path(__file__).parent / "benchkit" / "grpc_echo.py"),
                                 str(RESPONSE_BYTES), "32"], stderr=subprocess.PIPE, text=True)
        try:
            echo_target = next(json.loads(line)["serving"] for line in echo.stderr if line.startswith("{"))
            floor = floor_p50(echo_target, req.SerializeToString())
        finally:
            echo.kill()
            echo.wait()
        result["overhead"] = {
            "recall_in_process": round(recall_at_k(ids, truth, 10), 4),
            "recall_grpc": round(recall_at_k(gids, truth, 10), 4),
            "single_p50_ms_in_process": round(float(np.median(lat)) * 1e3, 3),
            "single_p50_ms_grpc": round(float(np.median(glat)) * 1e3, 3),
            "single_p50_overhead_ms": round(float(np.median(glat) - np.median(lat)) * 1e3, 3),
            "bare_grpc_roundtrip_p50_ms": round(floor * 1e3, 3),
            "overhead_above_bare_grpc_ms": round(float(np.median(glat) - np.median(lat) - floor) * 1e3, 3),
            "batch100_ms_in_process": round(float(np.median(batches)) * 1e3, 3),
            "batch100_ms_grpc": round(float(np.median(gb)) * 1e3, 3),
            "batch100_overhead_pct": round(100 * (float(np.median(gb)) / float(np.median(batches)) - 1), 1),
        }
        print(json.dumps(result["overhead"]), file=sys.stderr)
        ctx = mp.get_context("spawn")
        for level in [int(v) for v in args.levels.split(",")]:
            out = ctx.Queue()
            procs = [ctx.Process(target=client_loop, args=(target, queries, args.seconds, i, args.upsert_batch, 128, out))
                     for i in range(level)]
            for p in procs:
                p.start()
            results = [out.get() for _ in procs]
            for p in procs:
                p.join()
            result["levels"][str(level)] = summarize(results, args.seconds)
            print(level, json.dumps(result["levels"][str(level)]), file=sys.stderr)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=300)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
