"""`vdbctl check`: verify every checksum and the invariants a collection must keep after any crash. Read-only.

Two entry points:
- `check_collection(c)`: an open collection of a running Database (what `Database.check()` reports).
- `check_stored(path)`: a collection or index directory on disk, opened read-only (shared lock: it refuses a
  directory a server holds), never written to: nothing is replayed, truncated or checkpointed. The committed
  checkpoint is checked; the WAL after it is validated record by record (and decoded), and what the next open's
  recovery would do to it (drop a torn tail, drop covered damage) is reported as notes. Repairing is a separate,
  explicit command (`vdbctl repair`).

Checked: every posting's and row's checksum (vectors and heads), every metadata record (manifest, arrays, id
map, payloads); every live row is reachable (a valid record in some posting, or pending); no deleted row is
reachable through the id map; the id map and the per-row ids agree both ways; every payload belongs to a live id; the text index's files pass their CRCs (stored: a note, since the next
open rebuilds a damaged one).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from index import SpannIndex
from index.rowstate import is_live
from storage.wal.consumers import load_consumers
from storage.wal.format import CONSUMERS_FILE
from storage.wal.fs import RealFS
from storage.wal.reader import WalCorruptionError, segment_records
from storage.wal.recovery import inspect_log
from vdb.engine import textsearch, walcodec
from vdb.errors import translate

WAL_CONSUMER = "index"  # the consumer name a collection registers (collection.py)


def check_collection(c) -> dict:
    """Report for an open vdb.engine.collection.Collection: {"ok": bool, "violations": [...], "checked": {...}}."""
    idx = c.index
    violations, checked = idx.verify()
    postings_ok = checked.pop("postings_ok")
    with idx.maint_lock, idx.lock:
        state, int2ext = idx.state.copy(), idx.int2ext.copy()
        reached = _reached(idx, state, postings_ok, c.memtable.rows())
        live = is_live(state)
        try:  # a damaged id-map entry stops the walk: it is reported (verify() named it), never raised
            violations += _row_invariants(state, int2ext, reached, c.meta_ids(), c.live)
            violations += _orphan_payloads(c.orphaned_payloads())
            mapped = c.recorded_rows_of(int2ext[live].astype(np.int64)) if live.any() else np.zeros(0)
        except Exception as e:  # noqa: BLE001 - whatever stops the walk is a finding
            violations.append(translate(e).message)
        else:
            wrong = np.nonzero(live)[0][mapped != np.nonzero(live)[0]]
            if len(wrong):
                violations.append(f"{len(wrong)} ids map to a row other than their live row (first row {wrong[0]})")
        checked.update(_counts(state, reached, len(c.memtable)))
    violations += textsearch.check(c)
    return {"collection": c.name, "ok": not violations, "violations": _unique(violations), "checked": checked}


def _reached(idx, state, postings_ok: bool, pending) -> np.ndarray | None:
    """Rows with a valid posting record or pending; None when a posting fails its checksum (its records cannot
    be trusted to say which rows it holds, so reachability is not judged)."""
    if not postings_ok:
        return None
    reached = idx.reachable_rows(state)
    reached[np.asarray(pending, np.int64)] = True
    return reached


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def check_stored(path, name: str | None = None) -> dict:
    """Read-only report for a collection or index directory (see the module docstring)."""
    path = Path(path)
    report = {"collection": name or path.name, "path": str(path), "ok": False, "violations": [], "notes": [],
              "checked": {}}
    try:
        idx = SpannIndex.open(path, verify="none")
    except Exception as e:  # noqa: BLE001 - whatever stops it from opening is the finding
        report["violations"].append(translate(e).message)
        return report
    try:
        violations, checked = idx.verify()
        postings_ok = checked.pop("postings_ok")
        state, int2ext = idx.state, idx.int2ext
        try:  # every walk below stops at damage verify() already named: reported, never raised
            pending = idx.committed_array("pending")
            pending = np.zeros(0, np.int64) if pending is None else pending.astype(np.int64)
            ids = list(idx.iter_committed_ids())
            payload_ids = list(idx.iter_committed_payload_ids())  # verify() decoded them
        except Exception as e:  # noqa: BLE001 - whatever stops the walk is a finding
            pending, ids, payload_ids = None, None, []
            violations.append(translate(e).message)
        reached = _reached(idx, state, postings_ok and pending is not None, pending)
        if ids is not None:
            violations += _row_invariants(state, int2ext, reached, ids, int(is_live(state).sum()))
            violations += _stored_id_map(state, int2ext, ids, payload_ids)
        checked.update(_counts(state, reached, 0 if pending is None else len(pending)))
        report["notes"] += textsearch.stored_notes(path)
        if (path / "wal").is_dir():
            _check_wal(path / "wal", int(idx.manifest.get("checkpoint_lsn", 0)), idx.dim, report, checked,
                       violations)
    finally:
        idx.close()
    report.update(violations=_unique(violations), checked=checked, ok=not violations)
    return report


def _row_invariants(state, int2ext, reached, id_items, live_count: int) -> list[str]:
    out = []
    live = is_live(state)
    unreachable = np.nonzero(live & ~reached)[0] if reached is not None else []
    if len(unreachable):
        out.append(f"{len(unreachable)} live rows are in no posting and not pending (first: "
                   f"{unreachable[:5].tolist()})")
    ext_live = int2ext[live]
    if (ext_live < 0).any():
        out.append("a live row has no external id")
    if (int2ext[~live] >= 0).any():
        out.append("a deleted row still has an external id")
    if len(np.unique(ext_live)) != len(ext_live):
        out.append("two live rows share one external id")
    stale = [e for e, r in id_items if r >= len(state) or not live[r] or int2ext[r] != e]
    if stale:
        out.append(f"{len(stale)} ids in the id map point at deleted, replaced or missing rows (first: {stale[:5]})")
    if int(live.sum()) != live_count:
        out.append(f"live count {live_count} but {int(live.sum())} live rows")
    return out


def _stored_id_map(state, int2ext, ids, payload_ids) -> list[str]:
    """The committed id map against the committed rows, the other way round, and the payloads against both."""
    out = []
    live_ext = set(int2ext[is_live(state)].tolist())
    mapped = {e for e, _ in ids}
    missing = live_ext - mapped
    if missing:
        out.append(f"{len(missing)} live rows' ids are not in the id map (first: {sorted(missing)[:5]})")
    return out + _orphan_payloads([e for e in payload_ids if e not in mapped])


def _orphan_payloads(orphans: list[int]) -> list[str]:
    """The violation of payloads whose id is not live (repair deletes them), for both checks."""
    return [f"{len(orphans)} payloads belong to no live id (first: {orphans[:5]})"] if orphans else []


def _counts(state, reached, pending: int) -> dict:
    live = is_live(state)
    return {"live_rows": int(live.sum()), "rows": len(state), "pending": int(pending),
            "reachable_live": int((live & reached).sum()) if reached is not None else None}


def _check_wal(wal_dir: Path, checkpoint_lsn: int, dim: int, report: dict, checked: dict,
               violations: list[str]) -> None:
    info = inspect_log(str(wal_dir), checkpoint_lsn)
    report["notes"] += [f"at the next open, recovery would {a}" for a in info["actions"]]
    if info["error"]:
        violations.append(info["error"])
        return
    last = info["last_lsn"] if info["last_lsn"] is not None else 0
    if last < checkpoint_lsn:
        violations.append(f"{wal_dir}: the log ends at LSN {last} but the checkpoint covers {checkpoint_lsn}: "
                          f"log files were removed or replaced")
    path = os.path.join(wal_dir, CONSUMERS_FILE)
    try:
        consumers = load_consumers(RealFS(), path)
    except Exception as e:  # noqa: BLE001 - a damaged consumers file is a finding, the rest is still checked
        consumers = {}
        violations.append(translate(e).message)
    if consumers.get(WAL_CONSUMER, 0) > checkpoint_lsn:
        violations.append(f"{path}: the index consumer is marked as having applied LSN {consumers[WAL_CONSUMER]}, "
                          f"beyond the checkpoint at {checkpoint_lsn}: the file is damaged, or the metadata store "
                          f"is older than the log, and records up to that LSN may have been purged")
    if not info.get("records_readable"):
        report["notes"].append("records after the checkpoint were not decoded (recovery would rewrite the log)")
        return
    n = 0
    try:
        for seg in info["segment_objects"]:
            for rec in segment_records(RealFS(), seg, checkpoint_lsn):
                op = walcodec.decode(rec.rtype, rec.payload)
                if isinstance(op, walcodec.Upsert) and op.vectors.shape[1] != dim:
                    violations.append(f"{seg.path}: LSN {rec.lsn} holds vectors of dim {op.vectors.shape[1]}, "
                                      f"the collection has {dim}")
                n += 1
    except (WalCorruptionError, ValueError) as e:
        violations.append(str(e))
    checked["wal_records_after_checkpoint"] = n
    checked["wal_last_lsn"] = last
