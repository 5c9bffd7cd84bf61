"""Index benchmark: vdb's SPANN disk index against in-memory faiss (IVF-Flat, IVF-SQ8, HNSW M=32) and the disk
peers diskannpy (StaticDiskIndex) and LanceDB (IVF-PQ), all in the same run, searched single-threaded, with a
warm and a cold page cache. Also: scaling (vdb and IVF-SQ8 at smaller prefixes of the same data) and the INT8
study (per-dimension vs per-vector, recall and the kjv task metric). Writes one JSON with every number, the
machine and the git revision; `tools/bench_report.py` turns it into tables and plots (docs/benchmarks.md).

    bash tools/peers/setup.sh                                   # once: the peers' own virtualenvs
    .venv/bin/python tools/bench_index.py --out docs/benchmarks/bench_index.json
    .venv/bin/python tools/bench_index.py --n 100000 --scales 30000 --out /tmp/bi.json      # a quick try

Never run under pytest. Scratch space (data cache, indexes, peer venvs) lives under bench-data/ (git-ignored).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
from benchkit import datasets as D  # noqa: E402
from benchkit import external, faiss_systems, quant, vdb_system  # noqa: E402
from benchkit.config import RunConfig  # noqa: E402
from benchkit.measure import progress  # noqa: E402
from benchkit.summary import summarize  # noqa: E402
from vdb.eval.machine import git_revision, machine_info  # noqa: E402

LANCE_POINTS = ((4, 1), (16, 1), (64, 1), (2, 10), (4, 10), (8, 10), (16, 10), (32, 10), (64, 10))


def ints(v: str) -> list[int]:
    return [int(x) for x in v.split(",") if x]


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="synthetic base size (the main comparison)")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=10_000, help="synthetic query set generated (and its truth)")
    ap.add_argument("--eval-queries", type=int, default=5_000, help="the first N of them are searched")
    ap.add_argument("--scales", type=ints, default=[100_000, 300_000], help="extra sizes for the scaling table")
    ap.add_argument("--no-kjv", action="store_true", help="skip the kjv_books comparison")
    ap.add_argument("--skip", default="", help="comma list of systems to skip: diskann,lancedb,faiss,quant")
    ap.add_argument("--nprobes", type=ints, default=[1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128])
    ap.add_argument("--diskann-Ls", type=ints, default=[10, 15, 20, 30, 40, 60, 80, 120, 160])
    ap.add_argument("--diskann-R", type=int, default=64)
    ap.add_argument("--diskann-build-L", type=int, default=100)
    ap.add_argument("--n-single", type=int, default=500)
    ap.add_argument("--n-cold", type=int, default=100)
    ap.add_argument("--n-cold-batch", type=int, default=300)
    ap.add_argument("--quant-queries", type=int, default=2000)
    ap.add_argument("--cpu", type=int, default=1, help="CPU every search is pinned to (-1: none)")
    ap.add_argument("--data", default="bench-data/bench_index/data")
    ap.add_argument("--work", default="bench-data/bench_index/work")
    ap.add_argument("--venvs", default="bench-data/venvs")
    ap.add_argument("--out", default="bench-data/bench_index/bench_index.json")
    return ap.parse_args(argv)


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def compare(ds: D.Dataset, work: Path, cfg: RunConfig, args, skip: set) -> list[dict]:
    """Every system on one dataset, in one run; each point is scored against exact search."""
    systems = []
    t = time.perf_counter()
    systems.append(vdb_system.run(ds, work, args.nprobes, cfg))
    resident = systems[0]["ram"]["resident_bytes"]["total"]
    systems[0]["loadavg_after"] = loadavg()
    if "faiss" not in skip:
        systems += faiss_systems.run_all(ds, work, cfg)
    if "diskann" not in skip:
        pq_bytes = int(np.clip(round(resident / ds.n), 8, ds.base.shape[1]))  # vdb's RAM budget per vector
        systems.append(external.diskann(ds, work, Path(args.venvs), cfg, pq_bytes=pq_bytes, Ls=args.diskann_Ls,
                                        R=args.diskann_R, L=args.diskann_build_L))
    if "lancedb" not in skip:
        dim = ds.base.shape[1]
        systems.append(external.lancedb(ds, work, Path(args.venvs), cfg, partitions=int(round(np.sqrt(ds.n))),
                                        subvectors=dim // 4 if dim <= 128 else dim // 8, points=LANCE_POINTS))
    for s in systems:
        for p in s.get("points", []):
            p.update(D.score(ds, p.pop("ids"), cfg.k))
        s.setdefault("loadavg_after", loadavg())
    progress(f"[compare] {ds.name}: {time.perf_counter() - t:.0f} s")
    return systems


def scaling(args, data: Path, work: Path, cfg: RunConfig, skip: set) -> list[dict]:
    out = []
    for n in args.scales:
        ds = D.synthetic(data, n, args.queries, args.dim, full_n=args.n, use=args.eval_queries)
        systems = [vdb_system.run(ds, work, args.nprobes, cfg, full=False)]
        if "faiss" not in skip:
            systems += faiss_systems.run_all(ds, work, cfg, kinds=("ivf-sq8",), full=False)
        for s in systems:
            for p in s.get("points", []):
                p.update(D.score(ds, p.pop("ids"), cfg.k))
        out.append({"n": n, "dataset": ds.name, "systems": systems})
        del ds
    return out


def main(argv=None) -> None:
    args = parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    cfg = RunConfig(cpu=None if args.cpu < 0 else args.cpu, n_single=args.n_single, n_cold=args.n_cold,
                    n_cold_batch=args.n_cold_batch)
    data, work = Path(args.data), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    venvs = Path(args.venvs)
    result = {"benchmark": "bench_index", "command": " ".join([".venv/bin/python", "tools/bench_index.py",
                                                               *(argv if argv is not None else sys.argv[1:])]),
              "git_revision": git_revision(), "machine": {**machine_info(), "loadavg_start": loadavg(),
                                                          "mem_total_gib": _mem_gib()},
              "peer_versions": {"diskannpy": external.python_version(venvs / "diskann", "diskannpy"),
                                "diskann_numpy": external.python_version(venvs / "diskann", "numpy"),
                                "lancedb": external.python_version(venvs / "lancedb", "lancedb"),
                                "pyarrow": external.python_version(venvs / "lancedb", "pyarrow")},
              "config": {**vars(args), **cfg.__dict__}, "datasets": {}}
    out = Path(args.out)

    def checkpoint(stage: str) -> None:
        result.setdefault("stage_end_s", {})[stage] = round(time.perf_counter() - t0, 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".partial.json").write_text(json.dumps(result, indent=1, default=_json_default))

    main_ds = D.synthetic(data, args.n, args.queries, args.dim, full_n=args.n, use=args.eval_queries)
    result["datasets"][main_ds.name] = {"description": main_ds.description, "metric": main_ds.metric,
                                        "systems": compare(main_ds, work, cfg, args, skip)}
    checkpoint("compare_main")
    if "quant" not in skip:
        result["int8"] = [quant.study(main_ds, args.quant_queries)]
        checkpoint("int8_main")
    del main_ds
    result["scaling"] = scaling(args, data, work, cfg, skip)
    checkpoint("scaling")
    if not args.no_kjv:
        kjv = D.kjv(data)
        result["datasets"]["kjv"] = {"description": kjv.description, "metric": kjv.metric,
                                     "systems": compare(kjv, work, cfg, args, skip)}
        checkpoint("compare_kjv")
        if "quant" not in skip:
            result.setdefault("int8", []).append(quant.study(kjv, len(kjv.queries)))
            checkpoint("int8_kjv")
    result["summary"] = summarize(result)
    result["machine"]["loadavg_end"] = loadavg()
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    out.write_text(json.dumps(result, indent=1, default=_json_default))
    out.with_suffix(".partial.json").unlink(missing_ok=True)
    progress(f"wrote {out} ({result['wall_s']} s)")


def _mem_gib() -> float:
    return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


if __name__ == "__main__":
    main()
