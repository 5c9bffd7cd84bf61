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

from index.centroids import HeadIndex
from index.distance import as_matrix, from_kernel, head_space, prepare_base
from index.errors import InvalidParameterError
from index.kernels import search_many
from index.quantize import Int8Quantizer
from index.types import BuildParams, Metric, SearchParams
from storage import FormatError, IndexDir
from storage.posting_format import FLAG_RETIRED

MAX_TOP_K = 100_000


@dataclass
class SearchStats:
    """What one search call did (the `explain` output)."""

    postings_probed: int = 0
    records_scanned: int = 0
    bytes_read: int = 0           # posting pages + re-ranked rows, in whole pages as the kernel sees them

    def as_dict(self) -> dict:
        return {"postings_probed": self.postings_probed, "records_scanned": self.records_scanned,
                "bytes_read": self.bytes_read}


class SpannIndex:
    def __init__(self, files: IndexDir):
        self.files = files
        m = files.manifest
        self.path = files.path
        self.dim: int = int(m["dim"])
        self.metric = Metric.parse(m["metric"])
        self.build_params = BuildParams.from_dict(m["build_params"])
        self.quantizer = Int8Quantizer.from_array(self._array("quantizer"))
        self.head_index = HeadIndex.from_bytes(self._array("head_index"), self.metric.angular)
        self.state = self._array("state").astype(np.uint8)
        self.int2ext = self._array("int2ext").astype(np.int64)
        if len(self.state) != m["n_rows"] or len(self.int2ext) != m["n_rows"]:
            raise FormatError(f"{self.path}: row arrays disagree with the manifest ({m['n_rows']} rows)")
        if self.head_index.size != m["n_heads"] or files.postings.n_postings != m["n_heads"]:
            raise FormatError(f"{self.path}: head index, directory and manifest disagree on the number of heads")
        self._resident_cache: int | None = None

    def _array(self, name: str) -> np.ndarray:
        a = self.files.meta.get_array(name)
        if a is None:
            raise FormatError(f"{self.path}: metadata store lacks the {name!r} array")
        return a

    # -- lifecycle --------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, *, verify: str = "lazy") -> "SpannIndex":
        """Open a built index read-only (shared lock). verify: lazy (each posting on first read) | full | none."""
        files = IndexDir.open(path, writable=False, verify=verify)
        try:
            return cls(files)
        except BaseException:
            files.close()
            raise

    def close(self) -> None:
        self.files.close()

    def __enter__(self) -> "SpannIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def n_rows(self) -> int:
        return len(self.state)

    def __len__(self) -> int:
        return int((self.state & 0x80 == 0).sum())

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
            try:
                p = SearchParams(**{**p.__dict__, **knobs})
            except TypeError as e:
                raise InvalidParameterError(f"unknown search parameter: {e}") from None
        rows, dists = self.search_rows(prepare_base(q, self.metric), k, p.resolved(k), threads=threads,
                                       stats=stats)
        ids = np.where(rows >= 0, self.int2ext[np.maximum(rows, 0)], -1)
        dists = from_kernel(dists, self.metric)
        return (ids[0], dists[0]) if single else (ids, dists)

    def probe(self, qs: np.ndarray, p: SearchParams) -> np.ndarray:
        """Posting ids to scan per query [nq, nprobe], -1 where pruned or retired."""
        hd, hids = self.head_index.search(head_space(qs, self.metric), p.nprobe, p.ef_search)
        keep = hd <= (1.0 + p.eps) * hd[:, :1]
        pids = np.where(keep & (hids >= 0), hids, -1)
        flags = self.files.postings.dir.flags
        live = pids >= 0
        retired = np.zeros_like(live)
        retired[live] = (flags[pids[live]] & FLAG_RETIRED) != 0
        return np.where(retired, -1, pids)

    def search_rows(self, qs: np.ndarray, k: int, p: SearchParams, *, allow: np.ndarray | None = None,
                    threads: int = 1, stats: SearchStats | None = None, rerank: bool = True):
        """Search with prepared (stored-form) queries; returns (internal rows, kernel distances)."""
        P = self.probe(qs, p)
        store = self.files.postings
        directory = store.dir  # one snapshot for the whole call
        used = np.unique(P[P >= 0])
        store.ensure_verified(used)
        if p.prefetch:
            store.willneed(used)
        buf = store.buffer
        words = len(buf) // 4 * 4
        mat = self.files.vectors.matrix()
        is_l2 = self.metric is Metric.L2
        QA, qw, QC = self._prepare(qs, is_l2)
        allow = allow if allow is not None else np.zeros(0, np.uint8)
        nq = len(qs)
        out_ids = np.empty((nq, k), np.int64)
        out_d = np.empty((nq, k), np.float32)
        scanned = np.zeros(nq, np.int64)
        args = (buf.view(np.int8), buf[:words].view(np.uint32), buf, directory.offset, directory.count)

        def run(lo: int, hi: int) -> int:
            return search_many(*args, P[lo:hi], store.rec_size, is_l2, QA[lo:hi], qw, QC[lo:hi], qs[lo:hi],
                               self.state, allow, mat, mat.view(np.uint32), k, p.rerank_k, rerank,
                               out_ids[lo:hi], out_d[lo:hi], scanned[lo:hi])

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
            stats.postings_probed += int((P >= 0).sum())
            stats.records_scanned += int(scanned.sum())
            stats.bytes_read += sum(store.bytes_of(row[row >= 0]) for row in P)
            if rerank:  # each re-ranked row is one random read of its page(s)
                stats.bytes_read += int(np.minimum(scanned, p.rerank_k).sum()) * _row_pages(self.dim) * 4096
        return out_ids, out_d

    def _prepare(self, qs: np.ndarray, is_l2: bool):
        qz = self.quantizer
        if is_l2:
            u, w = qz.query_l2(qs)
            return u, w, np.zeros(len(qs), np.float32)
        v = (qs * qz.scale).astype(np.float32)
        const = (qs.astype(np.float64) @ (qz.lo + 128.0 * qz.scale).astype(np.float64)).astype(np.float32)
        return v, np.zeros(self.dim, np.float32), const

    # -- introspection ----------------------------------------------------------------------------------
    def resident_bytes(self) -> dict[str, int]:
        """RAM the index keeps resident (not counting the page cache of the mmap'd files)."""
        if self._resident_cache is None:
            self._resident_cache = self.head_index.resident_bytes()
        d = self.files.postings.dir
        parts = {
            "head_index": self._resident_cache,
            "posting_directory": int(d.offset.nbytes + d.capacity.nbytes + d.count.nbytes + d.crc.nbytes
                                     + d.flags.nbytes),
            "row_state": int(self.state.nbytes),
            "id_map": int(self.int2ext.nbytes),
            "quantizer": int(self.quantizer.lo.nbytes * 2),
        }
        parts["total"] = sum(parts.values())
        return parts

    def info(self) -> dict:
        from index.build import length_stats
        m = self.files.manifest
        d = self.files.postings.dir
        live = (d.flags & FLAG_RETIRED) == 0
        disk = self.files.disk_bytes()
        return {
            "path": str(self.path), "vectors": len(self), "rows": self.n_rows, "dim": self.dim,
            "metric": self.metric.value, "heads": int(live.sum()), "head_index": self.head_index.kind,
            "posting_lengths": length_stats(d.count[live]),
            "disk_bytes": {**disk, "total": sum(disk.values())},
            "resident_bytes": self.resident_bytes(),
            "build_params": m["build_params"], "build_stats": m.get("build_stats", {}),
        }

    def drop_cache(self) -> None:
        """Evict the posting and vector files from the page cache (cold-cache benchmarks)."""
        self.files.postings.drop_cache()
        self.files.vectors.drop_cache()


def _row_pages(dim: int) -> int:
    return max(1, -(-(4 * dim + 4) // 4096))


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise InvalidParameterError(f"k must be an integer, got {k!r}")
    if not 1 <= int(k) <= MAX_TOP_K:
        raise InvalidParameterError(f"k must be in [1, {MAX_TOP_K}], got {k}")
    return int(k)
