"""The read path of an index served from disk under a memory budget (`SpannIndex.open(memory_budget_mb=...)`).

Per query, in two waves of reads, each issued at once (storage/blockio.py: O_DIRECT + one AIO submission):
  1. the probed postings that the posting cache lacks (storage/posting_cache.py: the budget left after the
     index's resident structures); each is checksum-verified the first time this process reads it, then cached;
     the INT8 scan runs over the bytes read and the cached ones;
  2. the float32 rows of the re-rank candidates. Candidates are ranked by their INT8 distance; with
     `rerank_eps` > 0 only those within rerank_eps * |d_k| of the k-th INT8 distance d_k are read (at least
     k; kernels/search.py `rerank_cut`, the same rule as the mmap path; automatic here: DISK_RERANK_EPS): the
     INT8 distances already decide the rest (measured in docs/benchmarks.md), and each candidate costs a page
     read.
Nothing goes through the page cache, so what a cgroup limit counts is the process's own memory.
"""
from __future__ import annotations

import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from index.kernels import exact_at, rerank_cut, search_one
from index.types import DISK_RERANK_EPS
from storage import CorruptionError
from storage.blockio import BlockReader
from storage.fileheader import HEADER_SIZE
from storage.posting_cache import PostingCache


def each_query(search_one, P, qs, prepared, is_l2: bool, state, allow, k: int, rerank_k: int, eps: float,
               threads: int):
    """Run `search_one` (a searcher's one-query method) for every query on `threads` threads: (rows [nq, k],
    distances [nq, k], records scanned [nq], bytes read [nq])."""
    QA, qw, QC = prepared
    nq = len(qs)
    out_ids = np.full((nq, k), -1, np.int64)
    out_d = np.full((nq, k), np.inf, np.float32)
    scanned, read = np.zeros(nq, np.int64), np.zeros(nq, np.int64)

    def run(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            out_ids[i], out_d[i], scanned[i], read[i] = search_one(
                P[i], qs[i], QA[i], qw, QC[i], is_l2, state, allow, k, rerank_k, eps)

    if threads <= 1 or nq < 2 * threads:
        run(0, nq)
    else:
        bounds = np.linspace(0, nq, threads + 1).astype(int)
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(run, bounds[:-1], bounds[1:]))
    return out_ids, out_d, scanned, read


