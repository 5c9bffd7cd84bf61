"""SpannIndex: a bulk-built SPANN index directory opened for search.

Resident in RAM: the head index, the posting directory, one state byte and one external id per row, and the
quantizer. Posting lists and full-precision vectors stay on disk and are read through mmap.

Search: nearest `nprobe` heads -> drop heads farther than (1 + eps) x the nearest -> scan their INT8 postings
(numba, GIL released) keeping `rerank_k` candidates, deduplicated across replicas -> re-rank those with the
float32 vectors -> top k.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from index.assign import over_fetch
from index.calibrate import nprobe_for
from index.centroids import HeadIndex
from index.diskread import DiskSearcher
from index.distance import as_matrix, from_kernel, head_space, prepare_base
from index.errors import InvalidParameterError
from index.ids import RowIds, tail_of_stored
from index.committed import CommittedState
from index.kernels import exact_rows, search_many
from index.quantize import Int8Quantizer, kernel_queries
from index.rowstate import is_live
from index.diskserve import DiskServing
from index.tierscan import TierSearcher
from index.types import FALLBACK_NPROBE, BuildParams, HeadProbe, Metric, SearchParams
from storage import FormatError, IndexDir
from storage.posting_format import FLAG_RETIRED

MAX_TOP_K = 100_000


@dataclass
class SearchStats:
    """What one search call did (the `explain` output)."""

    postings_probed: int = 0
    records_scanned: int = 0
    bytes_read: int = 0           # posting pages + re-ranked rows, in whole pages as the kernel sees them
    probe: HeadProbe | None = None  # what the last call's head search chose (the memtable scan follows it)

    def as_dict(self) -> dict:
        return {"postings_probed": self.postings_probed, "records_scanned": self.records_scanned,
                "bytes_read": self.bytes_read}


class SpannIndex(CommittedState, DiskServing):
    def __init__(self, files: IndexDir):
        self.files = files
        m = files.manifest
        self.path = files.path
        self.dim: int = int(m["dim"])
        self.metric = Metric.parse(m["metric"])
        self.build_params = BuildParams.from_dict(m["build_params"])
        q = files.meta.get_array("quantizer")
        self.quantizer = Int8Quantizer.from_array(q) if q is not None else None
        # read from LMDB's mapping as a stream: the open never holds the head index twice
        self.head_index = files.meta.read_array_stream("head_index",
                                                       lambda read: HeadIndex.from_reader(read, self.metric.angular))
        n_rows = int(m["n_rows"])
        self.state = _row_array(files.meta.get_array("state"), n_rows, np.uint8, self.path, "state")
        self.int2ext = self._load_ids(m, n_rows)
        n_heads = int(m["n_heads"])
        bad_heads = files.heads.verify()  # few rows, and every insert and split reads them: check them all now
        if bad_heads:
            files.heads.raise_corrupt_row(bad_heads[0])
        if files.postings.n_postings != n_heads or (n_heads and (self.head_index is None or self.quantizer is None)):
            raise FormatError(f"{self.path}: posting directory, head index and manifest disagree on the heads")
        retired = np.nonzero((files.postings.dir.flags & FLAG_RETIRED) != 0)[0]
        # retired heads still in the head index (a flat index drops them at once; HNSW keeps them until rebuilt)
        self._retired_in_head_index = int(np.isin(retired, self._head_ids()).sum()) if len(retired) else 0
        self._resident_cache: int | None = None
        self.calibration = m.get("calibration")
        self.disk: DiskSearcher | None = None  # set by use_disk(): postings and rows read with O_DIRECT
        self.tier: TierSearcher | None = None  # set by use_disk() when the scan codes fit the budget

    def _load_ids(self, m: dict, n_rows: int) -> RowIds:
        """The row -> external id map: computed for the dense prefix of a build given no ids, stored for the rest
        (index/ids.py)."""
        dense = int(m.get("dense_rows", 0)) if m.get("id_map") == "dense" else 0
        if not 0 <= dense <= n_rows:
            raise FormatError(f"{self.path}: the manifest's dense_rows {dense} exceeds its {n_rows} rows")
        if dense == n_rows:
            return RowIds(dense, np.zeros(0, np.int64), self)  # nothing appended since the build: no array read
        start = m.get("int2ext_from")
        found = self.files.meta.read_array("int2ext", lambda a: [tail_of_stored(a, start, dense, n_rows)])
        tail = found[0] if found is not None else tail_of_stored(None, start, dense, n_rows)
        if tail is None:
            raise FormatError(f"{self.path}: the stored 'int2ext' array does not hold rows "
                              f"{start or 0}..{n_rows - 1} as the manifest says")
        return RowIds(dense, tail, self)

    def _head_ids(self) -> np.ndarray:
        if self.head_index is None:
            return np.zeros(0, np.int64)
        import faiss
        return faiss.vector_to_array(self.head_index.index.id_map).astype(np.int64)

    # -- lifecycle --------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, *, verify: str = "lazy", memory_budget_mb: float | None = None,
             direct_io: bool = True, scan_tier: bool = True) -> "SpannIndex":
        """Open a built index read-only (shared lock). verify: lazy (each posting on first read) | full | none.

        memory_budget_mb: serve from disk within this much RAM (index/diskread.py, and index/tierscan.py if the
        index has scan codes that fit and `scan_tier`); reads bypass the page cache (`direct_io`).
        None: read through mmap and the page cache."""
        files = IndexDir.open(path, writable=False, verify=verify)
        try:
            index = cls(files)
            if memory_budget_mb is not None:
                index.use_disk(memory_budget_mb, direct_io=direct_io, verify=verify != "none", scan_tier=scan_tier)
        except BaseException:
            files.close()
            raise
        release_free_memory()
        return index

    def close(self) -> None:
        """Release the files and the directory lock."""
        self.stop_disk()
        self.files.close()

    def default_nprobe(self, target_recall: float = 0.0) -> int:
        """The nprobe an automatic search (nprobe 0) uses: calibrated by the build for its target recall, or
        for `target_recall` from the calibration curve; FALLBACK_NPROBE for an uncalibrated index."""
        tiered = self.tier is not None and self.manifest.get("tier_calibration")  # measured through the tier
        return nprobe_for(self.manifest["tier_calibration"] if tiered else self.calibration, target_recall,
                          FALLBACK_NPROBE)

    def __enter__(self) -> "SpannIndex":
        return self

    def __exit__(self, *exc) -> None:  # noqa: D105
        self.close()

    @property
    def n_rows(self) -> int:
        """Rows ever stored (deleted ones included): the length of the state array."""
        return len(self.state)

    def __len__(self) -> int:
        return int(is_live(self.state).sum())

    # -- search -----------------------------------------------------------------------------------------
    def search(self, queries, k: int = 10, nprobe: int | None = None, *, params: SearchParams | None = None,
               threads: int = 1, stats: SearchStats | None = None, **knobs):
        """Top-k search. `queries`: [dim] or [nq, dim]. Returns (external ids int64, distances float32), each
        [nq, k] (or [k] for one query), padded with -1 / inf when fewer than k vectors are reachable.

        Knobs (SearchParams fields) may be given as keywords: nprobe, eps, rerank_k, ef_search, prefetch.
        """
        single = np.ndim(queries) == 1
        q = as_matrix(queries, self.dim, name="queries")
        k = _check_k(k)
        p = params or SearchParams()
        if nprobe is not None:
            knobs["nprobe"] = nprobe
        if knobs:
            p = p.replace(**knobs)
        rows, dists = self.search_rows(prepare_base(q, self.metric), k, p.resolved(k), threads=threads,
                                       stats=stats)
        ids = self.int2ext.of_answers(rows)
        dists = from_kernel(dists, self.metric)
        return (ids[0], dists[0]) if single else (ids, dists)

    def probe(self, qs: np.ndarray, p: SearchParams, directory=None) -> np.ndarray:
        """Posting ids to scan per query [nq, <= nprobe], -1 where pruned; retired heads are skipped."""
        return self.probe_heads(qs, p, directory).postings

    def probe_heads(self, qs: np.ndarray, p: SearchParams, directory=None) -> HeadProbe:
        """The postings to scan per query and the nearest live head (HeadProbe).

        `directory` must be the snapshot the scan will use, taken *before* this call: a posting retired by a
        concurrent split is then still readable in it, and a head added after it is not probed. Such a head
        can still be a query's nearest, and is reported as such: the memtable scans the rows filed before it."""
        p = p.with_nprobe(self.default_nprobe(p.target_recall))
        directory = directory if directory is not None else self.files.postings.dir
        head_index = self.head_index
        if head_index is None or head_index.size == 0:
            return HeadProbe(np.full((len(qs), 0), -1, np.int64), np.full(len(qs), -1, np.int64))
        # over-fetch so that retired heads do not eat probes (by their share: a fixed 2 x nprobe doubled the
        # head search's cost once any head was retired, issue 13)
        extra = over_fetch(p.nprobe, self._retired_in_head_index, head_index.size)
        hd, found = head_index.search(head_space(qs, self.metric), p.nprobe + extra, p.ef_search + extra)
        known = found < len(directory)  # heads added after the snapshot are unknown to it
        retired = np.zeros(found.shape, bool)
        if extra:
            retired = known & (found >= 0) & ((directory.flags[np.where(known, found, 0)] & FLAG_RETIRED) != 0)
        candidate = (found >= 0) & ~retired  # nprobe >= 1: at least one column
        nearest = np.where(candidate.any(1), found[np.arange(len(qs)), candidate.argmax(1)], -1).astype(np.int64)
        hids = np.where(known, found, -1)
        if extra:
            dead = (hids < 0) | retired
            order = np.argsort(dead, axis=1, kind="stable")[:, : p.nprobe]  # live heads first, nearest first
            hd, hids = np.take_along_axis(np.where(dead, np.inf, hd), order, 1), np.take_along_axis(hids, order, 1)
        keep = (hd <= (1.0 + p.eps) * hd[:, :1]) & (hids >= 0) & np.isfinite(hd)
        return HeadProbe(np.where(keep, hids, -1), nearest)

    def search_rows(self, qs: np.ndarray, k: int, p: SearchParams, *, allow: np.ndarray | None = None,
                    threads: int = 1, stats: SearchStats | None = None, rerank: bool = True):
        """Search with prepared (stored-form) queries; returns (internal rows, kernel distances)."""
        p = p.with_nprobe(self.default_nprobe(p.target_recall))
        if p.rerank_k > max(k, len(self.state)):  # more candidates than rows changes no answer, only the memory
            p = p.replace(rerank_k=max(k, len(self.state)))  # the kernels allocate (a client may send 4e9)
        if self.disk is not None and rerank:
            return self._search_disk(qs, k, p, allow, threads, stats)
        if p.prefetch and rerank:
            # Pass 1 (no re-rank) finds the rerank_k candidates so their rows can be read in parallel; pass 2
            # then finds the same postings in the page cache.
            cand, _ = self.search_rows(qs, p.rerank_k, p, allow=allow, threads=threads, rerank=False)
            self.files.vectors.willneed(cand[cand >= 0])
            p = p.replace(prefetch=False)
        store = self.files.postings
        directory = store.dir  # one snapshot for the whole call; the buffer is read after it (see PostingStore)
        state = self.state     # replaced, never edited, when rows move (see MutableSpannIndex._reassign)
        probe = self.probe_heads(qs, p, directory)
        P = probe.postings
        used = np.unique(P[P >= 0])
        store.ensure_verified(used)
        if p.prefetch:
            store.willneed(used)
        buf = store.buffer
        words = len(buf) // 4 * 4
        mat = self.files.vectors.matrix()
        is_l2 = self.metric is Metric.L2
        QA, qw, QC = kernel_queries(self.quantizer, qs, is_l2)
        allow = allow if allow is not None else np.zeros(0, np.uint8)
        nq = len(qs)
        out_ids = np.empty((nq, k), np.int64)
        out_d = np.empty((nq, k), np.float32)
        scanned = np.zeros(nq, np.int64)
        args = (buf.view(np.int8), buf[:words].view(np.uint32), buf, directory.offset, directory.count)

        def run(lo: int, hi: int) -> int:
            return search_many(*args, P[lo:hi], store.rec_size, is_l2, QA[lo:hi], qw, QC[lo:hi], qs[lo:hi],
                               state, allow, mat, mat.view(np.uint32), k, p.rerank_k, rerank,
                               out_ids[lo:hi], out_d[lo:hi], scanned[lo:hi], p.rerank_eps or 0.0)

        if threads <= 1 or nq < 2 * threads:
            bads = [run(0, nq)]
        else:
            bounds = np.linspace(0, nq, threads + 1).astype(int)
            with ThreadPoolExecutor(threads) as pool:
                bads = list(pool.map(run, bounds[:-1], bounds[1:]))
        for bad in bads:
            if bad >= 0:
                self.files.vectors.raise_corrupt_row(int(bad))
        if stats is not None:
            stats.probe = probe
            stats.postings_probed += int((P >= 0).sum())
            stats.records_scanned += int(scanned.sum())
            stats.bytes_read += sum(store.bytes_of(row[row >= 0]) for row in P)
            if rerank:  # each re-ranked row is one random read of its page(s) (an upper bound with rerank_eps)
                stats.bytes_read += int(np.minimum(scanned, p.rerank_k).sum()) * _row_pages(self.dim) * 4096
        return out_ids, out_d

    # -- what the calibration reads (index/calibrate.py) ------------------------------------------------
    def live_mask(self) -> np.ndarray:
        """bool per row: not deleted."""
        return is_live(self.state)

    def head_count(self) -> int:
        """Heads in the head index (what nprobe can reach)."""
        return int(self.head_index.size) if self.head_index is not None else 0

    def stored_vectors(self, rows: np.ndarray) -> np.ndarray:
        """Stored-form float32 vectors of rows, checksums verified."""
        return self.files.vectors.read(rows)

    def stored_matrix(self) -> np.ndarray:
        """The vector file as float32 [rows, dim + 1] (mmap view; the last column is the checksum)."""
        return self.files.vectors.matrix()

    def exact_rows(self, qs: np.ndarray, k: int, rows: np.ndarray):
        """Exact search restricted to `rows` (prepared queries): (rows [nq, k] padded -1, kernel distances).
        Reads the float32 rows straight from the mmap and verifies each row's checksum in the kernel."""
        mat = self.files.vectors.matrix()
        is_l2 = self.metric is Metric.L2
        rows = np.asarray(rows, dtype=np.int64)
        kk = min(k, len(rows))
        out_rows = np.full((len(qs), k), -1, np.int64)
        out_d = np.full((len(qs), k), np.inf, np.float32)
        dist = np.empty(len(rows), np.float32)
        for i, q in enumerate(qs):
            bad = exact_rows(mat, mat.view(np.uint32), rows, q, is_l2, dist)
            if bad >= 0:
                self.files.vectors.raise_corrupt_row(int(bad))
            if kk == 0:
                continue
            top = np.argpartition(dist, kk - 1)[:kk] if kk < len(rows) else np.arange(len(rows))
            top = top[np.argsort(dist[top], kind="stable")]
            out_rows[i, :kk], out_d[i, :kk] = rows[top], dist[top]
        return out_rows, out_d

    # -- introspection ----------------------------------------------------------------------------------
    def resident_bytes(self) -> dict[str, int]:
        """RAM the index keeps resident (not counting the page cache of the mmap'd files)."""
        if self._resident_cache is None:
            self._resident_cache = self.head_index.resident_bytes() if self.head_index is not None else 0
        d = self.files.postings.dir
        parts = {
            "head_index": self._resident_cache,
            "posting_directory": int(d.offset.nbytes + d.capacity.nbytes + d.count.nbytes + d.crc.nbytes
                                     + d.flags.nbytes),
            "row_state": int(self.state.nbytes),
            "id_map": int(self.int2ext.nbytes),
            "quantizer": int(self.quantizer.lo.nbytes * 2) if self.quantizer is not None else 0,
        }
        parts["total"] = sum(parts.values())
        return parts

    def info(self) -> dict:
        """What `vdbctl info` prints: counts, posting lengths, bytes on disk and resident, build parameters, the
        scan tier (scan_tier_info)."""
        from index.build import length_stats
        m = self.files.manifest
        d = self.files.postings.dir
        live = (d.flags & FLAG_RETIRED) == 0
        disk = self.files.disk_bytes()
        return {
            "path": str(self.path), "vectors": len(self), "rows": self.n_rows, "dim": self.dim,
            "metric": self.metric.value, "heads": int(live.sum()),
            "head_index": self.head_index.kind if self.head_index is not None else None,
            "posting_lengths": length_stats(d.count[live]),
            "disk_bytes": {**disk, "total": sum(disk.values())},
            "resident_bytes": self.resident_bytes(),
            "build_params": m["build_params"], "build_stats": m.get("build_stats", {}),
            "scan_tier": self.scan_tier_info(),
        }

    def drop_cache(self) -> None:
        """Evict the posting and vector files from the page cache (cold-cache benchmarks)."""
        self.files.postings.drop_cache()
        self.files.vectors.drop_cache()

    # -- what callers above the index may read (they never reach into self.files) ----------------------
    @property
    def manifest(self) -> dict:
        """The manifest of the last commit (read-only by convention: commit() replaces it)."""
        return self.files.manifest

    @property
    def n_heads(self) -> int:
        """Heads ever created (posting ids), retired ones included."""
        return int(self.files.heads.rows)

    def head_vectors(self) -> np.ndarray:
        """Every head vector by posting id [n_heads, dim] (a view of the mmap'd head file)."""
        return self.files.heads.matrix()[:, : self.dim]

    def max_vector_norm(self, block: int = 1 << 16) -> float:
        """The largest norm of any stored vector, streamed over the vector file in blocks."""
        m, best = self.files.vectors.matrix(), 0.0
        for s in range(0, len(m), block):
            part = np.asarray(m[s: s + block, : self.dim])
            best = max(best, float(np.sqrt((part * part).sum(1).max())))
        return best


def release_free_memory() -> None:
    """Return freed heap to the OS (glibc malloc_trim). Opening copies the head index out of LMDB and faiss
    copies it again; without this the process keeps those transient copies as resident memory."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _row_array(a: np.ndarray | None, n: int, dtype, path, name: str) -> np.ndarray:
    a = np.zeros(0, dtype) if a is None and n == 0 else a
    if a is None or len(a) != n:
        raise FormatError(f"{path}: stored {name!r} array has {None if a is None else len(a)} rows, "
                          f"the manifest says {n}")
    return a.astype(dtype, copy=False)


def _row_pages(dim: int) -> int:
    return max(1, -(-(4 * dim + 4) // 4096))


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise InvalidParameterError(f"k must be an integer, got {k!r}")
    if not 1 <= int(k) <= MAX_TOP_K:
        raise InvalidParameterError(f"k must be in [1, {MAX_TOP_K}], got {k}")
    return int(k)
