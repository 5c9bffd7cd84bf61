"""Serving a SpannIndex from disk under a memory budget: choosing the searchers (index/diskread.py, and the scan
tier of index/tierscan.py when its codes fit) and running a search through them. A mixin of SpannIndex over its
`files`, `quantizer`, `state`, `probe_heads`, `resident_bytes`, `manifest` and `calibration`."""
from __future__ import annotations

import logging

import numpy as np

from index.calibrate import reaches_target
from index.errors import InvalidParameterError
from index.quantize import kernel_queries
from index.tierscan import open_disk_searchers
from index.types import DISK_TIER_RERANK_EPS, Metric, SearchParams
from storage.errors import CorruptionError, FormatError

log = logging.getLogger(__name__)


class DiskServing:
    disk: "object"   # index.diskread.DiskSearcher or None
    tier: "object"   # index.tierscan.TierSearcher or None
    _scan_tier_allowed = True  # the last use_disk's scan_tier (why a tier on disk does not serve)
    _scan_tier_withheld_why: str | None = None  # the last use_disk's reason to keep the tier out (its calibration)

    def use_disk(self, memory_budget_mb: float, *, direct_io: bool = True, verify: bool = True,
                 scan_tier: bool = True, measuring_tier: bool = False) -> None:
        """Serve searches from disk within `memory_budget_mb` (see open). With `scan_tier` and a scan-code file
        that fits what the resident structures leave of the budget, postings are scanned from it in RAM
        (index/tierscan.py) and the rest of the budget caches postings for the stale ones.

        The tier serves only if its own calibration (measured through it, index/tierbuild.py) reaches the build's
        target recall: its PQ estimates choose the re-rank candidates, so a tier with too few code bytes has a
        recall ceiling below the target, and the default search must keep the recall the build promised.
        `measuring_tier` serves it regardless, for the calibration that decides this."""
        if memory_budget_mb < 0:
            raise InvalidParameterError(f"memory_budget_mb must be >= 0, got {memory_budget_mb}")
        room = int(memory_budget_mb * 2**20) - self.resident_bytes()["total"]
        # the codes' headers are read only if the tier may serve: scan_tier=False opens past damaged codes
        withheld = None if measuring_tier or not scan_tier else self.scan_tier_withheld()
        # the searchers replaced are not closed here: searches in flight may still use them (index/livedisk.py
        # keeps a replaced DiskSearcher open until the next renewal; a replaced tier's mapping goes with its
        # last reference)
        self.disk, self.tier = open_disk_searchers(self.files, self.quantizer, room, direct=direct_io,
                                                   verify=verify, scan_tier=scan_tier and withheld is None,
                                                   tier_rerank_eps=self.tier_rerank_eps())
        if withheld is not None and withheld != self._scan_tier_withheld_why:  # a memory budget may have been
            # sized for it: say so where an operator looks (once, not at every renewal)
            log.warning("%s: the scan tier does not serve: %s", self.files.path, withheld)
        self._scan_tier_allowed, self._scan_tier_withheld_why = scan_tier, withheld

    def scan_tier_withheld(self) -> str | None:
        """Why the scan tier must not serve though it may fit, or None: the build has a target recall and the
        codes on disk have no calibration of their own that reaches it (none: codes written before tier
        calibration existed; another's: a `vdbctl scan-codes` that died between publishing the codes and
        committing their calibration; a curve below the target: too few code bytes)."""
        target = (self.calibration or {}).get("target_recall")
        found = self.files.scan_codes_summary() if target else None  # CorruptionError as a budgeted open's
        if found is None:
            return None
        tier_cal = self.manifest.get("tier_calibration")
        if tier_cal is None or tier_cal.get("scan_codes_crc") != found["content_crc"]:
            return (f"not calibrated for the build's target recall {target:g} "
                    "(run `vdbctl scan-codes --calibrate-only DIR` to calibrate it)")
        if not reaches_target(tier_cal):
            best_nprobe, best = max(tier_cal["curve"], key=lambda point: point[1])
            widest = tier_cal.get("rerank_eps", DISK_TIER_RERANK_EPS)  # the last of the ladder it tried
            return (f"its calibration does not reach the target recall {tier_cal['target_recall']:g} "
                    f"(best {best:g} at nprobe {best_nprobe} with rerank_eps up to {widest:g}): "
                    "encode it with more code bytes")
        return None

    def tier_rerank_eps(self) -> float:
        """The scan tier's automatic rerank_eps: the first of TIER_RERANK_EPS_LADDER whose calibration reached the
        target (index/tierbuild.py), else the default (codes calibrated before the ladder, or a build without
        target)."""
        return (self.manifest.get("tier_calibration") or {}).get("rerank_eps", DISK_TIER_RERANK_EPS)

    def scan_tier_info(self) -> dict:
        """The scan tier as stats show it. "present": the directory has scan codes (then their "postings",
        "entries", "code_bytes" and "bytes"); "serving": searches scan them (served from disk under a budget
        they fit); "stale_postings": while serving, the live postings changed since they were encoded, whose
        records are read from the posting file instead (None when not serving); "locked": mlock'ed in RAM;
        "not_serving": why codes on disk are not used. Cheap: the file's headers, or the resident arrays."""
        tier = self.tier  # one reference: a compaction may renew it meanwhile
        if tier is not None:
            return {"present": True, **tier.summary, "serving": True, "locked": bool(tier.locked),
                    "stale_postings": tier.stale_postings()}
        try:
            found = self.files.scan_codes_summary()
        except (CorruptionError, FormatError, OSError) as e:  # info must still answer (EIO, EACCES, a symlink
            # loop...); opening under a budget raises it
            return {"present": True, "damaged": str(e), "serving": False, "locked": False, "stale_postings": None}
        if found is None:
            return {"present": False, "serving": False, "locked": False, "stale_postings": None}
        why = ("the index has no heads" if self.quantizer is None else
               "not served from disk (no memory budget)" if self.disk is None else
               "scan_tier disabled" if not self._scan_tier_allowed else
               self._scan_tier_withheld_why or "does not fit the memory budget")
        return {"present": True, **found, "serving": False, "locked": False, "stale_postings": None,
                "not_serving": why}

    def stop_disk(self) -> None:
        """Back to reading through mmap: release the disk searchers (and the scan tier's mapping)."""
        if self.tier is not None:
            self.tier.close()
        if self.disk is not None:
            self.disk.close()
        self.disk = self.tier = None

    def _search_disk(self, qs, k: int, p: SearchParams, allow, threads: int, stats):
        probe = self.probe_heads(qs, p, self.files.postings.dir)
        P = probe.postings
        is_l2 = self.metric is Metric.L2
        allow = allow if allow is not None else np.zeros(0, np.uint8)
        tier = self.tier  # read once: a renewal may replace it meanwhile (the tier knows its calibrated width)
        searcher = tier if tier is not None else self.disk
        prepared = kernel_queries(self.quantizer, qs, is_l2)
        ids, d, scanned, read = searcher.search(P, qs, prepared, is_l2, self.state, allow, k, p, threads)
        if stats is not None:
            stats.probe = probe
            stats.postings_probed += int((P >= 0).sum())
            stats.records_scanned += int(scanned.sum())
            stats.bytes_read += int(read.sum())
        return ids, d