class DiskSearcher:
    def __init__(self, postings, vectors, cache_bytes: int, *, verify: bool = True, direct: bool = True):
        self.postings, self.vectors = postings, vectors   # PostingStore, VectorFile (directory, paths, sizes)
        self.post_reader = BlockReader(postings.path, direct=direct)
        self.row_reader = BlockReader(vectors.path, direct=direct)
        self.cache = PostingCache(cache_bytes)
        self._verified = np.zeros(postings.n_postings, bool) if verify else np.ones(postings.n_postings, bool)
        self._no_rows = np.zeros((0, vectors.dim + 1), np.float32)

    def close(self) -> None:
        self.post_reader.close()
        self.row_reader.close()

    def io_stats(self) -> dict:
        """Device reads so far (postings and rows) and the posting cache's counters."""
        return {"postings": self.post_reader.stats.as_dict(), "rows": self.row_reader.stats.as_dict(),
                "cache": self.cache.as_dict()}

    def search(self, P: np.ndarray, qs: np.ndarray, prepared, is_l2: bool, state, allow, k: int, p,
               threads: int = 1):
        """Every query (row of P: its posting ids, -1 pruned) on `threads` threads. Returns (rows [nq, k],
        distances [nq, k], records scanned [nq], bytes read [nq])."""
        eps = DISK_RERANK_EPS if p.rerank_eps is None else p.rerank_eps
        return each_query(self.search_one, P, qs, prepared, is_l2, state, allow, k, p.rerank_k, eps, threads)

    # -- one query ------------------------------------------------------------------------------------------
    def _postings(self, pids: np.ndarray):
        """(buffer, offsets, counts, bytes read) holding the records of `pids`, cached or read now."""
        d = self.postings.dir
        rec = self.postings.rec_size
        offs, counts = d.offset[pids], d.count[pids].astype(np.int64)
        # (id, offset, count): in a mutable index a posting grows in place (appends after `count`; the first
        # `count` records of an extent are never rewritten), so this names one content exactly
        keys = list(zip(pids.tolist(), offs.tolist(), counts.tolist()))
        hits, local = self.cache.gather(keys)
        miss = np.nonzero(local < 0)[0]
        if len(miss) == 0:
            return (hits if len(hits) else np.zeros(4, np.uint8)), local, counts, 0
        buf, starts = self.post_reader.read(offs[miss], counts[miss] * rec)
        for i, s in zip(miss.tolist(), starts.tolist()):
            data = buf[s: s + int(counts[i]) * rec]
            pid = int(pids[i])
            if pid >= len(self._verified):  # a posting added since (a mutable index's split): not yet verified
                self._verified = np.concatenate([self._verified, np.zeros(pid + 1 - len(self._verified), bool)])
            if not self._verified[pid]:
                # counts were read before this read, the checksum now: an append in place between the two moves the
                # checksum past the records read, so a mismatch is damage only if the file's pair disagrees too
                if zlib.crc32(data) != int(d.crc[pid]) and not self.postings.check_consistent(pid):
                    raise CorruptionError(self.postings.path, f"posting {pid} fails its checksum",
                                          offset=int(offs[i]), length=len(data))
                self._verified[pid] = True
            self.cache.put(keys[i], data)
        local[local >= 0] += len(buf)   # the read buffer first (page aligned), then the cached bytes
        local[miss] = starts
        return (np.concatenate([buf, hits]) if len(hits) else buf), local, counts, len(buf)

    def read_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The float32 rows `rows` (dim floats and the checksum word each) read from the vector file in one wave:
        (the buffer as float32 words, the word where each row starts). Rows sit at 4-byte multiples of the file
        and reads start on block boundaries, so every row starts on a word of the buffer."""
        size = self.vectors.row_size
        buf, starts = self.row_reader.read(HEADER_SIZE + rows * size, np.full(len(rows), size))
        return buf.view(np.float32), starts // 4

    def candidates(self, pids, q, qa, qw, qc, is_l2: bool, state, allow, rerank_k: int):
        """INT8 scan of postings `pids` (read now or cached): (rows [<= rerank_k], INT8 distances ascending,
        records scanned, bytes read)."""
        buf, local, counts, read = self._postings(pids)
        words = len(buf) // 4 * 4
        order = np.arange(len(pids), dtype=np.int64)
        cand, cd, scanned, _ = search_one(buf.view(np.int8), buf[:words].view(np.uint32), buf, local,
                                          counts.astype(np.int32), order, self.postings.rec_size, is_l2, qa, qw,
                                          qc, q, state, allow, self._no_rows, self._no_rows.view(np.uint32),
                                          rerank_k, rerank_k, False)
        n = int((cand >= 0).sum())
        return cand[:n], cd[:n], int(scanned), read

    def rerank(self, cand: np.ndarray, q, is_l2: bool, k: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Exact distances of `cand` from their float32 rows (one read wave, checksums verified): (rows [k]
        padded -1, distances [k] padded inf, bytes read)."""
        ids = np.full(k, -1, np.int64)
        dists = np.full(k, np.inf, np.float32)
        if len(cand) == 0:
            return ids, dists, 0
        words, at = self.read_rows(cand)
        exact = np.empty(len(cand), np.float32)
        bad = exact_at(words, words.view(np.uint32), at, cand, q, is_l2, exact)
        if bad >= 0:
            self.vectors.raise_corrupt_row(int(bad))
        top = np.argsort(exact, kind="stable")[:k]
        ids[: len(top)], dists[: len(top)] = cand[top], exact[top]
        return ids, dists, words.nbytes

    def search_one(self, pids, q, qa, qw, qc, is_l2: bool, state, allow, k: int, rerank_k: int,
                   rerank_eps: float) -> tuple[np.ndarray, np.ndarray, int, int]:
        """(rows [k] padded -1, exact distances [k] padded inf, records scanned, bytes read)."""
        cand, cd, scanned, read = self.candidates(pids[pids >= 0], q, qa, qw, qc, is_l2, state, allow, rerank_k)
        n = rerank_cut(cd, k, rerank_eps)
        ids, dists, row_bytes = self.rerank(cand[:n], q, is_l2, k)
        return ids, dists, scanned, read + row_bytes
