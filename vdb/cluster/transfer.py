"""Moving a snapshot between members in chunks (each chunk is one call's argument or result): how a primary
seeds a new or diverged follower, how `vdbctl snapshot` pulls a shard's snapshot off its primary's node and
`vdbctl restore` pushes one onto it. Nodes share no file system; the manifest's checksums are verified on
arrival (vdb/engine/snapshot.py verify_snapshot) before anything is restored.
"""
from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

from vdb.engine.snapshot import INDEX, MANIFEST, read_manifest, verify_snapshot
from vdb.errors import InvalidArgumentError, NotFoundError


def chunks(snapshot_dir, chunk_bytes: int):
    """(path under index/, offset, bytes) of every file of a snapshot directory, in manifest order."""
    snapshot_dir = Path(snapshot_dir)
    for rel in read_manifest(snapshot_dir)["files"]:
        with open(snapshot_dir / INDEX / rel, "rb") as f:
            offset = 0
            while data := f.read(chunk_bytes):
                yield rel, offset, data
                offset += len(data)


def push(peer, snapshot_dir, chunk_bytes: int, timeout: float, begin: tuple, **begin_kwargs):
    """Send a snapshot directory to `peer`: install_begin(*begin, manifest) -> token, install_chunk(token, ...)
    for every chunk, install_end(token) -> its result (what the receiver restored)."""
    manifest = read_manifest(snapshot_dir)
    token = peer.call("install_begin", *begin, manifest, timeout=timeout, **begin_kwargs)
    for rel, offset, data in chunks(snapshot_dir, chunk_bytes):
        peer.call("install_chunk", token, rel, offset, data, timeout=timeout)
    return peer.call("install_end", token, timeout=timeout)


class Incoming:
    """The receiving side: staging directories under `root`, one per transfer, checked chunk by chunk."""

    def __init__(self, root):
        self.root = Path(root)
        shutil.rmtree(self.root, ignore_errors=True)  # transfers a crash interrupted
        self._open: dict[str, dict] = {}

    def begin(self, manifest: dict, **meta) -> str:
        """A new transfer of the snapshot `manifest` describes; `meta` is kept for end(). Returns its token."""
        token = uuid.uuid4().hex
        staging = self.root / token
        (staging / INDEX).mkdir(parents=True)
        (staging / MANIFEST).write_text(json.dumps(manifest))
        read_manifest(staging)  # format and version before any byte arrives
        self._open[token] = {"dir": staging, "files": manifest["files"], "written": {}, "meta": meta}
        return token

    def chunk(self, token: str, rel: str, offset: int, data: bytes) -> None:
        """Write one chunk; chunks of a file arrive in order, and only files the manifest names."""
        t = self._get(token)
        if rel not in t["files"]:
            raise InvalidArgumentError(f"transfer {token}: {rel!r} is not in the snapshot's manifest")
        if offset != t["written"].get(rel, 0):
            raise InvalidArgumentError(f"transfer {token}: {rel} chunk at {offset}, expected "
                                       f"{t['written'].get(rel, 0)}")
        path = t["dir"] / INDEX / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as f:
            f.write(data)
        t["written"][rel] = offset + len(data)

    def end(self, token: str) -> tuple[Path, dict, dict]:
        """(staging directory, verified manifest, meta) of a complete transfer; call discard() when done."""
        t = self._get(token)
        return t["dir"], verify_snapshot(t["dir"]), t["meta"]

    def discard(self, token: str) -> None:
        t = self._open.pop(token, None)
        if t is not None:
            shutil.rmtree(t["dir"], ignore_errors=True)

    def _get(self, token: str) -> dict:
        t = self._open.get(token)
        if t is None:
            raise NotFoundError(f"no snapshot transfer {token!r} in progress")
        return t
