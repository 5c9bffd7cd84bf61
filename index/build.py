"""Bulk build of a SPANN index directory from an array-like of vectors.

Stages: stream the input into the vector file -> train the INT8 quantizer -> hierarchical balanced k-means
heads -> head index -> closure assignment (RNG rule, replicas, cap) -> encode and write postings -> metadata.
Everything is written into a temporary sibling directory and published with one atomic rename, so a crash
mid-build leaves any previous index at the destination intact.

The input is read in chunks (`source[s:e]` on a numpy memmap, an h5py dataset, ...); after the first pass the
build reads the vectors back from its own vector file, so it never holds several float32 copies in RAM.
"""
from __future__ import annotations

import logging
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

from index.assign import closure_assign
from index.calibrate import calibrate
from index.centroids import HeadIndex
from index.clustering import HeadClustering, cluster_heads
from index.distance import as_matrix, normalize, prepare_base
from index.errors import InvalidParameterError, InvalidVectorsError
from index.quantize import Int8Quantizer
from index.tierbuild import add_scan_tier
from index.types import BuildParams, Metric
from storage import IndexDir
from storage.fileio import publish_dir
from storage.indexdir import BUILD_SUFFIX, FORMAT_NAME, FORMAT_VERSION, check_replaceable, remove_stale_builds

log = logging.getLogger(__name__)
CHUNK = 65536
MAX_EXT_ID = (1 << 63) - 1
POSTING_BATCH = 4096
QUANTIZER_SAMPLE = 100_000  # rows the INT8 quantizer is trained on


class _NullBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


ProgressFactory = Callable[[str, int], object]  # (stage, total) -> object with update(n) and close()


def _null_progress(stage: str, total: int) -> _NullBar:
    return _NullBar()


class HeadSpaceView:
    """Row access to stored vectors mapped into head space (unit sphere for ip; stored vectors otherwise)."""

    def __init__(self, matrix: np.ndarray, metric: Metric):
        self.matrix, self.metric = matrix, metric

    def __len__(self) -> int:
        return len(self.matrix)

    def __getitem__(self, rows) -> np.ndarray:
        x = np.ascontiguousarray(self.matrix[rows], dtype=np.float32)
        return normalize(x, allow_zero=True) if self.metric is Metric.IP else x


