"""Semantic cache benchmark (issue: semantic lookaside cache).

Workload generator (documented on docs/benchmarks.md):
  * a pool of P distinct "intents" (held-out query vectors of the dataset);
  * each search picks an intent with Zipf probability p(i) ~ 1 / (i + 1)^s (s = --zipf, default 1.1; the
    intent order is shuffled with the seed), then perturbs it with Gaussian noise of standard deviation
    sigma = --noise x (median distance from an intent to its nearest base vector) / sqrt(dim), so the
    perturbation moves a query by about `noise` nearest-neighbour distances: RAG agents re-asking almost the
    same question, users paging, a recommender re-scoring the same user;
  * 5% of operations are writes: half upserts of a new vector near a random intent, half deletes of a random
    existing id, one vector per write.
The same operation sequence runs against two identical collections, cache off and cache on (in-process,
single thread), then a no-repeat workload (every query a perturbation of a distinct base vector, none drawn
twice) measures the cache's overhead on misses. Search QPS counts only the time spent in search calls (the
writes fsync, identically in both runs); ops/s counts everything. A fraction of hits (--shadow) re-runs uncached
to measure false hits.

    python tools/bench_cache.py --dataset synthetic --n 1000000 --out bench-results/cache-1m.json
    python tools/bench_cache.py --dataset ../shared/data/kjv_books --out bench-results/cache-kjv.json

Disk-bound (issue 12): `--index DIR --base BASE.npy --queries Q.npy` reuse a built index (copied per run: the
writes change it), `--memory-budget-mb B` serves both collections from disk within B (O_DIRECT: a miss costs
device reads, the page cache holds none of the index), and `--interleave` runs every operation on the cache-off
and the cache-on collection one after the other (alternating which goes first), so a busy machine's swings
hit both alike; `first_pass` is the ratio over the first --first-pass searches, before the cache had a chance
to warm. The backends are warmed with no-repeat queries (kernels and their posting caches), never the stream's.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import vdb  # noqa: E402

vdb.tune_process()  # process-wide settings, as `vdbctl serve` applies them
from index import BuildParams, FlatIndex, build_index  # noqa: E402
from vdb.inputs.synthetic import clustered, clustered_queries  # noqa: E402


def load(args):
    if args.base:
        return np.load(args.base, mmap_mode="r"), np.load(args.queries).astype(np.float32), "l2"
    if args.dataset == "synthetic":
        return clustered(args.n, 128), clustered_queries(5000, args.n, 128), "l2"
    d = Path(args.dataset)
    return (np.load(d / "base.npy").astype(np.float32), np.load(d / "query.npy").astype(np.float32), "cosine")


def workload(base, intents, args, rng, repeats=True):
    """A list of ("search", vector) / ("upsert", id, vector) / ("delete", id) operations."""
    dim = base.shape[1]
    nn = FlatIndex(base[: min(len(base), 200_000)], "l2").search(intents[:500], 1)[1][:, 0]
    sigma = args.noise * float(np.median(np.sqrt(np.maximum(nn, 0)))) / np.sqrt(dim)
    p = 1.0 / (np.arange(len(intents)) + 1.0) ** args.zipf
    p /= p.sum()
    order = rng.permutation(len(intents))
    ops, next_id = [], len(base)
    fresh = iter(rng.permutation(len(base)))  # no-repeat queries start from distinct base vectors
    for _ in range(args.ops):
        r = rng.random()
        if r < args.writes / 2:
            v = intents[order[rng.choice(len(intents), p=p)]] + rng.normal(0, sigma, dim)
            ops.append(("upsert", next_id, v.astype(np.float32)))
            next_id += 1
        elif r < args.writes:
            ops.append(("delete", int(rng.integers(0, len(base)))))
        else:
            src = intents[order[rng.choice(len(intents), p=p)]] if repeats else \
                base[next(fresh)] + rng.normal(0, 4 * sigma, dim)
            ops.append(("search", (src + rng.normal(0, sigma, dim)).astype(np.float32)))
    return ops, sigma


def run_interleaved(dbs, ops, first_pass: int) -> dict:
    """Every op on both databases (off, on), alternating which goes first; per-database results as run()."""
    lat = {name: {"hit": [], "near-hit": [], "miss": [], "off": []} for name in dbs}
    order = {name: [] for name in dbs}  # search latencies in stream order, for the first-pass ratio
    for i, op in enumerate(ops):
        for name in (list(dbs) if i % 2 == 0 else list(dbs)[::-1]):
            db, use_cache = dbs[name], name == "on"
            if op[0] == "search":
                t = time.perf_counter()
                res = db.search("c", op[1], top_k=10, use_cache=use_cache, explain=True)
                dt = time.perf_counter() - t
                lat[name][res.explain["cache"]].append(dt)
                order[name].append(dt)
            elif op[0] == "upsert":
                db.upsert("c", [op[1]], op[2][None, :])
            else:
                db.delete("c", [op[1]])
    out = {name: _summarise(lat[name], len(ops), None) for name in dbs}
    for name in dbs:
        head = order[name][:first_pass]
        out[name]["first_pass_searches"] = len(head)
        out[name]["first_pass_qps"] = round(len(head) / sum(head), 1) if head else None
    return out


def _summarise(lat: dict, n_ops: int, wall: float | None) -> dict:
    searches = sum(len(v) for v in lat.values())
    search_s = sum(sum(v) for v in lat.values())
    return {"ops": n_ops, "searches": searches, **({"wall_s": round(wall, 3), "ops_per_s": round(n_ops / wall, 1)}
                                                   if wall else {}),
            "search_s": round(search_s, 3), "search_qps": round(searches / search_s, 1),
            **{f"{k}_n": len(v) for k, v in lat.items()},
            **{f"{k}_p50_ms": round(float(np.percentile(v, 50)) * 1e3, 4) for k, v in lat.items() if v},
            **{f"{k}_p99_ms": round(float(np.percentile(v, 99)) * 1e3, 4) for k, v in lat.items() if v}}


def run(db, ops, use_cache):
    lat = {"hit": [], "near-hit": [], "miss": [], "off": []}
    t0 = time.perf_counter()
    searches = 0
    for op in ops:
        if op[0] == "search":
            t = time.perf_counter()
            res = db.search("c", op[1], top_k=10, use_cache=use_cache, explain=True)
            lat[res.explain["cache"]].append(time.perf_counter() - t)
            searches += 1
        elif op[0] == "upsert":
            db.upsert("c", [op[1]], op[2][None, :])
        else:
            db.delete("c", [op[1]])
    return _summarise(lat, len(ops), time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="synthetic")
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--ops", type=int, default=20_000)
    ap.add_argument("--intents", type=int, default=2000)
    ap.add_argument("--zipf", type=float, default=1.1)
    ap.add_argument("--noise", type=float, default=0.05)
    ap.add_argument("--writes", type=float, default=0.05)
    ap.add_argument("--shadow", type=float, default=0.1)
    ap.add_argument("--cache-mb", type=float, default=64)
    ap.add_argument("--scratch", default="bench-data/cache")
    ap.add_argument("--out", default="bench-results/cache.json")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--index", default=None, help="a built index to reuse (with --base and --queries)")
    ap.add_argument("--base", default=None, help="the index's base vectors (.npy)")
    ap.add_argument("--queries", default=None, help="held-out queries of the same data (.npy): the intents")
    ap.add_argument("--memory-budget-mb", type=float, default=0.0, help="serve from disk within this (0: mmap)")
    ap.add_argument("--interleave", action="store_true", help="both collections op by op (see the docstring)")
    ap.add_argument("--first-pass", type=int, default=1000, help="searches the first-pass ratio counts")
    args = ap.parse_args()
    faiss.omp_set_num_threads(1)
    base, queries, metric = load(args)
    scratch = Path(args.scratch)
    shutil.rmtree(scratch, ignore_errors=True)
    bulk = Path(args.index) if args.index else scratch / "bulk"
    if not args.index:
        build_index(base, bulk, params=BuildParams(metric=metric))
    for name in ("off", "on"):
        shutil.copytree(bulk, scratch / f"idx-{name}")
    rng = np.random.default_rng(args.seed)
    intents = queries[: args.intents]
    ops, sigma = workload(base, intents, args, rng)
    fresh, _ = workload(base, intents, args, np.random.default_rng(args.seed + 1), repeats=False)
    results = {}
    if args.interleave:
        results.update(interleaved(args, scratch, ops, fresh))
    for name, cache_mb in (() if args.interleave else (("off", 0.0), ("on", args.cache_mb))):
        db = vdb.connect(scratch / f"data-{name}", cache_mb=cache_mb, cache_shadow_rate=args.shadow,
                         durability="fsync")
        db.attach_collection("c", scratch / f"idx-{name}")
        for op in ops[:200]:  # warm the page cache and the JIT the same way for both
            if op[0] == "search":
                db.search("c", op[1], top_k=10, use_cache=False)
        results[f"zipf_cache_{name}"] = run(db, ops, use_cache=cache_mb > 0)
        results[f"norepeat_cache_{name}"] = run(db, fresh, use_cache=cache_mb > 0)
        if cache_mb:
            results["cache_stats"] = db.stats("c")["cache"]
        db.close()
    on, off = results["zipf_cache_on"], results["zipf_cache_off"]
    s = results["cache_stats"]
    summary = {
        "hit_rate": round((on["hit_n"] + on["near-hit_n"]) / on["searches"], 4),
        "false_hit_rate": s["false_hit_rate"], "false_hits": s["false_hits"], "shadow_checks": s["shadow_checks"],
        "search_qps_ratio_cache_on_vs_off": round(on["search_qps"] / off["search_qps"], 2),
        "ops_ratio_cache_on_vs_off": round(on["ops_per_s"] / off["ops_per_s"], 2) if "ops_per_s" in on else None,
        "hit_p50_ms": on.get("hit_p50_ms"), "miss_p50_ms": on.get("miss_p50_ms"), "off_p50_ms": off.get("off_p50_ms"),
        "norepeat_search_slowdown_pct": round(100 * (1 - results["norepeat_cache_on"]["search_qps"]
                                                     / results["norepeat_cache_off"]["search_qps"]), 2),
    }
    if args.interleave:
        summary["first_pass_qps_ratio"] = round(on["first_pass_qps"] / off["first_pass_qps"], 2)
        summary["first_pass_searches"] = on["first_pass_searches"]
    out = {"benchmark": "bench_cache", "dataset": args.dataset, "n": int(len(base)), "metric": metric,
           "params": {k: v for k, v in vars(args).items() if k not in ("out", "scratch")}, "noise_sigma": sigma,
           "machine": platform.platform(), "summary": summary, **results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


def interleaved(args, scratch: Path, ops, fresh) -> dict:
    """Both collections open at once, every op on both (run_interleaved); the no-repeat stream the same way."""
    dbs = {}
    for name, cache_mb in (("off", 0.0), ("on", args.cache_mb)):
        dbs[name] = vdb.connect(scratch / f"data-{name}", cache_mb=cache_mb, cache_shadow_rate=args.shadow,
                                durability="fsync", memory_budget_mb=args.memory_budget_mb)
        dbs[name].attach_collection("c", scratch / f"idx-{name}")
    warm = [op for op in fresh if op[0] == "search"][-300:]   # not the streams' own queries
    for db in dbs.values():
        for op in warm:
            db.search("c", op[1], top_k=10, use_cache=False)
    results = {}
    zipf = run_interleaved(dbs, ops, args.first_pass)
    norepeat = run_interleaved(dbs, fresh[: len(fresh) - 2 * len(warm)], args.first_pass)
    for name in dbs:
        results[f"zipf_cache_{name}"], results[f"norepeat_cache_{name}"] = zipf[name], norepeat[name]
    results["cache_stats"] = dbs["on"].stats("c")["cache"]
    results["disk_io"] = {name: db.collection("c").index.disk.io_stats() if args.memory_budget_mb else None
                          for name, db in dbs.items()}
    for db in dbs.values():
        db.close()
    return results


if __name__ == "__main__":
    main()
