"""`vdbctl check`: verify checksums and the invariants a collection must keep after any crash.

Checked: every posting's and vector row's checksum and the stored metadata arrays (the index's own verify());
every live row is reachable (a valid record in some posting, or pending in the memtable); no deleted or replaced
row is reachable through the id map; the external <-> internal id maps agree; the live count matches.
"""
from __future__ import annotations

import numpy as np

from index.rowstate import is_live


def check_collection(c) -> dict:
    """Report for an open vdb.engine.collection.Collection: {"ok": bool, "violations": [...], "checked": {...}}."""
    idx = c.index
    violations, checked = idx.verify()
    postings_ok = checked.pop("postings_ok")
    with idx.maint_lock, idx.lock:
        state, int2ext = idx.state.copy(), idx.int2ext.copy()
        live = is_live(state)
        reached = idx.reachable_rows(state) if postings_ok else np.zeros(len(state), bool)
        reached[c.memtable.rows()] = True
        unreachable = np.nonzero(live & ~reached)[0]
        if len(unreachable):
            violations.append(f"{len(unreachable)} live rows are in no posting and not pending "
                              f"(first: {unreachable[:5].tolist()})")
        ext_live = int2ext[live]
        if (ext_live < 0).any():
            violations.append("a live row has no external id")
        if (int2ext[~live] >= 0).any():
            violations.append("a deleted row still has an external id")
        if len(np.unique(ext_live)) != len(ext_live):
            violations.append("two live rows share one external id")
        mapped = c.rows_of(ext_live.astype(np.int64)) if len(ext_live) else np.zeros(0, np.int64)
        rows = np.nonzero(live)[0]
        wrong = rows[mapped != rows]
        if len(wrong):
            violations.append(f"{len(wrong)} ids map to a row other than their live row (first row {wrong[0]})")
        stale = [e for e, r in c.meta_ids() if r >= len(state) or not live[r] or int2ext[r] != e]
        if stale:
            violations.append(f"{len(stale)} ids in the id map point at deleted or replaced rows "
                              f"(first: {stale[:5]})")
        if int(live.sum()) != c.live:
            violations.append(f"live count {c.live} but {int(live.sum())} live rows")
        checked.update({"live_rows": int(live.sum()), "rows": len(state), "pending": len(c.memtable),
                        "reachable_live": int((live & reached).sum())})
    return {"collection": c.name, "ok": not violations, "violations": violations, "checked": checked}
