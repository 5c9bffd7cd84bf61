"""The driver's merge: partition records -> capped postings -> the staged index directory, committed once.

The records of all partitions are concatenated in row order, which is the order the local build's
`closure_assign` collects them in, and then finished by the same `assignment_from_records`: sort by (head,
distance), cap posting lengths (a vector is never left in zero postings), drop heads nobody chose. The postings,
heads and metadata are written with the local build's own writers (`index.build`), so the format is the same.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from index.assign import assignment_from_records
from index.build import _write_postings, drop_empty_heads, write_metadata
from index.centroids import HeadIndex
from index.distributed.partition import Partition
from index.distributed.staging import Plan, Staging
from index.types import BuildParams, Metric
from storage import CorruptionError, IndexDir
from storage.posting_format import code_bytes

log = logging.getLogger(__name__)


def committed_stats(staging: Staging) -> dict | None:
    """Build stats of a merge that already committed (a crash hit before the publish), else None."""
    d = IndexDir.open(staging.index_dir)
    try:
        return dict(d.manifest["build_stats"]) if "build_stats" in d.manifest else None
    finally:
        d.close()


def load_records(staging: Staging, parts: list[Partition], n: int, dim: int):
    """(row, head, dist) records of every partition in row order, and the INT8 codes of all rows."""
    codes = np.empty((n, code_bytes(dim)), np.int8)
    rows, heads, dists = [], [], []
    for p in sorted(parts, key=lambda p: p.start):
        a = staging.load_part(p.index)
        r = a["rows"]
        if a["codes"].shape != (p.rows, codes.shape[1]) or (len(r) and (r.min() < p.start or r.max() >= p.stop)):
            raise CorruptionError(staging.part_path(p.index), f"part file does not match rows {p.start}..{p.stop}",
                                  hint="delete the staging directory and rebuild")
        codes[p.start: p.stop] = a["codes"]
        rows.append(r.astype(np.int64)), heads.append(a["heads"].astype(np.int64)), dists.append(a["dists"])
    return np.concatenate(rows), np.concatenate(heads), np.concatenate(dists).astype(np.float32), codes


def merge(staging: Staging, parts: list[Partition], plan: Plan, ext_ids: np.ndarray, params: BuildParams,
          metric: Metric, progress, timings: dict) -> dict:
    """Write postings, heads and metadata into the staged index directory; return the build stats."""
    n, dim = len(ext_ids), plan.heads.shape[1]
    t = time.perf_counter()
    vec, head, dist, codes = load_records(staging, parts, n, dim)
    orphans = int((np.bincount(vec, minlength=n) == 0).sum())
    if orphans:  # select_heads never drops a row, so this is a damaged staging directory
        raise CorruptionError(staging.parts_dir, f"{orphans} rows have no posting record",
                              hint="delete the staging directory and rebuild")
    assignment = assignment_from_records(vec, head, dist, n, len(plan.heads), params)
    del vec, head, dist
    head_index = HeadIndex.from_bytes(plan.head_index, metric.angular)
    heads, assignment, head_index = drop_empty_heads(plan.heads, assignment, head_index, metric, params)
    timings["assign_merge"] = round(time.perf_counter() - t, 3)

    t = time.perf_counter()
    d = IndexDir.open(staging.index_dir, writable=True)
    try:
        _write_postings(d, assignment, codes, params.extent_slack, progress)
        del codes
        d.heads.append(heads)
        d.vectors.set_rows(n)
        for f in (d.vectors, d.heads, d.postings):  # exact sizes, durable before the metadata points at them
            f.finish()
            f.sync()
        timings["write"] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        stats = write_metadata(d, ext_ids, heads, head_index, assignment, plan.quantizer, params, metric)
        timings["metadata"] = round(time.perf_counter() - t, 3)
    finally:
        d.close()
    log.info("merged %d partitions: %d vectors into %d postings", len(parts), n, len(heads))
    return stats
