"""The layout of a cluster snapshot, and restoring one into a single data directory (no Ray needed).

    CLUSTER.json   {"format": "vdb-cluster-snapshot", "version": 1, "collection", "shards", "lsns": [per shard],
                    "count", "dim", "metric", "created"}
    shard-0000/    the collection snapshot of shard 0 (vdb/engine/snapshot.py: MANIFEST.json + index/), ...

Ids are placed on shards by hash modulo the shard count (vdb/service/router.py shard_of), so a cluster
snapshot restores into a cluster of as many shards; a one-shard one (or a plain collection snapshot) also
into a data directory.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from vdb.engine.snapshot import read_manifest, restore_snapshot, unpacked
from vdb.errors import DataLossError, FailedPreconditionError

CLUSTER_MANIFEST, CLUSTER_FORMAT, VERSION = "CLUSTER.json", "vdb-cluster-snapshot", 1


def shard_dir(root, shard: int) -> Path:
    return Path(root) / f"shard-{shard:04d}"


def write_summary(root, collection: str, manifests: list[dict]) -> dict:
    """Write CLUSTER.json over the shards' manifests (in shard order); returns it."""
    summary = {"format": CLUSTER_FORMAT, "version": VERSION, "collection": collection, "shards": len(manifests),
               "lsns": [m["lsn"] for m in manifests], "count": sum(m["count"] for m in manifests),
               "dim": manifests[0]["dim"], "metric": manifests[0]["metric"], "created": time.time()}
    (Path(root) / CLUSTER_MANIFEST).write_text(json.dumps(summary, indent=1, sort_keys=True))
    return summary


def shard_dirs(snapshot_dir, shards: int) -> list[Path]:
    """The per-shard snapshot directories for a target of `shards` shards (a plain collection snapshot counts
    as one shard); FailedPreconditionError when the counts differ."""
    snapshot_dir = Path(snapshot_dir)
    if (snapshot_dir / CLUSTER_MANIFEST).exists():
        try:
            summary = json.loads((snapshot_dir / CLUSTER_MANIFEST).read_text())
        except ValueError as e:
            raise DataLossError(f"{snapshot_dir / CLUSTER_MANIFEST}: not valid JSON ({e})") from None
        if not isinstance(summary, dict) or summary.get("format") != CLUSTER_FORMAT or \
                summary.get("version") != VERSION:
            raise FailedPreconditionError(f"{snapshot_dir}: not a {CLUSTER_FORMAT} version {VERSION}")
        have = summary.get("shards")
        if type(have) is not int or have < 1:
            raise DataLossError(f"{snapshot_dir / CLUSTER_MANIFEST}: 'shards' is {have!r}, not an integer >= 1")
        dirs = [shard_dir(snapshot_dir, s) for s in range(have)]
    else:
        read_manifest(snapshot_dir)
        have, dirs = 1, [snapshot_dir]
    if have != shards:
        raise FailedPreconditionError(f"{snapshot_dir} holds {have} shard(s); it restores into a target of "
                                      f"{have} shard(s), not {shards} (ids are placed by hash modulo the shard count)")
    return dirs


def restore_local(db, src, collection: str) -> dict:
    """Restore a collection snapshot, or a one-shard cluster snapshot, into an open Database."""
    with unpacked(src, db.path) as snap:
        manifest = restore_snapshot(db, collection, shard_dirs(snap, 1)[0])
    return {k: v for k, v in manifest.items() if k != "files"} | {"restored_as": collection}
