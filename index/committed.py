"""What an index's files hold, for checking and recovery: every checksum, and what the last commit stored for
the caller (its id map, payloads and arrays). A mixin of SpannIndex over its `files` (storage.IndexDir)."""
from __future__ import annotations

import numpy as np

from index.kernels import mark_reachable
from index.rowstate import is_live
from storage import StorageError
from storage.posting_format import FLAG_RETIRED


class CommittedState:
    files: "object"  # storage.IndexDir, set by SpannIndex

    def verify(self) -> tuple[list[str], dict]:
        """Every checksum of the index's files: (violations, what was checked). Read-only."""
        violations: list[str] = []
        store, vectors, heads = self.files.postings, self.files.vectors, self.files.heads
        bad = store.verify_all()
        violations += [f"posting {p} fails its checksum ({store.path})" for p in bad]
        for f, skip in ((vectors, ~is_live(self.state)), (heads, None)):
            bad_rows = f.verify(skip=skip)  # dead rows: their blocks may be reclaimed (MutableSpannIndex)
            violations += [f"row {r} fails its checksum ({f.path})" for r in bad_rows[:20]]
            if len(bad_rows) > 20:
                violations.append(f"... and {len(bad_rows) - 20} more rows of {f.path}")
        violations += self.files.meta.verify()
        checked = {"postings": store.n_postings, "vector_rows": vectors.rows, "head_rows": heads.rows,
                   "postings_ok": not bad}
        try:
            codes = self.files.open_scan_codes()
        except StorageError as e:  # a damaged header, layout or table: the whole file is unusable
            violations.append(str(e))
            checked["scan_codes"] = "unreadable"
            return violations, checked
        if codes is not None:
            bad_codes = codes.verify()
            violations += [f"scan codes of {'the codebook' if p < 0 else f'posting {p}'} fail their checksum "
                           f"({codes.path})" for p in bad_codes[:20]]
            checked["scan_code_postings"] = codes.n_postings
            codes.close()
        return violations, checked

    # -- what the last commit stored for the caller (its id map, payloads and arrays) ----------------------
    def committed_array(self, name: str) -> np.ndarray | None:
        """The array `name` as the last commit stored it (None if never stored)."""
        return self.files.meta.get_array(name)

    def committed_rows(self, ext_ids: np.ndarray) -> np.ndarray:
        """The committed row of each external id, -1 where the id map has none."""
        return self.files.meta.lookup(ext_ids)

    def iter_committed_ids(self):
        """(external id, row) of every committed id-map entry, ascending by id."""
        return self.files.meta.iter_ids()

    def committed_payloads(self, ext_ids: np.ndarray) -> list[dict | None]:
        """The committed payload of each external id (None where there is none)."""
        return self.files.meta.payloads(ext_ids)

    def iter_committed_payloads(self):
        """(external id, payload) of every committed payload."""
        return self.files.meta.iter_payloads()

    def iter_committed_payload_ids(self):
        """The external id of every committed payload (the payloads themselves are not read)."""
        return self.files.meta.iter_payload_ids()

    def reachable_rows(self, state: np.ndarray) -> np.ndarray:
        """bool [rows]: the rows with a valid record (version == state) in some live posting."""
        store = self.files.postings
        d = store.dir
        reached = np.zeros(len(state), bool)
        alive = np.nonzero((d.flags & FLAG_RETIRED) == 0)[0]
        buf = store.buffer
        if len(alive):
            mark_reachable(buf[: len(buf) // 4 * 4].view(np.uint32), buf, d.offset[alive], d.count[alive],
                           store.rec_size, state, reached)
        return reached

