"""Datasets larger than RAM for tools/bench_disk.py, generated straight into .npy files under bench-data/.

`vdb.inputs.synthetic.clustered(n)` builds its whole output (and a float64 noise matrix twice its size) in
memory: 15 GB for 10M x 128. `write_clustered` produces the same mixture's stream in chunks: the labels are
drawn first, exactly as `ClusteredMixture.sample` draws them, then the Gaussian noise row block by row block
from the same generator (numpy fills arrays from its stream in C order, so the blocks are the rows of the one
big draw). `check_same_as_sample` compares the two on a small n (run by `bench_disk.py --check-generator`).

Ground truth for 10M rows is computed with faiss flat search in base blocks, merging each block's top-k.
"""
from __future__ import annotations

import time
from pathlib import Path

import faiss
import numpy as np

from vdb.inputs.synthetic import N_ROTATIONS, ClusteredMixture

BLOCK = 500_000


def _sample_stream(mix: ClusteredMixture, n: int, seed: int, out: np.ndarray, block: int = BLOCK) -> None:
    """Fill out[:n] with mix.sample(n, seed), block by block (same bytes; bounded memory)."""
    rng = np.random.default_rng([mix.seed, 2, seed])
    labels = rng.choice(mix.n_clusters, size=n, p=mix.weights)
    for s in range(0, n, block):
        lab = labels[s: s + block]
        z = rng.standard_normal((len(lab), mix.dim))
        part = np.empty((len(lab), mix.dim), np.float32)
        order = np.argsort(lab, kind="stable")
        bounds = np.searchsorted(lab[order], np.arange(mix.n_clusters + 1))
        for c in range(mix.n_clusters):
            rows = order[bounds[c]: bounds[c + 1]]
            if len(rows):
                rot = mix.rotations[c % N_ROTATIONS]
                part[rows] = (z[rows] * (mix.spectrum * mix.scales[c])) @ rot.T + mix.centers[c]
        out[s: s + len(lab)] = part


def write_clustered(path: Path, n: int, mix: ClusteredMixture, seed: int = 1) -> Path:
    """Write mix.sample(n, seed) to `path` (.npy, float32) unless it exists; returns the path."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, mix.dim))
    _sample_stream(mix, n, seed, out)
    out.flush()
    del out
    tmp.replace(path)
    return path


def check_same_as_sample(n: int = 200_000, dim: int = 32) -> float:
    """Largest |difference| between the streamed and the in-memory sample (0.0 when identical)."""
    mix = ClusteredMixture(dim, 1000, 0)
    ref = mix.sample(n, 1)
    out = np.empty_like(ref)
    _sample_stream(mix, n, 1, out, block=n // 7 + 1)
    return float(np.abs(out - ref).max())


def exact_knn(base: np.ndarray, queries: np.ndarray, k: int = 100, block: int = BLOCK) -> np.ndarray:
    """Exact squared-L2 top-k ids of queries over a (memory-mapped) base, one base block at a time."""
    nq = len(queries)
    best_d = np.full((nq, k), np.inf, np.float32)
    best_i = np.full((nq, k), -1, np.int64)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    t = time.perf_counter()
    for s in range(0, len(base), block):
        flat = faiss.IndexFlatL2(base.shape[1])
        flat.add(np.ascontiguousarray(base[s: s + block], dtype=np.float32))
        d, i = flat.search(q, k)
        d = np.concatenate([best_d, d], 1)
        i = np.concatenate([best_i, np.where(i >= 0, i + s, -1)], 1)
        order = np.lexsort((i, d), axis=1)[:, :k]
        best_d, best_i = np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)
        print(f"[gt] {s + block:,} / {len(base):,} rows, {time.perf_counter() - t:.0f} s", flush=True)
    return best_i


def dataset_files(root: Path, name: str, n: int, nq: int, mix: ClusteredMixture) -> dict:
    """Base, queries and exact top-100 truth of one mixture as .npy files under root (made when missing)."""
    base = write_clustered(root / f"{name}-{n}x{mix.dim}.npy", n, mix, seed=1)
    qpath = root / f"{name}-queries-{nq}x{mix.dim}.npy"
    if not qpath.exists():
        np.save(qpath, mix.sample(nq, 2))
    gpath = root / f"{name}-gt-{n}x{mix.dim}-{nq}.npy"
    if not gpath.exists():
        truth = exact_knn(np.load(base, mmap_mode="r"), np.load(qpath))
        np.save(gpath.with_suffix(".tmp.npy"), truth)
        gpath.with_suffix(".tmp.npy").replace(gpath)
    return {"base": base, "queries": qpath, "truth": gpath}
