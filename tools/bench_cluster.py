"""Cluster benchmark (issue 15): the replicated router's overhead against one node in the same run, and
failover time under load, on a 3-node Ray cluster simulated on this host (vdb/cluster/simulate.py).

Same run, same data, same machine, interleaved rounds:
  one node     a Database served by the ordinary gRPC server in a Ray actor (one hop: client -> node)
  1x2 cluster  1 shard, R=2, a router actor on the head node (client -> router -> a replica; writes also
               primary -> follower before the acknowledgement)
  1x2 primary, no router   the same cluster, the client talking to the shard's primary directly: separates
               the router's hop from the replication's cost
  2x2 cluster  2 shards, R=2 (every search visits both shards and is merged)
Measured per system: single-query search latency p50/p99 (one client thread, warm), search QPS with
--clients client threads, upsert latency p50/p99 (--upsert-batch vectors), and the ingest rate of the load.
Then failover: with searches and writes running through the 1x2 router, SIGKILL the primary; report the
searches that failed (must be 0), the write gap (kill -> next acknowledged write), the longest search during
it, and the time until the killed replica is back in sync. --kills repeats it.

All data fits in RAM (the page cache holds every file): these are warm, CPU-bound numbers on 2 shared cores,
where the client, the router and the replicas compete for the same CPUs.

    python tools/bench_cluster.py --n 100000 --dim 128 --out docs/benchmarks/cluster.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import vdb  # noqa: E402
from vdb.inputs.synthetic import clustered, clustered_queries  # noqa: E402

SEARCH = dict(top_k=10, nprobe=16, use_cache=False)


class NodeServer:
    """The one-node peer: vdb.connect + the same gRPC server code, in its own process (a Ray actor)."""

    def __init__(self, path: str):
        from vdb.config import load_settings
        from vdb.service.server import create_server
        self.db = vdb.connect(path)
        self.server, port = create_server(self.db, load_settings({"port": 0}))
        self.server.start()
        self._address = f"127.0.0.1:{port}"

    def address(self) -> str:
        return self._address

    def close(self) -> None:
        self.server.stop(0).wait()
        self.db.close()


def pct(a, q) -> float:
    return round(float(np.percentile(np.asarray(a) * 1e3, q)), 3)


def load_data(target, name, base, batch):
    t = time.perf_counter()
    with vdb.Client(target, timeout=120) as c:
        c.create_collection(name, base.shape[1])
        for s in range(0, len(base), batch):
            c.upsert(name, np.arange(s, min(s + batch, len(base))), base[s: s + batch])
        c.flush(name)
    return round(len(base) / (time.perf_counter() - t), 1)


def latency_round(target, name, queries, n, upsert_batch, dim, first_id):
    """Single-client search and upsert latencies (seconds)."""
    rng = np.random.default_rng(first_id)
    s_lat, u_lat = [], []
    with vdb.Client(target, retries=0) as c:
        for i in range(n):
            t = time.perf_counter()
            c.search(name, queries[i % len(queries)], **SEARCH)
            s_lat.append(time.perf_counter() - t)
            if i % 5 == 0:
                v = rng.normal(size=(upsert_batch, dim)).astype(np.float32)
                t = time.perf_counter()
                c.upsert(name, np.arange(first_id + i * upsert_batch, first_id + (i + 1) * upsert_batch), v)
                u_lat.append(time.perf_counter() - t)
    return s_lat, u_lat


def qps_round(target, name, queries, clients, seconds):
    stop, counts, errors = time.monotonic() + seconds, [0] * clients, [0]

    def run(k):
        with vdb.Client(target, retries=0) as c:
            i = k
            while time.monotonic() < stop:
                try:
                    c.search(name, queries[i % len(queries)], **SEARCH)
                    counts[k] += 1
                except vdb.VdbError:
                    errors[0] += 1
                i += clients
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(run, range(clients)))
    return sum(counts) / seconds, errors[0]


def failover(spec, target, name, queries, dim, seconds_before, kill_round):
    """SIGKILL shard 0's primary while searches and writes run through the router."""
    from vdb.cluster import deploy
    stop = threading.Event()
    searches, writes, errors = [], [], []

    def searcher():
        with vdb.Client(target, retries=0, timeout=60) as c:
            i = 0
            while not stop.is_set():
                t = time.perf_counter()
                try:
                    c.search(name, queries[i % len(queries)], **SEARCH)
                    searches.append((time.monotonic(), time.perf_counter() - t))
                except vdb.VdbError as e:
                    errors.append(repr(e))
                i += 1

    def writer():
        rng = np.random.default_rng(kill_round)
        with vdb.Client(target, retries=0, timeout=60) as c:
            i = 50_000_000 + kill_round * 1_000_000
            while not stop.is_set():
                try:
                    c.upsert(name, [i], rng.normal(size=(1, dim)).astype(np.float32))
                    writes.append(time.monotonic())
                except vdb.VdbError as e:
                    errors.append("write " + repr(e))
                i += 1
    threads = [threading.Thread(target=searcher) for _ in range(2)] + [threading.Thread(target=writer)]
    for t in threads:
        t.start()
    time.sleep(seconds_before)
    shard = deploy.status(spec)["shards"][0]
    slot = shard["primary"]
    pid = shard["members"][slot]["pid"]
    t_kill = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    back = None
    while time.monotonic() - t_kill < 120:
        m = deploy.status(spec)["shards"][0]
        if m["members"][slot]["pid"] not in (None, pid) and len(m["in_sync"]) == spec.replicas - 1 and \
                m["primary"] is not None:
            back = time.monotonic() - t_kill
            break
        time.sleep(0.1)
    time.sleep(2.0)
    stop.set()
    for t in threads:
        t.join(60)
    # The writer is sequential: the longest pause between two acknowledgements after the kill is the time
    # writes to the shard were unavailable (plus one normal write latency).
    acks = sorted(writes)
    pairs = [(a, b) for a, b in zip(acks, acks[1:]) if b > t_kill]
    gap = max(pairs, key=lambda p: p[1] - p[0]) if pairs else None
    window = (t_kill - 1.0, (gap[1] if gap else t_kill) + 1.0)
    during = [lat for t0, lat in searches if window[0] <= t0 <= window[1]]
    return {"failed_searches": sum(1 for e in errors if not e.startswith("write")),
            "failed_writes": sum(1 for e in errors if e.startswith("write")), "errors": errors[:5],
            "write_gap_s": round(gap[1] - gap[0], 3) if gap else None,
            "write_gap_started_after_kill_s": round(gap[0] - t_kill, 3) if gap else None,
            "longest_search_near_kill_ms": round(max(during) * 1e3, 1) if during else None,
            "killed_replica_back_in_sync_s": round(back, 2) if back else None,
            "searches": len(searches), "writes": len(writes)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=4, help="interleaved measurement rounds per system")
    ap.add_argument("--latency-n", type=int, default=500, help="single-client searches per round")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--qps-seconds", type=float, default=8.0)
    ap.add_argument("--upsert-batch", type=int, default=10)
    ap.add_argument("--kills", type=int, default=3, help="failover repetitions")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import ray
    from vdb.cluster import deploy
    from vdb.cluster.simulate import simulated_ray
    from vdb.cluster.spec import ClusterSpec
    base = clustered(args.n, args.dim, seed=0)
    queries = clustered_queries(args.queries, args.n, args.dim, seed=1)
    report = {"args": vars(args), "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                               "platform": platform.platform(),
                                               "loadavg_at_start": os.getloadavg()},  # the machine is shared
              "search": SEARCH, "systems": {}}
    with tempfile.TemporaryDirectory(prefix="vdb-bench-cluster-") as root, \
            simulated_ray(nodes=3, cpus=2) as (_rc, _workers):
        node = ray.remote(NodeServer).options(num_cpus=0.5).remote(f"{root}/node")
        targets = {"one node": ray.get(node.address.remote())}
        specs = {}
        for label, shards in (("1x2 cluster", 1), ("2x2 cluster", 2)):
            spec = ClusterSpec(data_root=f"{root}/{label[:3]}", name=f"b{shards}", shards=shards, replicas=2,
                               replica_cpus=0.5)
            out = deploy.up(spec, routers=1, router_port=0, wait_s=300)
            specs[label], targets[label] = spec, out["routers"][0]
            if shards == 1:  # the same cluster without the router hop: the client talks to the primary itself
                shard = out["shards"][0]
                targets["1x2 primary, no router"] = shard["members"][shard["primary"]]["address"]
        for label, target in targets.items():
            if label == "1x2 primary, no router":  # the 1x2 cluster's data, loaded through its router
                report["systems"][label] = {}
                continue
            rate = load_data(target, "bench", base, 2000)
            report["systems"][label] = {"ingest_vectors_per_s": rate}
            print(f"{label}: loaded {args.n} vectors at {rate}/s", flush=True)
        for label, target in targets.items():  # warm-up: page cache, JIT, channels
            latency_round(target, "bench", queries, 200, args.upsert_batch, args.dim, 90_000_000)
        raw = {label: {"s": [], "u": [], "qps": []} for label in targets}
        for r in range(args.rounds):
            for label, target in targets.items():
                s, u = latency_round(target, "bench", queries, args.latency_n, args.upsert_batch, args.dim,
                                     100_000_000 + r * 1_000_000)
                qps, errs = qps_round(target, "bench", queries, args.clients, args.qps_seconds)
                raw[label]["s"] += s
                raw[label]["u"] += u
                raw[label]["qps"].append(qps)
                assert errs == 0, f"{label}: {errs} search errors"
            print(f"round {r + 1}/{args.rounds} done", flush=True)
        one = None
        for label in targets:
            d = raw[label]
            row = {"search_p50_ms": pct(d["s"], 50), "search_p99_ms": pct(d["s"], 99),
                   "upsert_p50_ms": pct(d["u"], 50), "upsert_p99_ms": pct(d["u"], 99),
                   f"search_qps_{args.clients}_clients": round(float(np.median(d["qps"])), 1),
                   "qps_per_round": [round(q, 1) for q in d["qps"]]}
            one = one or row
            row["vs_one_node"] = {"search_p50": round(row["search_p50_ms"] / one["search_p50_ms"], 2),
                                  "upsert_p50": round(row["upsert_p50_ms"] / one["upsert_p50_ms"], 2),
                                  "search_qps": round(row[f"search_qps_{args.clients}_clients"] /
                                                      one[f"search_qps_{args.clients}_clients"], 2)}
            report["systems"][label].update(row)
            print(label, json.dumps(row), flush=True)
        report["failover"] = []
        for k in range(args.kills):
            f = failover(specs["1x2 cluster"], targets["1x2 cluster"], "bench", queries, args.dim, 3.0, k)
            report["failover"].append(f)
            print("failover", json.dumps(f), flush=True)
            deploy.wait_ready(specs["1x2 cluster"], 120)
        for spec in specs.values():
            deploy.down(spec)
        ray.get(node.close.remote())
    report["machine"]["loadavg_at_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
