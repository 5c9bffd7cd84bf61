"""Online snapshots of a collection and restoring them (`vdbctl snapshot` / `vdbctl restore`); new and lost
replicas of a cluster are seeded the same way (vdb/cluster/seeding.py).

A snapshot is a directory, or one .tar archive holding the same files:

    MANIFEST.json   {"format": "vdb-snapshot", "version": 1, "collection", "lsn", "dim", "metric", "count",
                     "created", "files": {path under index/: {"bytes": n, "sha256": hex}}}
    index/          the committed files of the collection: meta/data.mdb (a consistent LMDB copy), vectors.f32,
                    heads.f32 and the posting file, each cut to what the checkpoint references

Consistent while writes go on: a checkpoint is taken and its files copied under the index's maint_lock, which
every checkpoint and every posting or head write takes. Writers are not stopped: they append vector rows past
the committed count (not copied) and go into the memtable. So the snapshot is the collection's state at the
checkpoint's LSN exactly; only indexing waits for the (local, sequential) copy.

Restoring writes the files into a new collection directory with a WAL that starts at LSN + 1 (storage.wal.
start_log): the restored collection hands out the LSNs its source would have, which is what lets a replica
seeded from its primary's snapshot take the primary's next records at their own LSNs.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from index.rowstate import is_live
from storage.crashpoints import crashpoint
from storage.fileio import fsync_dir, fsync_tree
from storage.wal import start_log
from vdb.engine.catalog import TRASH
from vdb.errors import (DataLossError, FailedPreconditionError, InvalidArgumentError, NotFoundError,
                        ResourceExhaustedError, translate)

FORMAT, VERSION = "vdb-snapshot", 1
MANIFEST, INDEX = "MANIFEST.json", "index"
WAL_DIR = "wal"                    # a collection's WAL directory (vdb/engine/collection.py opens DIR/wal)
ARCHIVE_SUFFIXES = (".tar",)
REQUIRED = ("meta/data.mdb", "vectors.f32", "heads.f32")  # and a posting file, named by the LMDB manifest
_HASH_CHUNK = 8 << 20


def is_archive(path) -> bool:
    """True if `path` names a snapshot archive (one file) rather than a snapshot directory."""
    return str(path).endswith(ARCHIVE_SUFFIXES)


def take_snapshot(collection, dest) -> dict:
    """Snapshot an open Collection into the new directory `dest` while writes continue; returns the manifest."""
    dest = Path(dest)
    if dest.exists():
        raise InvalidArgumentError(f"{dest} already exists")
    tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        idx = collection.index
        with idx.maint_lock:  # no checkpoint, split or compaction until the copy is done
            collection.checkpoint()
            committed = idx.manifest  # the checkpoint's, which the copy holds
            # "live" is written by a collection's checkpoint; an attached build never written since has none
            # (its checkpoint had nothing to do): count its committed state's live rows, as an open does
            if "live" in committed:
                count = committed["live"]
            else:  # an empty collection has no committed state array at all
                state = idx.committed_array("state")
                count = 0 if state is None else int(is_live(state).sum())
            files = idx.copy_committed(tmp / INDEX)
        manifest = {"format": FORMAT, "version": VERSION, "collection": collection.name,
                    "lsn": int(committed.get("checkpoint_lsn", 0)), "dim": collection.dim,
                    "metric": collection.metric.value, "count": int(count),
                    "created": time.time(), "files": {rel: _file_entry(tmp / INDEX / rel) for rel in files}}
        _write_json(tmp / MANIFEST, manifest)
        fsync_tree(tmp)
        os.rename(tmp, dest)
        fsync_dir(dest.parent)
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_snapshot(db, name: str, out) -> dict:
    """Snapshot collection `name` of an open Database into `out`: a new directory, or a .tar archive."""
    with _full_disk_exhausts():
        return _write_snapshot(db, name, Path(out))


def _write_snapshot(db, name: str, out: Path) -> dict:
    if out.exists():
        raise InvalidArgumentError(f"{out} already exists")
    collection = db.collection(name)
    if not is_archive(out):
        return take_snapshot(collection, out)
    staging = out.with_name(f".{out.name}.dir-{uuid.uuid4().hex[:8]}")
    try:
        manifest = take_snapshot(collection, staging)
        pack(staging, out)
        return manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def pack(snapshot_dir, archive) -> None:
    """Write a snapshot directory (of a collection, or of a cluster's shards) as one uncompressed tar file
    (vectors do not compress), manifests first."""
    snapshot_dir, archive = Path(snapshot_dir), Path(archive)
    files = sorted((p for p in snapshot_dir.rglob("*") if p.is_file()),
                   key=lambda p: (not p.name.endswith(".json"), p.relative_to(snapshot_dir).as_posix()))
    tmp = archive.with_name(f".{archive.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with tarfile.open(tmp, "w") as tar:
            for p in files:
                tar.add(p, arcname=p.relative_to(snapshot_dir).as_posix())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.rename(tmp, archive)
        fsync_dir(archive.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_manifest(snapshot_dir) -> dict:
    """The manifest of a snapshot directory, checked for format, version and shape (not the file checksums)."""
    path = Path(snapshot_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise NotFoundError(f"{snapshot_dir}: no {MANIFEST}; not a vdb snapshot") from None
    except ValueError as e:
        raise DataLossError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise DataLossError(f"{path}: a manifest is a JSON object, not {type(manifest).__name__}")
    if manifest.get("format") != FORMAT:
        raise FailedPreconditionError(f"{path}: format {manifest.get('format')!r} is not {FORMAT!r}")
    if manifest.get("version") != VERSION:
        raise FailedPreconditionError(f"{path}: snapshot version {manifest.get('version')} is not supported "
                                      f"(this vdb reads {VERSION})")
    _check_shape(manifest, path)
    return manifest


def _check_shape(manifest: dict, path: Path) -> None:
    """A manifest is input (restore reads numbers and file names from it): every field has its type and
    range, every file its size and digest, and the files a collection cannot open without are listed."""
    for key, low in (("lsn", 0), ("count", 0), ("dim", 1)):
        value = manifest.get(key)
        if type(value) is not int or value < low:
            raise DataLossError(f"{path}: {key!r} is {value!r}, not an integer >= {low}")
    if not isinstance(manifest.get("metric"), str):
        raise DataLossError(f"{path}: 'metric' is {manifest.get('metric')!r}, not a string")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise DataLossError(f"{path}: 'files' is {type(files).__name__}, not an object of path: entry")
    for rel, entry in files.items():
        check_relpath(rel, path)
        if not (isinstance(entry, dict) and type(entry.get("bytes")) is int and entry["bytes"] >= 0
                and isinstance(entry.get("sha256"), str) and len(entry["sha256"]) == 64):
            raise DataLossError(f"{path}: the entry of {rel!r} is not {{\"bytes\": n, \"sha256\": hex}}")
    dirs = {p.as_posix() for rel in files for p in Path(rel).parents}
    clash = sorted(dirs & set(files))
    if clash:
        raise DataLossError(f"{path}: {clash[0]!r} is listed as a file and as a directory")
    missing = [rel for rel in REQUIRED if rel not in files]
    if missing:
        raise DataLossError(f"{path}: the snapshot lacks {', '.join(missing)}, without which no collection opens")


def check_relpath(rel, where="") -> str:
    """A path inside a snapshot must be plain and relative: a manifest or archive is input, and its names are
    joined to directories we write (DataLossError otherwise)."""
    parts = Path(rel).parts if isinstance(rel, str) else ()
    if not parts or Path(rel).is_absolute() or any(p in ("..", ".") for p in parts) or "\\" in rel:
        raise DataLossError(f"{where}: {rel!r} is not a plain relative path inside a snapshot")
    return rel


def verify_snapshot(snapshot_dir) -> dict:
    """Check every file against the manifest (size and SHA-256); DataLossError naming the first bad file."""
    snapshot_dir = Path(snapshot_dir)
    manifest = read_manifest(snapshot_dir)
    for rel, want in manifest["files"].items():
        path = snapshot_dir / INDEX / rel
        if not path.is_file():
            raise DataLossError(f"{path}: missing from the snapshot")
        got = _file_entry(path)
        if got != want:
            raise DataLossError(f"{path}: {got['bytes']} bytes with SHA-256 {got['sha256'][:16]}..., the manifest "
                                f"says {want['bytes']} bytes with {want['sha256'][:16]}...")
    return manifest


@contextmanager
def unpacked(src, workdir):
    """The directory of a snapshot: `src` itself, or an archive unpacked under `workdir` (removed after)."""
    src = Path(src)
    if not src.exists():
        raise NotFoundError(f"{src}: no such snapshot")
    if not is_archive(src):
        yield src
        return
    tmp = Path(workdir) / f"{TRASH}unpack-{uuid.uuid4().hex[:8]}"  # in a data directory: swept if we crash
    try:
        _unpack(src, tmp)
        crashpoint("restore-unpacked")
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def opened_snapshot(src, workdir):
    """Yield (directory, manifest) of a verified snapshot: `src` itself, or an archive unpacked under `workdir`."""
    with unpacked(src, workdir) as snap:
        yield snap, verify_snapshot(snap)


def restore_snapshot(db, name: str, src) -> dict:
    """Restore a snapshot (directory or archive) as the new collection `name` of an open Database; returns
    the restored manifest. The collection then equals its source at the snapshot's LSN, and its next write
    gets LSN + 1."""
    with _full_disk_exhausts():
        return _restore_snapshot(db, name, src)


def _restore_snapshot(db, name: str, src) -> dict:
    with opened_snapshot(src, db.path) as (snap, manifest):
        def fill(path: Path) -> None:
            path.mkdir(parents=True)
            for rel in manifest["files"]:
                (path / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(snap / INDEX / rel, path / rel)
            start_log(path / WAL_DIR, manifest["lsn"] + 1)
            fsync_tree(path)
            crashpoint("restore-filled")

        info = db.adopt_collection(name, fill)
        got = {"count": info["count"], "dim": info["dim"], "metric": info["metric"]}
        said = {k: manifest[k] for k in got}
        if got != said:
            db.drop_collection(name)
            raise DataLossError(f"{src}: the restored collection has {got}, the manifest says {said}")
    return manifest


def content_digest(collection, batch: int = 4096) -> dict:
    """count, and SHA-256 over (id, stored vector, payload) of every live id in id order: two collections with
    equal digests hold the same content. Meant for a collection no one is writing to (tests, replica checks)."""
    idx = collection.index
    with idx.lock:
        ids = np.sort(idx.int2ext[is_live(idx.state)].astype(np.int64))
    h = hashlib.sha256()
    for s in range(0, len(ids), batch):
        for r in collection.get(ids[s: s + batch]):
            h.update(np.int64(r.id).tobytes())
            h.update(np.ascontiguousarray(r.vector, np.float32).tobytes())
            h.update(json.dumps(r.payload, sort_keys=True, separators=(",", ":")).encode())
    return {"count": int(len(ids)), "sha256": h.hexdigest(),
            "ids_sha256": hashlib.sha256(ids.astype("<i8").tobytes()).hexdigest()}


@contextmanager
def _full_disk_exhausts():
    """A full disk under a snapshot or restore is RESOURCE_EXHAUSTED (free space, retry), not an OSError."""
    try:
        yield
    except OSError as e:
        err = translate(e)
        if isinstance(err, ResourceExhaustedError):
            raise err from e
        raise


def _file_entry(path: Path) -> dict:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return {"bytes": path.stat().st_size, "sha256": h.hexdigest()}


def _write_json(path: Path, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def _unpack(archive: Path, dest: Path) -> None:
    """Extract only regular files with plain relative names (an archive is input: never trust its paths)."""
    dest.mkdir(parents=True)
    try:
        with tarfile.open(archive, "r") as tar:
            for member in tar:
                if not member.isfile():
                    raise DataLossError(f"{archive}: unexpected entry {member.name!r} in a snapshot archive")
                target = dest.joinpath(*Path(check_relpath(member.name, archive)).parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as fin, open(target, "wb") as fout:
                    shutil.copyfileobj(fin, fout, _HASH_CHUNK)
    except tarfile.TarError as e:
        raise DataLossError(f"{archive}: not a readable snapshot archive ({e})") from None
    except (FileExistsError, NotADirectoryError, IsADirectoryError) as e:  # one name as a file and a directory
        raise DataLossError(f"{archive}: entries that clash ({e})") from None
