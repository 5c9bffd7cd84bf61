"""What a collection reports about itself (`stats`, and through it /metrics): counts, the WAL, maintenance,
disk per file and garbage, the index, settings, cache, text index and the disk path. A mixin of Collection."""
from __future__ import annotations

from vdb.config import COLLECTION_SETTINGS


class Reporting:
    def stats(self) -> dict:
        idx = self.index
        wal = self.wal.stats()
        info = idx.info() if idx.bootstrapped else {}
        return {
            "name": self.name, "dim": self.dim, "metric": self.metric.value, "count": self.live,
            "rows": idx.n_rows, "pending_rows": len(self.memtable), "applied_lsn": self.applied_lsn,
            "checkpoint_lsn": self.checkpoint_lsn, "bootstrapped": idx.bootstrapped,
            "wal": wal, "maintenance": {**idx.maintenance_stats(), **self.maintainer.stats()},
            **self._disk_stats(wal),
            "index": {key: value for key, value in info.items() if key != "scan_tier"},  # scan_tier: below
            "settings": {k: self.settings[k] for k in COLLECTION_SETTINGS},
            "cache": self.cache.stats() if self.cache is not None else {"enabled": False},
            "text": self.text.stats(),  # text index
            "disk_path": {"enabled": True, **idx.disk.io_stats()} if idx.serves_from_disk else {"enabled": False},
            "scan_tier": info["scan_tier"] if info else idx.scan_tier_info(),  # its one home here: also before
            # the first heads, when the index section is empty
        }

    def _disk_stats(self, wal: dict) -> dict:
        """What an operator watches for bounded disk: bytes per file, garbage, backlog, the last compaction."""
        usage = self.index.disk_usage()
        m = self.maintainer
        return {"disk": usage["files"], "garbage": usage["garbage"],
                "backlog": {"pending_rows": len(self.memtable), "uncheckpointed_lsns": self.applied_lsn -
                            self.checkpoint_lsn, "wal_bytes": wal.get("bytes", 0)},
                "last_compaction": dict(m.last_compaction), "bytes_reclaimed": dict(m.bytes_reclaimed)}
