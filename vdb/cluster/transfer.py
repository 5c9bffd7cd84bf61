"""Moving a snapshot between members in chunks (each chunk is one call's argument or result): how a primary
seeds a new or diverged follower, how `vdbctl snapshot` pulls a shard's snapshot off its primary's node and
`vdbctl restore` pushes one onto it. Nodes share no file system; the manifest's checksums are verified on
arrival (vdb/engine/snapshot.py verify_snapshot) before anything is restored.
"""
from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path

from vdb.engine.snapshot import INDEX, MANIFEST, check_relpath, read_manifest, take_snapshot, verify_snapshot
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
    """The receiving side: staging directories under `root`, one per transfer, checked chunk by chunk. A
    transfer whose sender fell silent for `idle_s` (it died, or gave up) is removed at the next begin: each
    holds a whole collection, and a primary that dies mid-seed, again and again, must not fill the disk."""

    def __init__(self, root, idle_s: float):
        self.root, self.idle_s = Path(root), idle_s
        shutil.rmtree(self.root, ignore_errors=True)  # transfers a crash interrupted
        self._open: dict[str, dict] = {}

    def begin(self, manifest: dict, **meta) -> str:
        """A new transfer of the snapshot `manifest` describes; `meta` is kept for end(). Returns its token."""
        now = time.monotonic()
        for old in [k for k, t in list(self._open.items()) if now - t["last"] > self.idle_s]:
            self.discard(old)
        token = uuid.uuid4().hex
        staging = self.root / token
        (staging / INDEX).mkdir(parents=True)
        (staging / MANIFEST).write_text(json.dumps(manifest))
        read_manifest(staging)  # format and version before any byte arrives
        self._open[token] = {"dir": staging, "files": manifest["files"], "written": {}, "meta": meta, "last": now}
        return token

    def chunk(self, token: str, rel: str, offset: int, data: bytes) -> None:
        """Write one chunk; chunks of a file arrive in order, and only files the manifest names."""
        t = self._get(token)
        t["last"] = time.monotonic()
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


class Outgoing:
    """The sending side of pulled snapshots (`vdbctl snapshot --cluster` pulls one off each primary's node):
    one directory per pull under `root`. A pull whose puller fell silent for `idle_s` (killed by a cron
    timeout, say) is removed at the next begin, so abandoned pulls cannot fill the node's disk. Seeding
    snapshots (`seed_path`) live beside them and are their owner's to remove."""

    def __init__(self, root, idle_s: float):
        self.root, self.idle_s = Path(root), idle_s
        shutil.rmtree(self.root, ignore_errors=True)  # pulls a crash interrupted
        self.root.mkdir(parents=True)
        self._last: dict[str, float] = {}

    def seed_path(self) -> Path:
        """A new path for a snapshot the caller takes, uses and removes itself."""
        return self.root / f"seed-{uuid.uuid4().hex}"

    def begin(self, collection) -> tuple[str, dict]:
        """(token, manifest) of a snapshot of the open Collection taken now, to be pulled with chunk()."""
        now = time.monotonic()
        for old in [k for k, t in list(self._last.items()) if now - t > self.idle_s]:
            self.end(old)
        token = uuid.uuid4().hex
        self._last[token] = now
        try:
            manifest = take_snapshot(collection, self.root / token)
        except BaseException:
            self.end(token)
            raise
        self._last[token] = time.monotonic()
        return token, manifest

    def chunk(self, token: str, rel: str, offset: int, size: int) -> bytes:
        """Bytes [offset, offset + size) of one file of pull `token`."""
        if token not in self._last:
            raise NotFoundError(f"no snapshot {token!r} here (ended, or abandoned for {self.idle_s:.0f} s)")
        self._last[token] = time.monotonic()
        check_relpath(rel, token)
        with open(self.root / token / INDEX / rel, "rb") as f:
            f.seek(offset)
            return f.read(size)

    def end(self, token: str) -> None:
        """Remove pull `token` (nothing if it is gone already)."""
        if self._last.pop(token, None) is not None:
            shutil.rmtree(self.root / token, ignore_errors=True)
