"""The systems a sweep measures, behind one small interface, and vdb's own SPANN index as the first of them.

A `System` is built once (`build`) and then searched at many operating points (`search` with the query-time
knobs of one point). Families: "exact" (flat), "partition" (vdb SPANN, faiss IVF), "graph" (faiss HNSW): the
recommendation's check compares families.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from index import BuildParams, SearchStats, SpannIndex, build_index

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildInfo:
    seconds: float
    ram_bytes: int              # what the system keeps resident to answer queries
    disk_bytes: int             # 0 for in-memory peers
    details: dict = field(default_factory=dict)


class System(Protocol):
    kind: str
    family: str
    metric: str

    def build(self, base: np.ndarray, workdir: Path, progress=None) -> BuildInfo: ...

    def search(self, queries: np.ndarray, k: int, params: dict,
               counters: dict | None = None) -> tuple[np.ndarray, np.ndarray]: ...

    def close(self) -> None: ...


class VdbSystem:
    """vdb's disk index (built into `workdir`, searched through mmap, one thread)."""

    kind = "vdb"
    family = "partition"

    def __init__(self, metric: str, build: dict | None = None, name: str = "vdb"):
        self.metric = metric
        self.params = BuildParams.from_dict({**BuildParams().to_dict(), **(build or {}), "metric": metric})
        self.name = name
        self.index: SpannIndex | None = None
        self.path: Path | None = None

    def build(self, base: np.ndarray, workdir: Path, progress=None) -> BuildInfo:
        self.path = Path(workdir) / _safe(self.name)
        summary = build_index(base, self.path, params=self.params, overwrite=True, progress=progress)
        self.index = SpannIndex.open(self.path)
        info = self.index.info()
        return BuildInfo(seconds=float(summary["timings_s"]["total"]),
                         ram_bytes=int(self.index.resident_bytes()["total"]),
                         disk_bytes=int(info["disk_bytes"]["total"]),
                         details={"n_heads": summary["n_heads"], "posting_lengths": summary["posting_lengths"],
                                  "replicas_mean": summary["replicas_mean"], "timings_s": summary["timings_s"]})

    def search(self, queries: np.ndarray, k: int, params: dict,
               counters: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        stats = SearchStats() if counters is not None else None
        ids, dists = self.index.search(queries, k, threads=1, stats=stats, **params)
        if counters is not None:
            counters.update(stats.as_dict())
        return ids, dists

    def close(self) -> None:
        if self.index is not None:
            self.index.close()
            self.index = None


def remove_index_dir(system) -> None:
    """Delete what a vdb system wrote (the sweep keeps only its measurements)."""
    path = getattr(system, "path", None)
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
