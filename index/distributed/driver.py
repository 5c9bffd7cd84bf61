"""The distributed bulk build: `build_index_ray`, the driver side.

1. Validate the input, ids and parameters exactly as the local build does (same typed errors), before Ray starts.
2. Train on the driver what every partition shares (the plan): the INT8 quantizer on the local build's sample
   rows, the heads with `hierarchical_heads` (same parameters and seed, so the same heads), the head index.
3. A pool of Ray actors works through the partitions not yet done (`partition.run_partition`); the driver
   records each completed partition in the durable progress record.
4. Merge on the driver (`merge.merge`): cap postings across partitions, write postings, heads, id maps and the
   manifest with the local build's writers, then publish the directory atomically (one rename).

A build killed at any point and restarted with the same input, output and parameters re-uses the staged plan and
completed partitions (staging.py). Ray is imported lazily and only here; nothing in the query path touches it.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np

from index.build import (HeadSpaceView, ProgressFactory, _null_progress, build_head_index, finish_index,
                         prepare_output, quantizer_sample_rows, train_heads, validate_ids)
from index.distributed.merge import committed_stats, merge
from index.distributed.partition import Partition, PartitionWorker, StoredView, WorkerSpec, split_rows
from index.distributed.staging import Plan, Progress, Staging, fingerprint
from index.errors import InvalidParameterError, InvalidVectorsError, VectorIndexError
from index.quantize import Int8Quantizer
from index.types import BuildParams, Metric
from storage.crashpoints import crashpoint
from storage.errors import StorageError
from storage.fileio import publish_dir
from storage.indexdir import IndexDir

log = logging.getLogger(__name__)
DEFAULT_PARTITION_ROWS = 65536      # two assignment chunks; 16 partitions for 1M rows
ACTOR_RETRIES = 2                   # a crashed actor is restarted and its partition retried this often
OBJECT_STORE_BYTES = 128 << 20      # shared memory a locally started Ray reserves (only small reports use it)


def build_index_ray(input_path: str | os.PathLike, out_dir: str | os.PathLike, *, ids=None,
                    params: BuildParams | None = None, address: str | None = None, workers: int | None = None,
                    partition_rows: int = DEFAULT_PARTITION_ROWS, head_sample: int | None = None,
                    overwrite: bool = False, progress: ProgressFactory | None = None,
                    reader: Callable) -> dict:
    """Build the index of the vectors in `input_path` into `out_dir` on Ray; returns the local build's summary
    plus a "ray" section. Same directory format and parameters as `index.build_index`.

    address: a running Ray cluster ("auto" or "host:port" of its GCS); None starts a local Ray with
    `workers` CPUs (default: all) for this build and stops it at the end. An already initialised Ray is used as
    it is. workers: actors in the pool (default: the cluster's CPUs). partition_rows: rows per partition, the
    unit of work and of resume. head_sample: train the heads on this many sampled rows instead of letting the
    hierarchy label every row (None: identical heads to the local build). reader: path -> lazily sliced
    [n, dim] array; actors call it themselves, so the input and the output directory must be visible to every
    node at the same path.
    """
    t0 = time.perf_counter()
    progress = progress or _null_progress
    params = params or BuildParams()
    input_path = Path(input_path).resolve()
    source = reader(input_path)
    n, dim = _check_shape(source)
    # a partition does not know its rows' leaf heads, so every row searches the head index: the manifest says so
    params = dataclasses.replace(params.resolved(dim), leaf_assign=False)
    metric = Metric.parse(params.metric)
    ext_ids = validate_ids(ids, n) if ids is not None else np.arange(n, dtype=np.int64)
    out_dir = prepare_output(out_dir, overwrite)
    _check_knobs(workers, partition_rows, head_sample)
    parts = split_rows(n, partition_rows)
    staging = Staging.for_output(out_dir)
    fp = fingerprint(input_path, source, reader, None if ids is None else ext_ids, params.to_dict(),
                     partition_rows, head_sample)
    timings: dict[str, float] = {}
    lock = staging.lock()
    try:
        record, plan = _prepare(staging, fp, parts, StoredView(source, metric), params, metric, head_sample,
                                progress, timings)
        todo = [p for p in parts if p.index not in record.done]
        spec = WorkerSpec(str(input_path), reader, n, dim, metric.value, params, str(staging.root))
        ray_info = _run_pool(spec, todo, record, staging, address, workers, progress, timings)
        stats = committed_stats(staging) or merge(staging, parts, plan, ext_ids, params, metric, progress,
                                                  timings)
        stats = {**stats, **_finish(staging.index_dir, params, timings)}
        crashpoint("ray-build-before-publish")
        publish_dir(staging.index_dir, out_dir, overwrite=overwrite)
        staging.remove()  # still under the lock, so no other build can pick up a half-removed staging dir
    except InvalidVectorsError:  # bad input rows: nothing worth resuming
        staging.remove()
        raise
    finally:
        lock.close()
    timings["total"] = round(time.perf_counter() - t0, 3)
    ray_info.update(partitions=len(parts), partition_rows=int(partition_rows),
                    partitions_reused=len(parts) - len(todo), partitions_run=len(todo), head_sample=head_sample)
    return {**stats, "timings_s": timings, "path": str(out_dir), "ray": ray_info}


def _finish(path: Path, params: BuildParams, timings: dict) -> dict:
    """Calibration and scan codes, as the local build finishes (a resumed build redoes them: they replace)."""
    d = IndexDir.open(path, writable=True)
    try:
        return finish_index(d, params, timings)
    finally:
        d.close()


def _check_shape(source) -> tuple[int, int]:
    shape = getattr(source, "shape", None)
    if shape is None or len(shape) != 2:
        raise InvalidVectorsError(f"input must be a 2-D array of vectors, got shape {shape}")
    n, dim = int(shape[0]), int(shape[1])
    if n == 0 or dim == 0:
        raise InvalidVectorsError(f"input is empty (shape {shape})")
    return n, dim


def _check_knobs(workers, partition_rows, head_sample) -> None:
    if workers is not None and workers < 1:
        raise InvalidParameterError(f"workers must be >= 1, got {workers}")
    if partition_rows < 1:
        raise InvalidParameterError(f"partition_rows must be >= 1, got {partition_rows}")
    if head_sample is not None and head_sample < 1:
        raise InvalidParameterError(f"head_sample must be >= 1, got {head_sample}")


# -- staging and the plan --------------------------------------------------------------------------------------
def _prepare(staging: Staging, fp: dict, parts: list[Partition], stored: StoredView, params: BuildParams,
             metric: Metric, head_sample: int | None, progress, timings) -> tuple[Progress, Plan]:
    """Resume the staged build of the same thing, or start a fresh one; make sure a plan is trained."""
    record = staging.resume(fp, len(parts))
    if record is None:
        staging.wipe()
        _create_index_dir(staging.index_dir, len(stored), stored.shape[1], metric)
        record = Progress(fp, len(parts), set())
        staging.save_progress(record)
    else:
        log.info("resuming the staged build in %s: %d of %d partitions done", staging.root, len(record.done),
                 len(parts))
    plan = staging.load_plan()
    if plan is None:
        plan = train_plan(stored, params, metric, head_sample, progress, timings)
        staging.save_plan(plan)
    return record, plan


def _create_index_dir(path: Path, n: int, dim: int, metric: Metric) -> None:
    """An index directory with an interim manifest (so a restart can reopen it) and a vector file sized for
    all n rows (so actors only ever write inside it, never grow it concurrently)."""
    d = IndexDir.create_empty(path, {"dim": dim, "metric": metric.value})
    try:
        d.vectors.write_rows(n - 1, np.zeros((1, dim), np.float32))
        d.vectors.sync()
    finally:
        d.close()


def train_plan(stored: StoredView, params: BuildParams, metric: Metric, head_sample: int | None,
               progress, timings: dict) -> Plan:
    """Quantizer, heads and head index, trained on the driver as the local build trains them."""
    n = len(stored)
    t = time.perf_counter()
    quantizer = Int8Quantizer.train(stored[quantizer_sample_rows(n, params.seed)])
    timings["read"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    if head_sample is not None and head_sample < n:
        rows = np.sort(np.random.default_rng([params.seed, 1]).choice(n, head_sample, replace=False))
        data = HeadSpaceView(stored[rows], metric)
    else:
        data = HeadSpaceView(stored, metric)
    heads = train_heads(data, n, params, metric, progress, owners=False).heads
    timings["cluster"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    head_index = build_head_index(heads, metric, params)
    timings["head_index"] = round(time.perf_counter() - t, 3)
    return Plan(quantizer, heads, head_index.to_bytes())


# -- the Ray actor pool ----------------------------------------------------------------------------------------
def _run_pool(spec: WorkerSpec, todo: list[Partition], record: Progress, staging: Staging,
              address: str | None, workers: int | None, progress, timings: dict) -> dict:
    """Run the partitions in `todo` on a pool of actors, recording each as it completes."""
    info = {"address": address, "started_local_cluster": False, "workers": 0, "ray_version": None}
    if not todo:
        return info
    ray = _import_ray()
    info["ray_version"] = ray.__version__
    t = time.perf_counter()
    owned = not ray.is_initialized()
    if owned:
        _init_ray(ray, address, workers)
        info["started_local_cluster"] = address is None
    actors = []
    try:
        n_workers = min(workers or max(1, int(ray.cluster_resources().get("CPU", 1))), len(todo))
        actor_cls = ray.remote(num_cpus=1, max_restarts=ACTOR_RETRIES, max_task_retries=ACTOR_RETRIES)(
            PartitionWorker)
        actors = [actor_cls.remote(spec) for _ in range(n_workers)]
        info["workers"] = n_workers
        timings["ray_start"] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        bar = progress("partitions (ray)", sum(p.rows for p in todo))

        cpu = []

        def done(part: Partition, report: dict) -> None:
            record.done.add(part.index)
            staging.save_progress(record)
            crashpoint("ray-build-partition-recorded")
            cpu.append(report["cpu_seconds"])
            bar.update(part.rows)

        _dispatch(ray, actors, todo, done)
        bar.close()
        timings["partitions"] = round(time.perf_counter() - t, 3)
        # CPU-seconds the actors got per second of the phase: the pool's effective parallelism on this cluster
        info["partition_cpu_s"] = round(sum(cpu), 3)
        info["parallelism"] = round(sum(cpu) / max(timings["partitions"], 1e-9), 2)
    finally:
        for actor in actors:
            ray.kill(actor)
        if owned:
            ray.shutdown()
    return info


def _dispatch(ray, actors: list, todo: list[Partition], done: Callable[[Partition, dict], None]) -> None:
    """Keep every actor busy with the next partition, in row order; call `done` with the partition's report as
    each one completes."""
    queue, idle, inflight = list(todo), list(actors), {}
    while queue or inflight:
        while queue and idle:
            actor, part = idle.pop(), queue.pop(0)
            inflight[actor.run.remote(part)] = (actor, part)
        ready, _ = ray.wait(list(inflight), num_returns=1)
        actor, part = inflight.pop(ready[0])
        report = _get(ray, ready[0])
        log.debug("partition %d: %s", part.index, report)
        done(part, report)
        idle.append(actor)


def _get(ray, ref):
    """ray.get, re-raising our own typed errors (bad input rows, storage errors) as themselves."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, (VectorIndexError, StorageError)):
            raise cause from None
        raise


def _import_ray():
    try:
        import ray
    except ImportError:
        raise InvalidParameterError("the ray build engine needs Ray: pip install 'vdb[ray]'") from None
    return ray


def _init_ray(ray, address: str | None, workers: int | None) -> None:
    if address is not None:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
        return
    # Only paths and small reports travel through Ray, so the object store can stay small. address="local": a
    # private instance even when another Ray cluster runs on this machine (ray.init() would join that one).
    ray.init(address="local", num_cpus=workers or os.cpu_count() or 1, include_dashboard=False,
             log_to_driver=False, configure_logging=False, object_store_memory=OBJECT_STORE_BYTES)
