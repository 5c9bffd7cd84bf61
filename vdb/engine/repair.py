"""`vdbctl repair`: the explicit, loud counterpart of the read-only `vdbctl check`.

What it mends, per collection: a damaged WAL is truncated at the damage (every record after it is lost, and the
log says which LSNs; never below the checkpoint); postings that fail their checksum are retired and the rows
left in no posting are indexed again from their full-precision rows; payloads that belong to no live id are
deleted (they would come back with the id's next upsert); a text index whose files fail their CRCs is rebuilt
from the payloads; then a checkpoint. What it cannot mend
(damaged full-precision rows, heads or metadata records) it reports, naming the file: restore those from a
snapshot or rebuild. It ends with a check of the result.
"""
from __future__ import annotations

import logging
from pathlib import Path

from vdb.engine.catalog import COLLECTIONS, is_data_directory
from vdb.engine.database import Database, connect
from vdb.errors import FailedPreconditionError

log = logging.getLogger(__name__)


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def repair_path(path) -> list[dict]:
    """Repair a data directory (every collection). Holds the directory exclusively: stop the server first.
    Anything else is refused before a byte is written (opening it would make it a new, empty data directory)."""
    if not is_data_directory(Path(path)):
        raise FailedPreconditionError(
            f"{path}: not a vdb data directory (no catalog, no {COLLECTIONS}/); `vdbctl repair` mends data "
            f"directories, nothing was written (`vdbctl check` also checks a single index directory)")
    handler = _Collect()
    logging.getLogger("storage").addHandler(handler)
    logging.getLogger("vdb").addHandler(handler)
    try:
        with connect(Path(path), wal_repair=True) as db:
            return [_repair_one(db, name, handler) for name in db.list_collections()]
    finally:
        logging.getLogger("storage").removeHandler(handler)
        logging.getLogger("vdb").removeHandler(handler)


def _repair_one(db: Database, name: str, handler: _Collect) -> dict:
    problems = db.problems()
    if name in problems:
        report = {"collection": name, "repaired": False, "ok": False, "violations": [problems[name]]}
    else:
        report = {**db.repair(name), "repaired": True}
    report["log"] = list(handler.lines)
    handler.lines.clear()
    return report
