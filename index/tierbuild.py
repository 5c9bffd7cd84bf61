"""Adding the scan tier to an index directory: encode every posting record's PQ code (index/scancodes.py), then
calibrate nprobe and the re-rank width through the codes (index/calibrate.py) and commit that calibration with
the content CRC of the codes it measured, so that only codes whose own calibration reaches the build's target
serve (index/diskserve.py). Run by a build with scan_code_bytes, and by `vdbctl scan-codes` on a built index."""
from __future__ import annotations

import logging
import os
import time

from index.calibrate import calibrate_rerank
from index.errors import InvalidParameterError
from index.types import TIER_RERANK_EPS_LADDER, resolve_scan_code_bytes
from storage import IndexDir

log = logging.getLogger(__name__)


def scan_codes_index(path: str | os.PathLike, code_bytes: int, *, seed: int = 0,
                     calibrate_only: bool = False) -> dict:
    """Encode the scan tier (index/scancodes.py) of the index at `path`, replacing any it had; code_bytes -1 is
    automatic. Takes the directory's lock exclusively (LockedError while anything has it open). Returns what
    build_scan_codes did, and the file's postings and bytes. `calibrate_only`: keep the codes on disk and only
    calibrate through them (codes calibrated before the calibration named its codes, or by an interrupted run)."""
    resolve_scan_code_bytes(code_bytes, 1)  # a bad size fails before the directory is locked and loaded
    d = IndexDir.open(path, writable=True)
    try:
        return add_scan_tier(d, code_bytes, seed, calibrate_only)
    finally:
        d.close()


def add_scan_tier(d: IndexDir, code_bytes: int, seed: int, calibrate_only: bool = False) -> dict:
    """Encode the scan tier, then calibrate nprobe through it (its PQ estimates pick the re-rank candidates, so
    its recall curve is its own): stored as the manifest's `tier_calibration`, with the content CRC of the codes
    it measured. The tier serves only if that reaches the build's target and names the codes on disk
    (index/diskserve.py: a crash between publishing the codes and committing their calibration leaves them
    unserved, never served with the old curve); the result says whether it did ("reaches_target", and
    "not_serving" why not)."""
    from index.scancodes import build_scan_codes
    from index.spann import SpannIndex
    manifest = d.reload_manifest()
    index = SpannIndex(d)
    if index.quantizer is None or index.n_heads == 0:
        raise InvalidParameterError(f"{d.path}: the index has no heads yet, so there is nothing to encode")
    if calibrate_only:
        written = d.scan_codes_summary()
        if written is None:
            raise InvalidParameterError(f"{d.path}: no scan codes to calibrate (encode them: drop calibrate_only)")
        if code_bytes != -1 and code_bytes != written["code_bytes"]:
            raise InvalidParameterError(f"{d.path}: the codes on disk have {written['code_bytes']} bytes, not "
                                        f"{code_bytes}: calibrating keeps them (encode new ones without it)")
        if not (manifest.get("calibration") or {}).get("target_recall"):
            raise InvalidParameterError(f"{d.path}: the build has no target recall, so there is nothing to "
                                        f"calibrate the codes for")
        out = {"entries": written["entries"], "code_bytes": written["code_bytes"], "calibrated_only": True}
    else:
        out = build_scan_codes(index, code_bytes, seed=seed)
        written = d.scan_codes_summary()
    out.update(postings=written["postings"], bytes=written["bytes"])
    cal = manifest.get("calibration")
    if cal and cal.get("target_recall"):
        t = time.perf_counter()
        codes_mb = written["bytes"] / 2**20
        index.use_disk(index.resident_bytes()["total"] / 2**20 + codes_mb + 1.0,  # the tier and a small cache
                       measuring_tier=True)
        try:
            measured = calibrate_rerank(index, cal["target_recall"], TIER_RERANK_EPS_LADDER,
                                        samples=cal.get("samples", 500), seed=seed)
            out["calibration"] = {**measured, "scan_codes_crc": written["content_crc"]}  # whose curve it is
        finally:
            index.stop_disk()
        d.commit({**d.manifest, "tier_calibration": out["calibration"]}, {})
        out["calibration_s"] = round(time.perf_counter() - t, 2)
        why = index.scan_tier_withheld()
        out["reaches_target"] = why is None
        if why is not None:
            out["not_serving"] = why
            log.warning("%s: the scan tier will not serve: %s", d.path, why)
    return out
