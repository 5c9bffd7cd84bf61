"""Indexes larger than RAM (issue 12): vdb served from disk under a memory cgroup against faiss IVF-SQ8 read back
with IO_FLAG_MMAP in the same cgroup, with the device's own limit (fio) as the last row.

    .venv/bin/python tools/bench_disk.py prepare --dataset c128            # 10M x 128 + queries + exact truth
    .venv/bin/python tools/bench_disk.py build   --dataset c128            # vdb build and faiss build, same run
    .venv/bin/python tools/bench_disk.py serve   --dataset c128 --limit-mb 1024 --out docs/benchmarks/disk-c128-1024.json
    .venv/bin/python tools/bench_disk.py plot    docs/benchmarks/disk-c128-*.json

`serve` (as root) makes a cgroup v1 memory group with memory.limit_in_bytes = --limit-mb (page cache counts),
runs each system in a child process inside it (tools/benchkit/diskrun.py: open, warm-up, single queries per
operating point, 2-16 in flight), reads the group's peak and OOM counters, then runs fio on vdb's posting file
(4 KiB random reads, O_DIRECT: depth-1 latency, depth-32 IOPS). vdb gets memory_budget_mb = the limit minus
what the process holds before it opens anything (interpreter, libraries) minus --headroom-mb.

Datasets (bench-data/disk/, git-ignored): c128 = vdb.inputs.synthetic.clustered(10M, 128) (the same mixture and
stream, generated in blocks: tools/benchkit/bigdata.py), c96 = ClusteredMixture(96, 1000 clusters, seed 7,
spread 0.8), another generator's 10M x 96. Never run under pytest.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
from benchkit.bigdata import dataset_files  # noqa: E402
from benchkit.memwatch import MemCgroup, PeakAnon  # noqa: E402
from vdb.eval.machine import git_revision, machine_info  # noqa: E402
from vdb.inputs.synthetic import ClusteredMixture, default_clusters  # noqa: E402

WORK = ROOT / "bench-data" / "disk"
DATASETS = {"c128": ("clustered", lambda: ClusteredMixture(128, default_clusters(10_000_000), 0)),
            "c96": ("clustered96", lambda: ClusteredMixture(96, 1000, 7, spread=0.8))}


def files_of(args) -> dict:
    name, mix = DATASETS[args.dataset]
    return dataset_files(WORK / "data", name, args.n, args.nq, mix())


def index_paths(args) -> tuple[Path, Path]:
    tag = f"{args.dataset}-{args.n}"
    return WORK / "index" / f"vdb-{tag}", WORK / "index" / f"faiss-ivfsq8-{tag}.index"


def cmd_build(args) -> dict:
    """vdb's build and faiss IVF-SQ8's, one after the other in this process; time and peak anonymous memory."""
    import faiss
    from index.build import build_index
    from index.types import BuildParams
    f = files_of(args)
    base = np.load(f["base"], mmap_mode="r")
    vdb_dir, faiss_file = index_paths(args)
    vdb_dir.parent.mkdir(parents=True, exist_ok=True)
    out = {"dataset": args.dataset, "n": args.n, "command": " ".join(sys.argv), "git_revision": git_revision(),
           "machine": machine_info(), "loadavg_start": os.getloadavg()}
    if "vdb" in args.systems:
        with PeakAnon(0.05) as peak:
            t = time.perf_counter()
            summary = build_index(base, vdb_dir, params=BuildParams(**json.loads(args.build_params)), overwrite=True)
            out["vdb"] = {"build_s": round(time.perf_counter() - t, 1), "anon_peak_bytes": peak.peak,
                          "build_params": json.loads(args.build_params),
                          "timings_s": summary["timings_s"], "calibration": summary.get("calibration"),
                          "stats": {k: v for k, v in summary.items() if k not in ("timings_s", "calibration")}}
        print(f"[build] vdb {out['vdb']['build_s']} s, peak anon {peak.peak / 2**30:.2f} GiB", flush=True)
    if "faiss" in args.systems:
        faiss.omp_set_num_threads(2)
        with PeakAnon(0.05) as peak:
            t = time.perf_counter()
            index = faiss.index_factory(base.shape[1], args.faiss_factory)
            rng = np.random.default_rng(1)
            sample = np.ascontiguousarray(base[np.sort(rng.choice(len(base), args.faiss_train, replace=False))])
            index.train(sample)
            del sample
            for s in range(0, len(base), 250_000):
                index.add(np.ascontiguousarray(base[s: s + 250_000], dtype=np.float32))
            faiss.write_index(index, str(faiss_file))
            seconds = time.perf_counter() - t
        del index
        out["faiss"] = {"factory": args.faiss_factory, "build_s": round(seconds, 1), "anon_peak_bytes": peak.peak,
                        "train_samples": args.faiss_train, "file_bytes": faiss_file.stat().st_size}
        print(f"[build] faiss {out['faiss']['build_s']} s, peak anon {peak.peak / 2**30:.2f} GiB", flush=True)
    if "vdb" in out and "faiss" in out:
        out["build_ratio_vdb_over_faiss"] = round(out["vdb"]["build_s"] / out["faiss"]["build_s"], 2)
    out["loadavg_end"] = os.getloadavg()
    return out


def fio(path: Path, depth: int, seconds: int, block: str = "4k") -> dict:
    cmd = ["fio", "--name=r", f"--filename={path}", "--readonly", "--rw=randread", f"--bs={block}", "--direct=1",
           "--ioengine=libaio", f"--iodepth={depth}", f"--runtime={seconds}", "--time_based", "--output-format=json"]
    try:
        job = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)["jobs"][0]["read"]
    except (OSError, subprocess.CalledProcessError, ValueError, KeyError) as e:
        return {"error": f"{type(e).__name__}: {e}", "command": " ".join(cmd)}
    return {"file": path.name, "block": block, "iodepth": depth, "iops": round(job["iops"], 1),
            "lat_mean_us": round(job["lat_ns"]["mean"] / 1e3, 1),
            "lat_p50_us": round(job["clat_ns"]["percentile"]["50.000000"] / 1e3, 1),
            "lat_p99_us": round(job["clat_ns"]["percentile"]["99.000000"] / 1e3, 1), "command": " ".join(cmd)}


def device_limits(vdb_dir: Path, seconds: int) -> list[dict]:
    """fio at depth 1 and 32: 4 KiB reads of the posting file (a posting read) and 1 KiB reads of the vector
    file (what a re-rank row costs since reads are sized to the device's 512-byte blocks, storage/blockio.py)."""
    post, rows = vdb_dir / "postings.dat", vdb_dir / "vectors.f32"
    return [fio(post, 1, seconds), fio(post, 32, seconds), fio(rows, 1, seconds, "1k"), fio(rows, 32, seconds, "1k")]


def run_child(cg: MemCgroup, spec: dict, tag: str) -> dict:
    spec_path = WORK / "runs" / f"{tag}.spec.json"
    out_path = WORK / "runs" / f"{tag}.json"
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(json.dumps(spec))
    out_path.unlink(missing_ok=True)
    out_path.with_suffix(".partial.json").unlink(missing_ok=True)
    cg.reset()
    cmd = ["taskset", "-c", str(spec["cpus"]), sys.executable, str(ROOT / "tools/benchkit/diskrun.py"),
           str(spec_path), str(out_path)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, preexec_fn=cg.preexec(), stderr=subprocess.PIPE, text=True)
    partial = out_path.with_suffix(".partial.json")
    res = json.loads(out_path.read_text()) if proc.returncode == 0 and out_path.exists() else \
        {"system": spec["system"], "error": f"exit {proc.returncode}", "stderr_tail": proc.stderr[-2000:],
         "partial": json.loads(partial.read_text()) if partial.exists() else None}
    sys.stderr.write(proc.stderr[-4000:])
    res["cgroup"] = cg.report()
    res["wall_s"] = round(time.perf_counter() - t, 1)
    return res


def cmd_serve(args) -> dict:
    f = files_of(args)
    vdb_dir, faiss_file = index_paths(args)
    limit = args.limit_mb << 20
    cg = MemCgroup(f"vdb-bench-disk-{os.getpid()}", limit)
    common = {"queries": str(f["queries"]), "truth": str(f["truth"]), "warm": args.warm, "n": args.n_queries,
              "flights": args.flights, "cpus": args.cpus}
    out = {"dataset": args.dataset, "n": args.n, "limit_mb": args.limit_mb, "command": " ".join(sys.argv),
           "git_revision": git_revision(), "machine": machine_info(), "loadavg_start": os.getloadavg(),
           "systems": []}
    try:
        if "vdb" in args.systems:
            budget = args.limit_mb - args.baseline_mb - args.headroom_mb
            points = [{"in_flight": True}] + [{"nprobe": p} for p in args.nprobes] + \
                [{"rerank_eps": e} for e in args.rerank_eps]
            points += json.loads(args.vdb_points) if args.vdb_points else []
            spec = {**common, "system": "vdb", "index": str(vdb_dir), "budget_mb": budget, "points": points,
                    "files": [str(vdb_dir)]}
            out["systems"].append(run_child(cg, spec, f"vdb-{args.dataset}-{args.limit_mb}"))
        if "vdb-int8" in args.systems:  # the same index from disk without its scan tier (the previous path)
            budget = args.limit_mb - args.baseline_mb - args.headroom_mb
            points = [{"in_flight": True}] + [{"nprobe": p} for p in args.int8_nprobes]
            spec = {**common, "system": "vdb-int8", "index": str(vdb_dir), "budget_mb": budget, "points": points,
                    "files": [str(vdb_dir)]}
            out["systems"].append(run_child(cg, spec, f"vdbint8-{args.dataset}-{args.limit_mb}"))
        if "vdb-mmap" in args.systems:  # the same index through mmap and the page cache, no budget
            spec = {**common, "system": "vdb-mmap", "index": str(vdb_dir), "budget_mb": None,
                    "points": [{"in_flight": True}], "files": [str(vdb_dir)], "n": args.faiss_n_queries}
            out["systems"].append(run_child(cg, spec, f"vdbmmap-{args.dataset}-{args.limit_mb}"))
        if "faiss" in args.systems:
            pts = [{"nprobe": p, **({"in_flight": True} if p == args.faiss_flight_nprobe else {})}
                   for p in args.faiss_nprobes]
            spec = {**common, "system": "faiss-ivf-sq8-mmap", "index": str(faiss_file), "points": pts,
                    "files": [str(faiss_file)], "n": args.faiss_n_queries, "warm": args.faiss_warm}
            out["systems"].append(run_child(cg, spec, f"faiss-{args.dataset}-{args.limit_mb}"))
    finally:
        cg.remove()
    if not args.no_fio:
        out["fio"] = device_limits(vdb_dir, args.fio_s)
    out["loadavg_end"] = os.getloadavg()
    return out


def cmd_scancodes(args) -> dict:
    """Encode the scan tier of the built vdb index (index/scancodes.py), replacing any it had."""
    from index.tierbuild import scan_codes_index
    vdb_dir, _ = index_paths(args)
    with PeakAnon(0.05) as peak:
        res = scan_codes_index(vdb_dir, args.code_bytes)
    res.update(anon_peak_bytes=peak.peak, file_bytes=(vdb_dir / "scan.pq").stat().st_size,
               command=" ".join(sys.argv), git_revision=git_revision(), loadavg=os.getloadavg())
    return res


def cmd_diskann(args) -> dict:
    """diskannpy (its own venv, tools/peers/setup.sh) against vdb on a prefix of the dataset both can build here,
    both searched in the same cgroup: diskann's runner times single queries per L (warm = after its own first
    pass; its reads are O_DIRECT), vdb goes through diskrun.py as in `serve`."""
    from benchkit.bigdata import exact_knn
    from index.build import build_index
    f = files_of(args)
    n = args.prefix
    data = WORK / "data"
    base_path = data / f"{Path(f['base']).stem}-prefix{n}.npy"
    if not base_path.exists():
        np.save(base_path, np.load(f["base"], mmap_mode="r")[:n])
    q_path = data / f"{Path(f['queries']).stem}-first{args.prefix_nq}.npy"
    if not q_path.exists():
        np.save(q_path, np.load(f["queries"])[: args.prefix_nq])
    gt_path = data / f"{base_path.stem}-gt-{args.prefix_nq}.npy"
    if not gt_path.exists():
        np.save(gt_path, exact_knn(np.load(base_path, mmap_mode="r"), np.load(q_path)))
    out = {"dataset": args.dataset, "n": n, "limit_mb": args.limit_mb, "command": " ".join(sys.argv),
           "git_revision": git_revision(), "machine": machine_info(), "systems": []}
    work = WORK / "index" / f"diskann-{args.dataset}-{n}"
    venv_py = ROOT / "bench-data/venvs/diskann/bin/python"
    runner = ROOT / "tools/peers/diskann_runner.py"
    if not (work / "build.json").exists():
        work.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(venv_py), str(runner), "build", "--base", str(base_path), "--metric", "l2", "--out",
                        str(work / "index"), "--R", str(args.diskann_R), "--L", str(args.diskann_L), "--pq-bytes",
                        str(args.diskann_pq), "--threads", "2", "--json", str(work / "build.json")], check=True)
    out["diskann_build"] = json.loads((work / "build.json").read_text())
    vdb_dir = WORK / "index" / f"vdb-{args.dataset}-{n}"
    if not vdb_dir.exists():
        t = time.perf_counter()
        build_index(np.load(base_path, mmap_mode="r"), vdb_dir)
        out["vdb_build_s"] = round(time.perf_counter() - t, 1)
    cg = MemCgroup(f"vdb-bench-diskann-{os.getpid()}", args.limit_mb << 20)
    try:
        spec = {"queries": str(q_path), "truth": str(gt_path), "warm": args.warm, "n": args.n_queries,
                "flights": args.flights, "cpus": args.cpus, "system": "vdb", "index": str(vdb_dir),
                "budget_mb": args.limit_mb - args.baseline_mb - args.headroom_mb, "files": [str(vdb_dir)],
                "points": [{"in_flight": True}] + [{"nprobe": p} for p in args.nprobes]}
        out["systems"].append(run_child(cg, spec, f"vdb-{args.dataset}-{n}-{args.limit_mb}"))
        cg.reset()
        cmd = ["taskset", "-c", "1", str(venv_py), str(runner), "search", "--index", str(work / "index"),
               "--queries", str(q_path), "--metric", "l2", "--k", "10", "--Ls", args.diskann_Ls, "--batch-mode",
               "loop", "--n-single", str(args.n_queries), "--n-cold", "50", "--n-cold-batch", "100",
               "--json", str(work / f"search-{args.limit_mb}.json")]
        proc = subprocess.run(cmd, preexec_fn=cg.preexec(), capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        res = {"system": "diskannpy", "command": " ".join(cmd), "cgroup": cg.report()}
        if proc.returncode == 0:
            raw = json.loads((work / f"search-{args.limit_mb}.json").read_text())
            truth = np.load(gt_path)[:, :10]
            for pt in raw["points"]:
                ids = np.load(work / pt.pop("ids_file"))
                pt["recall"] = round(float(np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(ids, truth)])), 4)
            res.update(raw)
        else:
            res["error"] = proc.stderr[-2000:]
        out["systems"].append(res)
    finally:
        cg.remove()
    return out


