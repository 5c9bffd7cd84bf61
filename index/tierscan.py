"""The read path with a RAM-resident scan tier (storage/scan_codes.py, encoded by index/scancodes.py).

Per query: the probed postings are scanned from their PQ codes in RAM (index/kernels/tier.py; no read), the
candidates whose estimated distance is within rerank_eps of the k-th estimate (at least k, at most rerank_k) are
re-ranked with their float32 rows read in one O_DIRECT wave (index/diskread.py). A posting whose codes are stale
(it changed after they were encoded) is read and scanned from the posting file as without the tier, and its
INT8 candidates join the re-rank. So the only reads of a query on an unchanged index are its re-rank rows.

The tier is used only if the whole file fits the memory budget after the index's resident structures; it is
mlock'ed when the kernel allows (file-backed pages charged to the process's memory cgroup, never evicted), else
left to the page cache. Its CRCs are checked when it is opened (unless verify is off).
"""
from __future__ import annotations

import logging

import numpy as np

from index.diskread import DiskSearcher, each_query
from index.kernels import rerank_cut
from index.kernels.tier import tier_query
from index.scancodes import padded_dim
from index.types import DISK_TIER_RERANK_EPS
from storage.posting_format import FLAG_RETIRED

log = logging.getLogger(__name__)


def open_disk_searchers(files, quantizer, room: int, *, direct: bool, verify: bool, scan_tier: bool,
                        tier_rerank_eps: float = DISK_TIER_RERANK_EPS):
    """(DiskSearcher, TierSearcher or None) for an IndexDir served from disk with `room` bytes of the budget
    left after the resident structures: the scan tier if it exists, `scan_tier` allows it and it fits whole,
    then a posting cache of what remains. `tier_rerank_eps`: the tier's automatic re-rank width (its
    calibration's)."""
    codes = files.open_scan_codes() if scan_tier and quantizer is not None else None
    if codes is not None and codes.nbytes > room:
        log.warning("%s: scan codes (%d MB) do not fit the budget's %d MB; postings are read from disk",
                    files.path, codes.nbytes >> 20, max(0, room) >> 20)
        codes.close()
        codes = None
    cache = room - (codes.nbytes if codes is not None else 0)
    disk = DiskSearcher(files.postings, files.vectors, max(0, cache), verify=verify, direct=direct)
    if codes is None:
        return disk, None
    try:
        return disk, TierSearcher(codes, disk, quantizer, files.postings, files.vectors.dim, verify=verify,
                                  auto_rerank_eps=tier_rerank_eps)
    except BaseException:
        codes.close()
        disk.close()
        raise


class TierSearcher:
    def __init__(self, codes, disk, quantizer, store, dim: int, *, verify: bool = True,
                 auto_rerank_eps: float = DISK_TIER_RERANK_EPS):
        """codes: storage.scan_codes.ScanCodeFile; disk: the DiskSearcher that reads rows and stale postings;
        store: the PostingStore the index serves. Its directory is read at every query (a mutable index replaces
        it on splits and bumps counts on appends): an entry set it contradicts is stale."""
        if verify:
            bad = codes.verify()
            if bad:
                codes.raise_corrupt(bad[0])
        self.codes, self.disk, self.dim, self.store = codes, disk, dim, store
        self.auto_rerank_eps = auto_rerank_eps  # rerank_eps of a search that names none
        self.dpad = padded_dim(dim, codes.code_bytes)
        self.src_crc = codes.table["src_crc"].astype(np.uint32)
        self.src_count = codes.table["src_count"].astype(np.int64)
        self.start, self.count = codes.start, codes.count
        self.codebook_t = np.ascontiguousarray(codes.codebook.transpose(0, 2, 1))  # [M, dsub, 256]: tier_query's
        self.base = codes.base[:, :dim]                                        # int8 [P, dim]
        self.scale = quantizer.scale.astype(np.float32)
        self.offset = (quantizer.lo + 128.0 * quantizer.scale).astype(np.float64)
        self.locked = codes.lock_in_memory()
        # what stats report, kept apart from the mapping (close() drops it while a stats call may still run)
        self.summary = {"postings": int(codes.n_postings), "entries": int(codes.n_entries),
                        "code_bytes": int(codes.code_bytes), "bytes": int(codes.nbytes)}

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes

    def close(self) -> None:
        """Drop the codes' mapping (the DiskSearcher is its owner's to close)."""
        self.codes.close()

    def fresh(self, pids: np.ndarray, directory=None) -> np.ndarray:
        """bool per posting id: its entries match the posting as the directory has it now."""
        d = directory if directory is not None else self.store.dir
        ok = pids < len(self.src_crc)
        p = np.where(ok, pids, 0)
        return ok & (self.src_crc[p] == d.crc[pids]) & (self.src_count[p] == d.count[pids])

    def stale_postings(self) -> int:
        """Live postings the tier cannot answer for now (read from the posting file instead). A retired posting
        is never probed, so it does not count. One vectorized pass over the resident directory arrays."""
        d = self.store.dir  # one snapshot: a split may publish a longer directory meanwhile
        live = (d.flags & FLAG_RETIRED) == 0
        return int((~self.fresh(np.arange(len(d)), d) & live).sum())

    def search(self, P: np.ndarray, qs: np.ndarray, prepared, is_l2: bool, state, allow, k: int, p,
               threads: int = 1):
        """As DiskSearcher.search: (rows [nq, k], distances [nq, k], records scanned [nq], bytes read [nq])."""
        eps = self.auto_rerank_eps if p.rerank_eps is None else p.rerank_eps
        return each_query(self.search_one, P, qs, prepared, is_l2, state, allow, k, p.rerank_k, eps, threads)

    def estimates(self, pids: np.ndarray, q: np.ndarray, is_l2: bool, state, allow, rerank_k: int):
        """PQ-estimated kernel distances of the best `rerank_k` rows of postings `pids` (all fresh):
        (rows, estimates ascending, entries scanned)."""
        c = self.codes
        rows, est, scanned = tier_query(pids.astype(np.int64), self.start, self.count, c.rows, c.versions, c.terms,
                                        c.codes, self.codebook_t, self.base, self.scale, self.offset, q, state, allow,
                                        is_l2, rerank_k)
        return rows, est, int(scanned)

    def search_one(self, pids, q, qa, qw, qc, is_l2: bool, state, allow, k: int, rerank_k: int,
                   rerank_eps: float) -> tuple[np.ndarray, np.ndarray, int, int]:
        """(rows [k] padded -1, exact distances [k] padded inf, records scanned, bytes read)."""
        pids = pids[pids >= 0]
        fresh = self.fresh(pids)
        cand, est, scanned = self.estimates(pids[fresh], q, is_l2, state, allow, rerank_k)
        cand = cand[: rerank_cut(est, k, rerank_eps)]
        read = 0
        if not fresh.all():
            more, cd, more_scanned, read = self.disk.candidates(pids[~fresh], q, qa, qw, qc, is_l2, state, allow,
                                                                rerank_k)
            cand = np.union1d(cand, more[: rerank_cut(cd, k, rerank_eps)])
            scanned += more_scanned
        ids, dists, row_bytes = self.disk.rerank(cand, q, is_l2, k)
        return ids, dists, scanned, read + row_bytes
