"""The embedded database: `db = vdb.connect(path)`. The gRPC server wraps exactly this object.

A data directory holds many collections (vdb/catalog.py). Every public method translates lower-layer errors
into vdb's typed errors (vdb/errors.py), which carry their gRPC status code.
"""
from __future__ import annotations

import functools
import logging
import os
import shutil
import threading
from pathlib import Path

import numpy as np

from index import BuildParams
from index.mutable import MutableSpannIndex
from index.types import Metric
from storage.lock import DirLock
from vdb.engine.catalog import Catalog, check_name, is_data_directory
from vdb.engine.collection import Collection
from vdb.engine.explain import Explain
from vdb.api import Record, SearchResult
from vdb.config import COLLECTION_SETTINGS, ENGINE_SETTINGS, load_settings
from vdb.errors import AlreadyExistsError, InvalidArgumentError, UnavailableError, VdbError, translate

log = logging.getLogger(__name__)
BUILD_KEYS = {f for f in BuildParams.__dataclass_fields__} - {"metric"}


def public(fn):
    """Raise only vdb's typed errors from the public API."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BaseException as e:
            if isinstance(e, (KeyboardInterrupt, SystemExit, GeneratorExit)):
                raise
            err = translate(e)
            if err is e:
                raise
            raise err from e
    return wrapper


class Database:
    """The embedded engine: every collection of one data directory, in this process (`vdb.connect(path)`).

    Implements the VectorDB interface (vdb/api.py); the gRPC server serves exactly this object. Holds the
    directory's exclusive lock until close()."""

    def __init__(self, path: str | os.PathLike, settings):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self._lock = DirLock(self.path, exclusive=True)
        self._mutex = threading.RLock()
        self._closed = False
        self.catalog = Catalog(self.path)
        self.catalog.sweep_trash()
        self._collections: dict[str, Collection] = {}
        self._broken: dict[str, VdbError] = {}  # collections that failed to open: reported, never fatal to others
        try:
            for name in self.catalog.names():
                self._open_or_report(name)
        except BaseException:
            self.close()
            raise

    def _open_or_report(self, name: str) -> None:
        """Open one collection; if its files are damaged or held by another process, keep the error for every
        call on that collection (DATA_LOSS naming the file and offset, UNAVAILABLE, ...) and serve the rest."""
        try:
            self._collections[name] = self._open_collection(name)
            self._broken.pop(name, None)
        except Exception as e:  # noqa: BLE001 - any failure of one collection must stay that collection's
            err = translate(e)
            log.error("collection %s cannot be opened: %s", name, err.message)
            self._broken[name] = type(err)(f"collection {name!r} cannot be opened: {err.message}")

    def _reopen(self, name: str, failed: Collection) -> Collection | None:
        """A collection whose WAL or apply failed is closed and opened again from its files: recovery replays the
        logged writes (the one that failed included). If that fails too, the error is reported for it alone."""
        with self._mutex:
            if self._collections.get(name) is not failed:
                return self._collections.get(name)  # another caller reopened it already
            log.warning("collection %s: reopening after %r", name, failed.failed)
            del self._collections[name]
            try:
                failed.close(checkpoint=False)
            except Exception as e:  # noqa: BLE001 - a failed log refuses to close cleanly; its files are released
                log.warning("collection %s: closing after the failure: %s", name, e)
            self._open_or_report(name)
            return self._collections.get(name)

    def problems(self) -> dict[str, str]:
        """Collections that could not be opened, with the reason (what `vdbctl check` and repair act on)."""
        return {name: err.message for name, err in self._broken.items()}

    def _open_collection(self, name: str, index: MutableSpannIndex | None = None) -> Collection:
        """The collection `name` over its index directory (opened here unless the caller opened it)."""
        index = index if index is not None else MutableSpannIndex.open_writable(self.catalog.path_of(name))
        try:
            stored = index.manifest.get("collection", {})
            settings = engine_settings(self.settings, stored)
            collection = Collection(name, index, settings)
        except BaseException:
            index.close()
            raise
        return collection

    def _get(self, name: str) -> Collection:
        if self._closed:
            raise UnavailableError("the database is closed")
        check_name(name)
        c = self._collections.get(name)
        if c is not None and c.failed is not None:
            c = self._reopen(name, c)
        if c is None:
            broken = self._broken.get(name)
            if broken is not None:
                raise type(broken)(broken.message)
            self.catalog.path_of(name)  # raises NotFoundError with the standard message
        return c

    # -- collections ------------------------------------------------------------------------------------
    @public
    def create_collection(self, name: str, dim: int, metric: str = "l2", *, exist_ok: bool = False,
                          **options) -> dict:
        """Create an empty collection. Options: collection settings (durability, cache_mb, ...) and index
        build parameters (head_ratio, max_replicas, split_limit, ...)."""
        check_name(name)
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or not 1 <= dim <= 65536:
            raise InvalidArgumentError(f"dim must be an integer in [1, 65536], got {dim!r}")
        metric = Metric.parse(metric).value
        unknown = set(options) - BUILD_KEYS - set(COLLECTION_SETTINGS)
        if unknown:
            raise InvalidArgumentError(f"unknown collection option(s): {', '.join(sorted(unknown))}")
        with self._mutex:
            if name in self.catalog:
                existing = self.describe_collection(name)
                if exist_ok and existing["dim"] == dim and existing["metric"] == metric:
                    return existing
                raise AlreadyExistsError(f"collection {name!r} already exists (dim {existing['dim']}, "
                                         f"metric {existing['metric']})")
            local = load_settings({k: v for k, v in options.items() if k in COLLECTION_SETTINGS})
            settings = engine_settings(self.settings, {k: local[k] for k in options if k in COLLECTION_SETTINGS})
            params = BuildParams(metric=metric, **{k: v for k, v in options.items() if k in BUILD_KEYS})
            path = self.catalog.new_path(name)
            index = MutableSpannIndex.create(path, int(dim), params, extra_manifest={
                "collection": {k: settings[k] for k in COLLECTION_SETTINGS}})
            index.close()
            self.catalog.add(name, path)
            self._collections[name] = self._open_collection(name)
            return self.describe_collection(name)

    @public
    def attach_collection(self, name: str, index_path: str | os.PathLike) -> dict:
        """Serve a `vdbctl build` output directory as a collection, in place (no re-ingest)."""
        check_name(name)
        with self._mutex:
            if name in self.catalog:
                raise AlreadyExistsError(f"collection {name!r} already exists")
            # Opened once: it validates the directory and is the collection's index (a second open held two
            # head indexes at the peak)
            index = MutableSpannIndex.open_writable(index_path)
            try:
                self.catalog.add(name, Path(index_path).resolve())
            except BaseException:
                index.close()
                raise
            try:
                self._collections[name] = self._open_collection(name, index)
            except BaseException:
                self.catalog.forget(name)
                raise
            return self.describe_collection(name)

    @public
    def adopt_collection(self, name: str, fill) -> dict:
        """Create collection `name` from files: `fill(path)` writes a complete collection directory (index files
        and a WAL: a restored snapshot, vdb/engine/snapshot.py) at the new path; then it is opened and served."""
        check_name(name)
        with self._mutex:
            if name in self.catalog:
                raise AlreadyExistsError(f"collection {name!r} already exists")
            path = self.catalog.new_path(name)
            self.catalog.persist()  # a crash in fill() then leaves an unlisted directory, which new_path replaces
            try:
                fill(path)
            except BaseException:
                shutil.rmtree(path, ignore_errors=True)
                raise
            self.catalog.add(name, path)
            try:
                self._collections[name] = self._open_collection(name)
            except BaseException:
                self.catalog.remove(name)  # and its files: a directory that does not open is not served
                raise
            return self.describe_collection(name)

    @public
    def collection(self, name: str) -> Collection:
        """The open Collection object, for engine-level tools (snapshots, replication in vdb/cluster)."""
        return self._get(name)

    @public
    def list_collections(self) -> list[str]:
        """Names of every collection, sorted."""
        return self.catalog.names()

    @public
    def describe_collection(self, name: str) -> dict:
        """name, dim, metric, count, path, durability, build_params, heads."""
        c = self._get(name)
        return {"name": name, "dim": c.dim, "metric": c.metric.value, "count": c.live,
                "path": str(c.path), "durability": c.settings["durability"],
                "build_params": c.index.manifest.get("build_params", {}), "heads": c.index.n_heads}

    @public
    def drop_collection(self, name: str) -> None:
        """Delete a collection: it leaves the catalog first, then its files are removed. A collection that could
        not be opened (damaged) can be dropped too."""
        with self._mutex:
            if self._closed:
                raise UnavailableError("the database is closed")
            if check_name(name) in self._broken:
                del self._broken[name]
            else:
                c = self._get(name)
                del self._collections[name]
                c.close(checkpoint=False)
            self.catalog.remove(name)

    # -- data -------------------------------------------------------------------------------------------
    @public
    def upsert(self, name: str, ids, vectors, payloads=None, *, timeout: float | None = None) -> int:
        """Insert or replace vectors (and their payloads); returns the LSN once durable under the policy.

        `timeout` bounds how long a writer throttled by a maintenance backlog waits."""
        return self._get(name).upsert(ids, vectors, payloads, timeout=timeout)

    @public
    def delete(self, name: str, ids, *, timeout: float | None = None) -> int:
        """Delete ids (unknown ids are ignored); returns the LSN once durable. Deletes are never throttled
        (they add nothing to index), so `timeout` only exists for the VectorDB interface."""
        return self._get(name).delete(ids)

    @public
    def get(self, name: str, ids) -> list[Record]:
        """The records found among `ids` (id, stored vector, payload); missing ids are left out."""
        return self._get(name).get(ids)

    @public
    def search(self, name: str, queries, top_k: int = 10, *, filter=None, nprobe=None, rerank_k=None,
               eps=None, use_cache: bool = True, explain: bool = False, allow_partial: bool = False) -> SearchResult:
        """Nearest neighbours: (ids int64, distances float32), [nq, top_k] or [top_k] for one query vector.
        One node always answers in full, so allow_partial changes nothing here (see VectorDB.search)."""
        c = self._get(name)
        ex = Explain() if explain else None
        ids, d = c.search(queries, top_k, filter=filter, nprobe=nprobe, eps=eps, rerank_k=rerank_k,
                          use_cache=use_cache, explain=ex)
        if np.ndim(queries) == 1:
            ids, d = ids[0], d[0]
        return SearchResult(ids, d, ex.as_dict() if ex is not None else None)

    @public
    def hybrid_search(self, name: str, text=None, vector=None, top_k: int = 10, *, fusion: str = "rrf",
                      alpha: float = 0.5, rrf_k: int = 60, candidates: int | None = None, filter=None, nprobe=None,
                      rerank_k=None, eps=None, use_cache: bool = True, explain: bool = False,
                      allow_partial: bool = False) -> SearchResult:
        """Full-text, vector or hybrid search (see VectorDB.hybrid_search; vdb/engine/textsearch.py)."""
        c = self._get(name)
        ex = Explain() if explain else None
        knobs = {n: v for n, v in (("nprobe", nprobe), ("eps", eps), ("rerank_k", rerank_k)) if v is not None}
        ids, d = c.hybrid_search(text, vector, top_k, fusion_name=fusion, alpha=alpha, rrf_k=rrf_k,
                                 candidates=candidates, filter=filter, knobs=knobs, use_cache=use_cache, explain=ex)
        if (text is None or isinstance(text, str)) and (vector is None or np.ndim(vector) == 1):
            ids, d = ids[0], d[0]
        return SearchResult(ids, d, ex.as_dict() if ex is not None else None)

    @public
    def count(self, name: str) -> int:
        """Live vectors in the collection."""
        return self._get(name).count()

    @public
    def stats(self, name: str) -> dict:
        """Counters of the collection: rows, backlog, WAL, maintenance, index, cache."""
        return self._get(name).stats()

    @public
    def flush(self, name: str) -> int:
        """Index every pending vector and checkpoint; returns the LSN the checkpoint covers."""
        return self._get(name).flush()

    @public
    def maintain(self, name: str, *, compact: bool = False) -> bool:
        """Run one background-maintenance step of a collection now, in this thread: index pending vectors,
        sweep, compact the posting file when due (always, with compact=True), checkpoint when due. The
        background thread runs the same steps on its own schedule; this is for operators and tests."""
        return self._get(name).maintain(compact=compact)

    @public
    def repair(self, name: str) -> dict:
        """Mend one collection where its own data allows (vdb/engine/repair.py), then check it."""
        from vdb.engine.check import check_collection
        c = self._get(name)
        done = c.repair()
        return {**check_collection(c), **done}

    @public
    def check(self, name: str | None = None) -> list[dict]:
        """Verify checksums and invariants of one collection (or all); see vdb/engine/check.py."""
        from vdb.engine.check import check_collection
        names = [name] if name is not None else self.list_collections()
        return [{"collection": n, "ok": False, "violations": [self._broken[n].message], "checked": {}}
                if n in self._broken else check_collection(self._get(n)) for n in names]

    @public
    def close(self, *, checkpoint: bool = True) -> None:
        """Stop background work and release the directory. checkpoint=False skips the final checkpoint: the
        next open replays the WAL instead (what happens after a crash)."""
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            errors = []
            for c in self._collections.values():
                try:
                    c.close(checkpoint=checkpoint)
                except Exception as e:
                    errors.append(e)
            self._collections.clear()
            self._lock.close()
            if errors:
                raise errors[0]

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def engine_settings(database_settings, stored: dict) -> dict:
    """What one collection runs with: the database's engine settings, overridden by the collection's own
    (stored in its manifest). Server settings (keys, TLS, ports) never reach a collection."""
    out = {k: database_settings[k] for k in ENGINE_SETTINGS}
    out.update({k: v for k, v in stored.items() if k in COLLECTION_SETTINGS})
    return out


def connect(path: str | os.PathLike, *, config_file: str | None = None, **settings) -> Database:
    """Open (or create) a data directory in-process. Settings: see vdb/config.py (also VDB_* env vars)."""
    try:
        resolved = load_settings(settings, config_file=config_file)
    except BaseException as e:
        raise translate(e) from None
    return public(Database)(path, resolved)


def check_path(path: str | os.PathLike) -> list[dict]:
    """Check a data directory (every collection) or a single index / collection directory, read-only: nothing is
    replayed, truncated or checkpointed (vdb/engine/check.py). A directory a server holds is refused."""
    from vdb.engine.check import check_stored
    path = Path(path)
    try:
        if is_data_directory(path):
            with DirLock(path, exclusive=False):
                catalog = Catalog.read(path)
                return [check_stored(catalog.path_of(n), n) for n in catalog.names()]
        return [check_stored(path)]
    except BaseException as e:
        raise translate(e) from None