def validate_ids(ids, n: int) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1 or len(ids) != n:
        raise InvalidVectorsError(f"ids must be a 1-D array of {n} ids (one per vector), got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise InvalidVectorsError(f"ids must be integers, got dtype {ids.dtype}")
    if len(ids) and (ids.min() < 0 or (ids.dtype == np.uint64 and ids.max() > MAX_EXT_ID)):
        raise InvalidVectorsError("ids must be in [0, 2**63 - 1]")
    ids = ids.astype(np.int64)
    uniq = np.unique(ids)
    if len(uniq) != len(ids):
        raise InvalidVectorsError(f"ids contain {len(ids) - len(uniq)} duplicate(s)")
    return ids


def _stream_vectors(source, d: IndexDir, metric: Metric, progress: ProgressFactory) -> int:
    n, dim = source.shape
    bar = progress("read vectors", n)
    # one chunk is written (checksums and pwrite, both without the GIL) while the next is read and checked:
    # the writes are most of this step once the device's dirty-page throttle sets in
    with ThreadPoolExecutor(1) as writer:
        pending = None
        for s in range(0, n, CHUNK):
            try:
                x = _checked_chunk(source, s, dim, metric)
            except InvalidVectorsError as e:
                if pending is not None and pending.exception() is not None:
                    raise pending.exception() from e  # the write before failed too (a full disk): say that first
                raise
            if pending is not None:
                pending.result()  # in order, and a failed write stops the stream
                bar.update(CHUNK)
            pending = writer.submit(d.vectors.append, x)
        if pending is not None:
            pending.result()
            bar.update(n - (n - 1) // CHUNK * CHUNK)
    bar.close()
    return n


def _checked_chunk(source, s: int, dim: int, metric: Metric) -> np.ndarray:
    """Rows s .. s + CHUNK of `source` checked and in stored form; InvalidVectorsError naming the rows."""
    x = as_matrix(source[s: s + CHUNK], dim, name=f"input rows {s}..{min(source.shape[0], s + CHUNK) - 1}")
    try:
        return prepare_base(x, metric)
    except InvalidVectorsError as e:
        raise InvalidVectorsError(f"input rows from {s}: {e}") from None


def _encode_all(vec: np.ndarray, quantizer: Int8Quantizer, progress: ProgressFactory,
                scratch: Path | None = None) -> np.ndarray:
    """INT8 codes of every row. With `scratch` (a file path) they live in a file mapping, page cache the kernel
    may reclaim, instead of anonymous memory (10M x 128 codes are 1.28 GB)."""
    from storage.posting_format import code_bytes
    shape = (len(vec), code_bytes(vec.shape[1]))
    codes = np.lib.format.open_memmap(scratch, mode="w+", dtype=np.int8, shape=shape) if scratch is not None \
        else np.empty(shape, np.int8)
    bar = progress("encode int8", len(vec))
    for s in range(0, len(vec), CHUNK):
        codes[s: s + CHUNK] = quantizer.encode(np.asarray(vec[s: s + CHUNK], dtype=np.float32))
        bar.update(min(CHUNK, len(vec) - s))
    bar.close()
    return codes


def _write_postings(d: IndexDir, assignment, codes: np.ndarray, slack: float, progress: ProgressFactory) -> None:
    rec = d.postings.record_dtype
    n_heads = len(assignment.starts) - 1
    bar = progress("write postings", n_heads)
    for first in range(0, n_heads, POSTING_BATCH):
        lists, caps = [], []
        for h in range(first, min(n_heads, first + POSTING_BATCH)):
            members = assignment.members(h)
            r = np.zeros(len(members), rec)
            r["id"] = members
            r["code"] = codes[members]
            lists.append(r)
            caps.append(int(np.ceil(len(members) * (1 + slack))) + 1)
        d.postings.add_postings(lists, caps if slack > 0 else None)  # slack 0: packed back to back
        bar.update(len(lists))
    bar.close()


def is_dense(ext_ids: np.ndarray) -> bool:
    """True when the external ids are 0..n-1 in row order (the default when a build is given no ids)."""
    return bool(len(ext_ids) == 0 or (ext_ids[0] == 0 and ext_ids[-1] == len(ext_ids) - 1
                                      and (np.diff(ext_ids) == 1).all()))


def length_stats(lengths: np.ndarray) -> dict:
    if len(lengths) == 0:
        return {"min": 0, "mean": 0.0, "p50": 0.0, "p99": 0.0, "max": 0, "std": 0.0}
    return {"min": int(lengths.min()), "mean": round(float(lengths.mean()), 2),
            "p50": float(np.percentile(lengths, 50)), "p99": float(np.percentile(lengths, 99)),
            "max": int(lengths.max()), "std": round(float(lengths.std()), 2)}


def build_index(source, out_dir: str | os.PathLike, *, ids=None, params: BuildParams | None = None,
                overwrite: bool = False, progress: ProgressFactory | None = None) -> dict:
    """Build an index of `source` (array-like [n, dim], sliceable) into `out_dir`. Returns a summary dict."""
    progress = progress or _null_progress
    params = params or BuildParams()
    shape = getattr(source, "shape", None)
    if shape is None or len(shape) != 2:
        raise InvalidVectorsError(f"input must be a 2-D array of vectors, got shape {shape}")
    n, dim = int(shape[0]), int(shape[1])
    if n == 0 or dim == 0:
        raise InvalidVectorsError(f"input is empty (shape {shape})")
    params = params.resolved(dim)
    metric = Metric.parse(params.metric)
    ext_ids = validate_ids(ids, n) if ids is not None else np.arange(n, dtype=np.int64)
    out_dir = prepare_output(out_dir, overwrite)
    tmp = out_dir.parent / f".{out_dir.name}{BUILD_SUFFIX}{uuid.uuid4().hex[:8]}"
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    d = IndexDir.create(tmp, dim)
    try:
        summary = _build_into(d, source, ext_ids, params, metric, progress, timings)
        d.vectors.finish(), d.heads.finish(), d.postings.finish()
        summary.update(finish_index(d, params, timings))
        d.close(release_lock=False)  # held until published: a concurrent build's sweep must not take it
        publish_dir(tmp, out_dir, overwrite=overwrite)
    except BaseException:
        d.close()
        _remove_tree(tmp)
        raise
    finally:
        d.lock.close()
    timings["total"] = round(time.perf_counter() - t0, 3)
    summary["timings_s"] = timings
    summary["path"] = str(out_dir)
    return summary


def prepare_output(out_dir, overwrite: bool) -> Path:
    """Check, before any work, that `out_dir` may be written: absent, or replaceable with `overwrite` (no process
    has it open, no collection's WAL in it). Removes the leftovers of builds of it that died. Shared with the
    distributed build."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        if not overwrite:
            raise InvalidParameterError(f"{out_dir} already exists; pass --overwrite to replace it")
        if not out_dir.is_dir():
            raise InvalidParameterError(f"{out_dir} exists and is not a directory")
        check_replaceable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    for stale in remove_stale_builds(out_dir):
        log.warning("removed %s, left by a build that did not finish", stale)
    return out_dir


def calibrate_index(path: str | os.PathLike, target_recall: float, *, samples: int = 500, seed: int = 0) -> dict:
    """Measure the nprobe that reaches `target_recall` on held-out samples (index/calibrate.py) and store it in
    the manifest of the index at `path` (the default search uses it). Returns the calibration entry."""
    d = IndexDir.open(path, writable=True)
    try:
        return _calibrate_dir(d, target_recall, samples=samples, seed=seed)
    finally:
        d.close()


def finish_index(d: IndexDir, params: BuildParams, timings: dict) -> dict:
    """The steps after an index's data and metadata are written, shared by the local and the Ray build
    (index/distributed/driver.py): calibrate the default nprobe for params.target_recall, encode the scan tier
    if params.scan_code_bytes asks for one. Each replaces what a previous run of it wrote, so a resumed build
    may run them again. Returns the summary's "calibration" / "scan_codes" sections."""
    out = {}
    if params.target_recall > 0:
        t = time.perf_counter()
        out["calibration"] = _calibrate_dir(d, params.target_recall, samples=params.calibration_samples,
                                            seed=params.seed)
        timings["calibrate"] = round(time.perf_counter() - t, 3)
    if params.scan_code_bytes:
        t = time.perf_counter()
        out["scan_codes"] = add_scan_tier(d, params.scan_code_bytes, params.seed)
        timings["scan_codes"] = round(time.perf_counter() - t, 3)
    return out


def _calibrate_dir(d: IndexDir, target_recall: float, *, samples: int, seed: int) -> dict:
    """Calibrate through the directory already open for writing: its lock is held throughout (a second open
    would need its own lock, and a build must never let go of its temporary directory's)."""
    from index.spann import SpannIndex
    d.reload_manifest()  # the build wrote its manifest straight into the metadata store
    cal = calibrate(SpannIndex(d), target_recall, samples=samples, seed=seed)
    d.commit({**d.manifest, "calibration": cal}, {})
    return cal


def _remove_tree(path: Path) -> None:
    import shutil
    shutil.rmtree(path, ignore_errors=True)


def quantizer_sample_rows(n: int, seed: int) -> np.ndarray:
    """Rows the INT8 quantizer is trained on (ascending). Shared with the distributed build."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, min(n, QUANTIZER_SAMPLE), replace=False))


def train_heads(space, n: int, params: BuildParams, metric: Metric, progress: ProgressFactory, *,
                owners: bool) -> HeadClustering:
    """head_ratio * n head vectors by hierarchical balanced k-means over `space` (all n rows, or a sample of
    them: the Ray build trains on a sample), and with `owners` the nearest head of each row of `space` within its
    leaf (HeadClustering.owner; all -1 otherwise: only the leaf assignment reads it).
    Shared by the local and the distributed build."""
    n_target = max(1, int(round(params.head_ratio * n)))
    bar = progress("cluster heads", n_target)
    clustering = cluster_heads(space, n_target, params, spherical=metric.angular, progress=bar.update,
                               owners=owners)
    bar.close()
    return clustering


def build_head_index(heads: np.ndarray, metric: Metric, params: BuildParams) -> HeadIndex:
    return HeadIndex.build(heads, angular=metric.angular, kind=params.head_index, m=params.hnsw_m,
                           ef_construction=params.hnsw_ef_construction)


def drop_empty_heads(heads: np.ndarray, assignment, head_index: HeadIndex, metric: Metric, params: BuildParams):
    """A head no vector chose wastes a probe slot: drop it and re-index the rest. Returns (heads, assignment,
    head_index), unchanged when every head has members."""
    empty = assignment.lengths() == 0
    if not empty.any():
        return heads, assignment, head_index
    heads = heads[~empty]
    return heads, assignment.without_empty(), build_head_index(heads, metric, params)


def _build_into(d: IndexDir, source, ext_ids, params: BuildParams, metric: Metric, progress, timings) -> dict:
    n, dim = source.shape
    t = time.perf_counter()
    _stream_vectors(source, d, metric, progress)
    vec = d.vectors.matrix()[:, :dim]
    timings["read"] = round(time.perf_counter() - t, 3)

    t = time.perf_counter()
    sample_rows = quantizer_sample_rows(n, params.seed)
    quantizer = Int8Quantizer.train(np.asarray(vec[sample_rows], dtype=np.float32))
    hs = HeadSpaceView(vec, metric)
    clustering = train_heads(hs, n, params, metric, progress, owners=params.leaf_assign)
    heads = clustering.heads
    timings["cluster"] = round(time.perf_counter() - t, 3)

    t = time.perf_counter()
    head_index = build_head_index(heads, metric, params)
    timings["head_index"] = round(time.perf_counter() - t, 3)

    t = time.perf_counter()
    bar = progress("assign (RNG rule)", n)
    owner = clustering.owner if params.leaf_assign else None
    assignment = closure_assign(hs, n, heads, head_index, params, progress=bar.update, owner=owner)
    del clustering
    bar.close()
    heads, assignment, head_index = drop_empty_heads(heads, assignment, head_index, metric, params)
    timings["assign"] = round(time.perf_counter() - t, 3)

    t = time.perf_counter()
    scratch = d.path / "codes.scratch.npy"
    codes = _encode_all(vec, quantizer, progress, scratch)
    _write_postings(d, assignment, codes, params.extent_slack, progress)
    del codes
    scratch.unlink()
    d.heads.append(heads)
    timings["write"] = round(time.perf_counter() - t, 3)

    t = time.perf_counter()
    stats = write_metadata(d, ext_ids, heads, head_index, assignment, quantizer, params, metric)
    timings["metadata"] = round(time.perf_counter() - t, 3)
    log.info("built %d vectors into %d postings", n, len(heads))
    return dict(stats)


def write_metadata(d: IndexDir, ext_ids: np.ndarray, heads: np.ndarray, head_index: HeadIndex, assignment,
                   quantizer: Int8Quantizer, params: BuildParams, metric: Metric) -> dict:
    """The build's one metadata transaction: posting directory, id maps, quantizer, head index and manifest.
    Shared with the distributed build so both write the same format. Returns the build stats."""
    n, dim = len(ext_ids), d.vectors.dim
    lengths = assignment.lengths()
    replicas = np.bincount(assignment.vec, minlength=n)
    stats = {
        "n_vectors": int(n), "dim": int(dim), "metric": metric.value, "n_heads": int(len(heads)),
        "head_index": head_index.kind, "posting_cap": int(assignment.cap),
        "postings_over_cap": int(assignment.over_cap), "posting_lengths": length_stats(lengths),
        "records": int(len(assignment.vec)), "replicas_mean": round(float(replicas.mean()), 3),
        "replicas_max": int(replicas.max()), "vectors_without_posting": int((replicas == 0).sum()),
    }
    manifest = {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "dim": int(dim), "metric": metric.value,
        "n_rows": int(n), "n_heads": int(len(heads)), "build_params": params.to_dict(), "build_stats": stats,
        "quantizer": "int8-per-dim", "checkpoint_lsn": 0,
    }
    stored_ids = ext_ids
    if is_dense(ext_ids):
        # external id == row: no id array is stored or kept in RAM for these rows, only for rows appended
        # later ("int2ext" holds the rows from "int2ext_from" on; index/ids.py)
        manifest["id_map"], manifest["dense_rows"], manifest["int2ext_from"] = "dense", int(n), int(n)
        stored_ids = np.zeros(0, np.int64)
    if len(ext_ids) < 2 or (ext_ids[1:] > ext_ids[:-1]).all():
        keys, rows = ext_ids, np.arange(n, dtype=np.int64)  # already in key order (dense ids): no sort, no copy
    else:
        rows = np.argsort(ext_ids, kind="stable").astype(np.int64)
        keys = ext_ids[rows]
    with d.meta.write() as w:
        w.put_array("directory", d.postings.dir.to_array())
        w.put_array("state", np.zeros(n, np.uint8))
        w.put_array("int2ext", stored_ids)
        w.put_array("quantizer", quantizer.to_array())
        w.put_array("head_index", head_index.to_bytes())
        w.put_ids(keys, rows, sorted_new=True)
        w.set_manifest(manifest)
    return stats
