"""The work on one input partition (a row range), as one Ray actor does it. No Ray in here.

For rows [start, stop): read them from the input file, validate and prepare them exactly as the local build
stores them, write them into the staged vector file at their final row offsets, encode them to INT8 with the
driver's quantizer, choose their postings with the RNG rule (`select_heads`, replicas included), and publish the
records (row, head, squared distance) and codes as one part file. Rows are processed in the same chunks as the
local build's assignment (`index.assign.CHUNK`, counted from row 0), so every head search sees the same batches.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from index.assign import CHUNK as ASSIGN_CHUNK
from index.assign import select_heads
from index.build import HeadSpaceView
from index.centroids import HeadIndex
from index.distance import as_matrix, prepare_base
from index.distributed.staging import Plan, Staging
from index.errors import InvalidVectorsError
from index.types import BuildParams, Metric
from storage.posting_format import code_bytes
from storage.vectors import VectorFile


@dataclass(frozen=True)
class Partition:
    index: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


def split_rows(n: int, partition_rows: int) -> list[Partition]:
    return [Partition(i, s, min(n, s + partition_rows)) for i, s in enumerate(range(0, n, partition_rows))]


@dataclass(frozen=True)
class WorkerSpec:
    """Everything an actor needs besides the plan; small and picklable (paths, not arrays)."""

    input_path: str
    reader: Callable
    n: int
    dim: int
    metric: str
    params: BuildParams
    staging_root: str


class StoredView:
    """Rows of the input as the index stores them (float32, finite, cosine-normalised), read lazily.

    Supports `len()`, `view[a:b]` and `view[rows]` with ascending rows (what `hierarchical_heads` asks for)."""

    def __init__(self, source, metric: Metric):
        self.source, self.metric = source, metric
        self.shape = (int(source.shape[0]), int(source.shape[1]))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        if isinstance(rows, slice):
            start, stop, _ = rows.indices(self.shape[0])
            return read_rows(self.source, start, stop, self.shape[1], self.metric)
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and rows[-1] - rows[0] + 1 == len(rows):  # a contiguous run: one sequential read
            return read_rows(self.source, int(rows[0]), int(rows[-1]) + 1, self.shape[1], self.metric)
        x = as_matrix(self.source[rows], self.shape[1], name="input rows")
        return prepare_base(x, self.metric)


def read_rows(source, start: int, stop: int, dim: int, metric: Metric) -> np.ndarray:
    """Rows [start, stop) validated and prepared as the local build does (same error types and wording)."""
    x = as_matrix(source[start:stop], dim, name=f"input rows {start}..{stop - 1}")
    try:
        return prepare_base(x, metric)
    except InvalidVectorsError as e:
        raise InvalidVectorsError(f"input rows from {start}: {e}") from None


def chunks(part: Partition):
    """[s, e) pieces of the partition, cut at multiples of the local build's assignment chunk."""
    s = part.start
    while s < part.stop:
        e = min(part.stop, (s // ASSIGN_CHUNK + 1) * ASSIGN_CHUNK)
        yield s, e
        s = e


def run_partition(spec: WorkerSpec, source, plan: Plan, head_index: HeadIndex, part: Partition) -> dict:
    """Do one partition and publish its part file; returns a small report. Idempotent: a retry rewrites the
    same rows and replaces the same part file."""
    t0, c0 = time.perf_counter(), time.process_time()
    metric = Metric.parse(spec.metric)
    staging = Staging(spec.staging_root)
    codes = np.empty((part.rows, code_bytes(spec.dim)), np.int8)
    rows, heads, dists = [], [], []
    vectors = VectorFile.open(staging.index_dir / "vectors.f32", 0, writable=True)
    try:
        for s, e in chunks(part):
            x = read_rows(source, s, e, spec.dim, metric)
            vectors.write_rows(s, x)
            codes[s - part.start: e - part.start] = plan.quantizer.encode(x)
            sel, sel_d, _ = select_heads(HeadSpaceView(x, metric)[:], plan.heads, head_index, spec.params)
            ok = sel >= 0
            rows.append(np.broadcast_to(np.arange(s, e)[:, None], sel.shape)[ok])
            heads.append(sel[ok]), dists.append(sel_d[ok])
        vectors.sync()  # the rows are durable before the part file says the partition is done
    finally:
        vectors.close()
    rows, heads, dists = np.concatenate(rows), np.concatenate(heads), np.concatenate(dists)
    staging.save_part(part.index, rows, heads, dists, codes)
    return {"partition": part.index, "rows": part.rows, "records": int(len(rows)), "pid": os.getpid(),
            "seconds": round(time.perf_counter() - t0, 3), "cpu_seconds": round(time.process_time() - c0, 3)}


class PartitionWorker:
    """The body of one Ray actor (the driver wraps it with `ray.remote`): opens the input, loads the driver's plan
    from the staging directory and deserializes the head index once, then runs partitions. Only paths travel
    through Ray, so a restarted actor needs nothing from the object store."""

    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.source = spec.reader(spec.input_path)
        self.plan = Staging(spec.staging_root).load_plan()
        if self.plan is None:
            raise FileNotFoundError(f"{spec.staging_root}: no trained plan to work from")
        self.head_index = HeadIndex.from_bytes(self.plan.head_index, Metric.parse(spec.metric).angular)

    def run(self, part: Partition) -> dict:
        return run_partition(self.spec, self.source, self.plan, self.head_index, part)