def cmd_attach(args) -> dict:
    """vdb.connect(memory_budget_mb=limit - baseline - headroom) + attach_collection + search, then a few writes,
    in the cgroup (tools/benchkit/attach_probe.py), on a copy of the built index (the writes append to its
    files, so they are copied, not linked)."""
    import shutil
    f = files_of(args) if not args.index_dir else {"queries": args.queries_file, "truth": args.truth_file}
    vdb_dir = Path(args.index_dir) if args.index_dir else index_paths(args)[0]
    scratch = WORK / "attach"
    shutil.rmtree(scratch, ignore_errors=True)
    copy = scratch / "index"
    copy.mkdir(parents=True)
    for name in ("vectors.f32", "heads.f32", "postings.dat"):
        shutil.copyfile(vdb_dir / name, copy / name)
    shutil.copytree(vdb_dir / "meta", copy / "meta")
    cg = MemCgroup(f"vdb-bench-attach-{os.getpid()}", args.limit_mb << 20)
    out_path = scratch / "attach.json"
    try:
        env = {**os.environ, **({"PYTHONPATH": args.code} if args.code else {})}   # --code: another checkout
        cmd = ["taskset", "-c", args.cpus, sys.executable, str(ROOT / "tools/benchkit/attach_probe.py"), str(copy),
               str(scratch / "data"), str(f["queries"]), str(f["truth"]), str(out_path),
               str(args.limit_mb - args.baseline_mb - args.headroom_mb)]
        proc = subprocess.run(cmd, preexec_fn=cg.preexec(), capture_output=True, text=True, env=env)
        res = json.loads(out_path.read_text()) if proc.returncode == 0 else \
            {"error": f"exit {proc.returncode}", "stderr_tail": proc.stderr[-2000:]}
        res["cgroup"] = cg.report()
    finally:
        cg.remove()
        shutil.rmtree(scratch, ignore_errors=True)
    return {"dataset": args.index_dir or args.dataset, "n": args.n, "limit_mb": args.limit_mb,
            "command": " ".join(sys.argv), "git_revision": git_revision(), "code": args.code or str(ROOT),
            "loadavg": os.getloadavg(), "attach": res}


