"""vdb as a *service* in the sweep: the collection engine (embedded) or a running server (`--server`), so the
evaluator measures what a user of the API gets, semantic cache included.

`ServiceSystem` builds vdb's index, serves it as a collection (embedded: attached to a Database in the work
directory; remote: uploaded into a fresh collection over gRPC, dropped at the end) and searches through
`db.search`. An operating point with `use_cache: true` is *primed* first (the query set runs twice, so every
query passes the cache's admission doorkeeper), then measured: its task value is the "served through the cache"
stage of the funnel, and its counters give the cache's hit and false-hit rates over the measured pass.
"""
from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np

from index import BuildParams, build_index
from vdb.eval.systems import BuildInfo

CACHE_COUNTERS = ("lookups", "hits", "near_hits", "misses", "shadow_checks", "false_hits")


class ServiceSystem:
    kind = "vdb-service"
    family = "partition"

    def __init__(self, metric: str, build: dict | None = None, name: str = "vdb-service", *,
                 server: str | None = None, cache_mb: float = 256.0, shadow_rate: float = 0.1):
        self.metric, self.name, self.server = metric, name, server
        self.build_knobs = dict(build or {})
        self.cache_mb, self.shadow_rate = cache_mb, shadow_rate
        self.db = None
        self.collection = "eval"
        self.path: Path | None = None

    def build(self, base: np.ndarray, workdir: Path, progress=None) -> BuildInfo:
        import time
        import vdb
        t = time.perf_counter()
        if self.server:
            self.db = vdb.Client(self.server, timeout=600)
            self.collection = f"eval-{uuid.uuid4().hex[:8]}"
            self.db.create_collection(self.collection, dim=base.shape[1], metric=self.metric, **self.build_knobs)
            self.db.upsert_batched(self.collection, np.arange(len(base)), base)
            self.db.flush(self.collection)
        else:
            self.path = Path(workdir) / "".join(c if c.isalnum() else "_" for c in self.name)
            params = BuildParams.from_dict({**BuildParams().to_dict(), **self.build_knobs, "metric": self.metric})
            build_index(base, self.path / "index", params=params, overwrite=True, progress=progress)
            self.db = vdb.connect(self.path / "data", cache_mb=self.cache_mb, cache_shadow_rate=self.shadow_rate)
            self.db.attach_collection(self.collection, self.path / "index")
        seconds = time.perf_counter() - t
        stats = self.db.stats(self.collection)
        index = stats.get("index", {})
        return BuildInfo(seconds=seconds, ram_bytes=int(index.get("resident_bytes", {}).get("total", 0)),
                         disk_bytes=int(index.get("disk_bytes", {}).get("total", 0)),
                         details={"server": self.server, "cache_mb": self.cache_mb if not self.server else None})

    def prepare(self, queries: np.ndarray, k: int, params: dict) -> None:
        if params.get("use_cache"):
            for _ in range(2):
                self.search(queries, k, params)

    def search(self, queries: np.ndarray, k: int, params: dict,
               counters: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        knobs = {key: v for key, v in params.items() if key in ("nprobe", "eps", "rerank_k")}
        use_cache = bool(params.get("use_cache", False))
        before = self._cache() if counters is not None else None
        res = self.db.search(self.collection, queries, top_k=k, use_cache=use_cache,
                             explain=counters is not None, **knobs)
        if counters is not None:
            after = self._cache()
            counters.update({f"cache_{c}": after.get(c, 0) - before.get(c, 0) for c in CACHE_COUNTERS})
            if res.explain:
                counters["bytes_read"] = res.explain.get("bytes_read", 0)
        return res.ids, res.distances

    def _cache(self) -> dict:
        return self.db.stats(self.collection).get("cache", {})

    def close(self) -> None:
        if self.db is None:
            return
        if self.server:
            try:
                self.db.drop_collection(self.collection)
            finally:
                self.db.close()
        else:
            self.db.close()
        self.db = None
