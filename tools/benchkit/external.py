"""Out-of-process peers (diskannpy, LanceDB): each runs `tools/peers/<name>_runner.py` in its own virtualenv under
bench-data/venvs/ (made by tools/peers/setup.sh), so the main venv stays clean and each peer's RSS is its own.

Builds run unpinned (both cores). Searches run under `taskset -c CPU` (every thread of the process on one core),
with LANCE_CPU_THREADS=1 / OMP_NUM_THREADS=1. A peer that fails is reported with the reason and the run goes on.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchkit import measure
from benchkit.datasets import Dataset

PEERS = Path(__file__).resolve().parents[1] / "peers"


def _run(python: Path, script: str, args: list[str], log: Path, timeout: int, cpu: int | None, env_extra: dict):
    cmd = [str(python), str(PEERS / script), *args]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    env = {**os.environ, **env_extra}
    t = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, env=env)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"{script} {args[0]} exited {proc.returncode}: " + " | ".join(tail))
    return time.perf_counter() - t, " ".join(cmd)


def _points(raw: list[dict], out: Path) -> list[dict]:
    for p in raw:
        p["ids"] = np.load(out / p.pop("ids_file"))
    return raw


def _python(venv: Path) -> Path:
    py = venv / "bin" / "python"
    if not py.exists():
        raise FileNotFoundError(f"{py} missing: run tools/peers/setup.sh first")
    return py


def diskann(ds: Dataset, workdir: Path, venvs: Path, cfg, *, pq_bytes: int, Ls, R=64, L=100) -> dict:
    """DiskANN's StaticDiskIndex (Vamana graph + full vectors on disk, PQ codes in RAM)."""
    metric = "l2" if ds.metric == "l2" else "mips"  # cosine data is unit-norm: mips ranks identically
    out = workdir / f"diskann-{ds.name}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    res = {"system": "diskann", "kind": "disk (Vamana graph + float32 vectors on disk, PQ in RAM)",
           "metric_used": metric}
    try:
        py = _python(venvs / "diskann")
        idx = out / "index"
        _, cmd = _run(py, "diskann_runner.py", ["build", "--base", str(ds.base_path), "--metric", metric,
                                                "--out", str(idx), "--R", str(R), "--L", str(L),
                                                "--pq-bytes", str(pq_bytes), "--threads", str(cfg.build_threads),
                                                "--json", str(out / "build.json")],
                      out / "build.log", cfg.timeout_s, None, {})
        build = json.loads((out / "build.json").read_text())
        for temp in ("ann_vectors.bin", "ann_mem.index.data"):  # build scratch copies, not read by search
            (idx / temp).unlink(missing_ok=True)
        res["build"] = {**build, "command": cmd}
        files = {f.name: f.stat().st_size for f in idx.iterdir()}
        res["disk"] = {"files": files, "total": sum(files.values()),
                       "int8_data": ds.n * ds.base.shape[1], "float32_data": ds.n * ds.base.shape[1] * 4}
        measure.progress(f"[diskann] {ds.name} built in {build['build_s']} s")
        _, cmd = _run(py, "diskann_runner.py",
                      ["search", "--index", str(idx), "--queries", str(ds.query_path), "--metric", metric,
                       "--k", str(cfg.k), "--Ls", ",".join(map(str, Ls)), "--n-single", str(cfg.n_single),
                       "--n-cold", str(cfg.n_cold), "--n-cold-batch", str(cfg.n_cold_batch),
                       "--json", str(out / "search.json")],
                      out / "search.log", cfg.timeout_s, cfg.cpu, {"OMP_NUM_THREADS": "1"})
        search = json.loads((out / "search.json").read_text())
        res["points"] = _points(search.pop("points"), out)
        res["ram"] = {**search, "command": cmd}
    except Exception as e:  # noqa: BLE001 - reported in the JSON and on the page
        res["error"] = f"{type(e).__name__}: {e}"
        measure.progress(f"[diskann] failed: {res['error']}")
    return res


def lancedb(ds: Dataset, workdir: Path, venvs: Path, cfg, *, partitions: int, subvectors: int, points) -> dict:
    """LanceDB IVF-PQ on a local Lance dataset (index and data read through the OS page cache)."""
    metric = "l2" if ds.metric == "l2" else "cosine"
    out = workdir / f"lancedb-{ds.name}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    res = {"system": "lancedb", "kind": "disk (Lance files: IVF-PQ index + float32 column, OS page cache)",
           "metric_used": metric}
    try:
        py = _python(venvs / "lancedb")
        db = out / "db"
        _, cmd = _run(py, "lancedb_runner.py", ["build", "--base", str(ds.base_path), "--metric", metric,
                                                "--out", str(db), "--partitions", str(partitions),
                                                "--subvectors", str(subvectors), "--json", str(out / "build.json")],
                      out / "build.log", cfg.timeout_s, None, {})
        build = json.loads((out / "build.json").read_text())
        res["build"] = {**build, "command": cmd}
        res["disk"] = {"total": build["disk_bytes"], "int8_data": ds.n * ds.base.shape[1],
                       "float32_data": ds.n * ds.base.shape[1] * 4}
        measure.progress(f"[lancedb] {ds.name} built in {build['build_s']} s")
        spec = ",".join(f"{a}:{b}" for a, b in points)
        _, cmd = _run(py, "lancedb_runner.py",
                      ["search", "--index", str(db), "--queries", str(ds.query_path), "--metric", metric,
                       "--k", str(cfg.k), "--points", spec, "--n-single", str(cfg.n_single),
                       "--n-cold", str(cfg.n_cold), "--n-cold-batch", str(cfg.n_cold_batch),
                       "--json", str(out / "search.json")],
                      out / "search.log", cfg.timeout_s, cfg.cpu, {"LANCE_CPU_THREADS": "1", "OMP_NUM_THREADS": "1"})
        search = json.loads((out / "search.json").read_text())
        res["points"] = _points(search.pop("points"), out)
        res["ram"] = {**search, "command": cmd}
    except Exception as e:  # noqa: BLE001
        res["error"] = f"{type(e).__name__}: {e}"
        measure.progress(f"[lancedb] failed: {res['error']}")
    return res


def python_version(venv: Path, module: str) -> str | None:
    try:
        out = subprocess.run([str(venv / "bin" / "python"), "-c",
                              f"from importlib.metadata import version; print(version('{module}'))"],
                             capture_output=True, text=True, timeout=60)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


if __name__ == "__main__":
    sys.exit("not a script: used by tools/bench_index.py")