def cmd_plot(paths: list[str], out: Path) -> dict:
    """Recall-QPS (single thread) per system, one panel per memory limit; written next to the JSONs."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    runs = [json.loads(Path(p).read_text()) for p in paths]
    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4.5), squeeze=False)
    for ax, run in zip(axes[0], runs):
        for sysres in run["systems"]:
            partial = (sysres.get("partial") or {}).get("points", [])  # a child killed later (OOM) measured these
            pts = sorted(sysres.get("points") or partial, key=lambda p: p["recall"])
            if pts:
                label = sysres["system"] + (f" ({sysres['error']} later)" if sysres.get("error") else "")
                ax.plot([p["recall"] for p in pts], [p["qps_1thread"] for p in pts], "o-", label=label)
        ax.set_title(f"{run['dataset']} {run['n']:,}: {run['limit_mb']} MiB cgroup")
        ax.set_xlabel("recall@10")
        ax.set_ylabel("QPS, 1 thread (1 / mean latency)")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return {"plot": str(out)}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cmd", choices=("prepare", "build", "serve", "fio", "plot", "diskann", "attach", "scancodes"))
    ap.add_argument("inputs", nargs="*", help="plot: the serve JSONs (one panel each)")
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="c128")
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--nq", type=int, default=10_000, help="queries generated (with exact top-100)")
    ap.add_argument("--systems", default="vdb,faiss")
    ap.add_argument("--build-params", default="{}", help='build: BuildParams fields as JSON, e.g. {"leaf_assign": true}')
    ap.add_argument("--faiss-factory", default="IVF8192_HNSW32,SQ8")
    ap.add_argument("--faiss-train", type=int, default=262_144)
    ap.add_argument("--limit-mb", type=int, default=1024)
    ap.add_argument("--baseline-mb", type=int, default=200, help="interpreter + libraries, outside vdb's budget")
    ap.add_argument("--headroom-mb", type=int, default=64)
    ap.add_argument("--warm", type=int, default=1000)
    ap.add_argument("--n-queries", type=int, default=1000, help="single queries per operating point")
    ap.add_argument("--nprobes", type=lambda v: [int(x) for x in v.split(",") if x], default=[16, 32, 64])
    ap.add_argument("--int8-nprobes", type=lambda v: [int(x) for x in v.split(",") if x], default=[],
                    help="vdb-int8 (no scan tier): nprobe points besides the default")
    ap.add_argument("--vdb-points", default="", help='more vdb points as JSON, e.g. [{"nprobe": 8, "rerank_eps": 0.1}]')
    ap.add_argument("--code-bytes", type=int, default=-1, help="scancodes: PQ bytes per entry (-1: automatic, dim / 4)")
    ap.add_argument("--rerank-eps", type=lambda v: [float(x) for x in v.split(",") if x], default=[])
    ap.add_argument("--faiss-nprobes", type=lambda v: [int(x) for x in v.split(",") if x], default=[4, 8, 16, 32])
    ap.add_argument("--faiss-flight-nprobe", type=int, default=16)
    ap.add_argument("--faiss-n-queries", type=int, default=1000, help="per point for faiss and vdb-mmap")
    ap.add_argument("--faiss-warm", type=int, default=1000)
    ap.add_argument("--flights", type=lambda v: [int(x) for x in v.split(",") if x], default=[2, 4, 8, 16])
    ap.add_argument("--cpus", default="0,1", help="taskset CPU list of the measured child")
    ap.add_argument("--no-fio", action="store_true")
    ap.add_argument("--fio-s", type=int, default=10)
    ap.add_argument("--prefix", type=int, default=1_000_000, help="diskann: rows of the dataset both build")
    ap.add_argument("--prefix-nq", type=int, default=3000)
    ap.add_argument("--diskann-R", type=int, default=64)
    ap.add_argument("--diskann-L", type=int, default=100)
    ap.add_argument("--diskann-pq", type=int, default=32)
    ap.add_argument("--diskann-Ls", default="10,20,40,80")
    ap.add_argument("--index-dir", default=None, help="attach: a built index instead of --dataset's")
    ap.add_argument("--queries-file", default=None, help="attach with --index-dir: its queries (.npy)")
    ap.add_argument("--truth-file", default=None, help="attach with --index-dir: their exact top-10 (.npy)")
    ap.add_argument("--code", default=None, help="attach: PYTHONPATH of the vdb the probe runs (a peer)")
    ap.add_argument("--out", default=None)
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    args.systems = set(args.systems.split(","))
    if args.cmd == "prepare":
        res = {k: str(v) for k, v in files_of(args).items()}
    elif args.cmd == "build":
        res = cmd_build(args)
    elif args.cmd == "serve":
        res = cmd_serve(args)
    elif args.cmd == "attach":
        res = cmd_attach(args)
    elif args.cmd == "scancodes":
        res = cmd_scancodes(args)
    elif args.cmd == "diskann":
        res = cmd_diskann(args)
    elif args.cmd == "plot":
        res = cmd_plot(args.inputs, Path(args.out or "docs/benchmarks/disk-recall-qps.png"))
        args.out = None
    else:
        res = {"fio": device_limits(index_paths(args)[0], args.fio_s)}
    text = json.dumps(res, indent=1, default=float)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    print(text if args.cmd != "serve" else f"wrote {args.out}")


if __name__ == "__main__":
    main()
