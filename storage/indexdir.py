"""One index (or collection) directory: the files it holds and how they are opened together.

    DIR/LOCK          flock: one writer or many readers
    DIR/meta/         LMDB metadata store (storage.meta)
    DIR/vectors.f32   full-precision rows by internal id (storage.vectors)
    DIR/heads.f32     head (centroid) rows by posting id, same format
    DIR/postings.dat  INT8 posting extents (storage.postings)
    DIR/scan.pq       optional: compact codes of every posting record for RAM-resident scans (storage.scan_codes)
    DIR/wal/          a collection's write-ahead log (storage.wal), once the directory is served as one

This is the narrow port through which the index layer reaches storage.
"""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from storage.crashpoints import crashpoint
from storage.errors import CorruptionError, FormatError, InUseError, LockedError
from storage.fileheader import HEADER_SIZE
from storage.fileio import allocated_bytes, copy_prefix, fsync_dir
from storage.lock import DirLock
from storage.wal.format import SEGMENT_HEADER_SIZE
from storage.meta import MetaStore, require_store
from storage.postings import PostingStore
from storage.scan_codes import ScanCodeFile, open_scan_codes, scan_codes_summary, write_scan_codes
from storage.vectors import VectorFile

META, VECTORS, HEADS, POSTINGS, WAL = "meta", "vectors.f32", "heads.f32", "postings.dat", "wal"
SCAN_CODES = "scan.pq"
BUILD_SUFFIX = ".build-"  # a build writes into .<name>.build-<id> beside its output, then renames it
FORMAT_NAME = "vdb-index"
FORMAT_VERSION = 1


class IndexDir:
    def __init__(self, path: Path, lock: DirLock, meta: MetaStore, manifest: dict, vectors: VectorFile,
                 heads: VectorFile, postings: PostingStore):
        self.path, self.lock, self.meta, self.manifest = path, lock, meta, manifest
        self.vectors, self.heads, self.postings = vectors, heads, postings

    @classmethod
    def create(cls, path: str | os.PathLike, dim: int) -> "IndexDir":
        """Create the files of a new, empty directory (used by builds, inside a temp directory)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=False)
        lock = DirLock(path, exclusive=True)
        (path / META).mkdir()
        meta = MetaStore(path / META, create=True)
        return cls(path, lock, meta, {}, VectorFile.create(path / VECTORS, dim),
                   VectorFile.create(path / HEADS, dim), PostingStore.create(path / POSTINGS, dim))

    @classmethod
    def create_empty(cls, path: str | os.PathLike, manifest: dict) -> "IndexDir":
        """A directory with no vectors and no heads yet (a new collection), committed and reopened writable."""
        d = cls.create(path, manifest["dim"])
        from storage.posting_format import DIRECTORY_DTYPE
        import numpy as np
        d.commit({"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "n_rows": 0, "n_heads": 0,
                  "checkpoint_lsn": 0, **manifest}, {"directory": np.zeros(0, DIRECTORY_DTYPE)})
        d.vectors.finish(), d.heads.finish(), d.postings.finish()
        d.sync_names()
        fsync_dir(d.path.parent)  # the directory itself, before a catalog names it
        return d

    def sync_names(self) -> None:
        """Make the names of the files in this directory durable (fsync of the directory): a file created since,
        e.g. by a compaction, must exist after a power loss before a commit may name it."""
        fsync_dir(self.path)

    @classmethod
    def open(cls, path: str | os.PathLike, *, writable: bool = False, verify: str = "lazy") -> "IndexDir":
        path = Path(path)
        if not path.is_dir():
            raise FormatError(f"{path}: no such index directory")
        require_store(path / META)  # before the lock file: a mistyped path is left as it was found
        lock = DirLock(path, exclusive=writable)
        opened: list = [lock]
        try:
            meta = MetaStore(path / META, readonly=not writable)
            opened.append(meta)
            manifest = meta.manifest()
            if manifest.get("format") != FORMAT_NAME:
                raise FormatError(f"{path}: manifest format is {manifest.get('format')!r}, not {FORMAT_NAME!r}")
            if manifest.get("format_version") != FORMAT_VERSION:
                raise FormatError(f"{path}: format version {manifest.get('format_version')} is not supported "
                                  f"(this vdb reads {FORMAT_VERSION})")
            for name in (VECTORS, HEADS, manifest.get("postings_file", POSTINGS)):
                if not (path / name).is_file():  # say which one, as damage: not a FileNotFoundError from deep down
                    raise CorruptionError(path / name, "missing, but the last commit references it")
            vectors = VectorFile.open(path / VECTORS, manifest["n_rows"], writable=writable)
            opened.append(vectors)
            heads = VectorFile.open(path / HEADS, manifest["n_heads"], writable=writable)
            opened.append(heads)
            directory = meta.get_array("directory")
            if directory is None:
                raise FormatError(f"{path}: metadata store has no posting directory")
            postings = PostingStore.open(path / manifest.get("postings_file", POSTINGS), directory,
                                         writable=writable, verify=verify)
        except BaseException:
            for thing in reversed(opened):
                thing.close()
            raise
        d = cls(path, lock, meta, manifest, vectors, heads, postings)
        if writable:
            d.remove_unreferenced()
        return d

    @property
    def postings_file(self) -> str:
        return self.manifest.get("postings_file", POSTINGS)

    def remove_unreferenced(self) -> None:
        """Delete posting files the committed manifest does not name (a compaction before or after its
        checkpoint, interrupted by a crash). Only the committed file is ever trusted."""
        keep = self.postings_file
        for f in self.path.glob("postings*.dat"):
            if f.name != keep and f.name != self.postings.path.name:
                f.unlink()

    @contextmanager
    def new_heads_or_none(self):
        """Add postings and head rows all or nothing: if the block raises (a full disk under the head rows'
        append, say), the postings it added and the head rows it appended are forgotten. Postings without their
        heads would be committed by the next checkpoint, and the directory would never open again."""
        had_postings, had_heads = self.postings.n_postings, self.heads.rows
        try:
            yield
        except BaseException:
            self.postings.forget_from(had_postings)
            self.heads.set_rows(had_heads)
            raise

    def commit(self, manifest: dict, arrays: dict, *, id_puts=None, id_deletes=None, payload_puts=None) -> None:
        """Make a checkpoint durable: fsync the data files, then one LMDB transaction with all metadata.

        Everything the new manifest and arrays reference must already be written to the data files; bytes
        written later (appends past the counts recorded here) are ignored by recovery.
        id_puts: (ext ids, rows); id_deletes: ext ids; payload_puts: (ext ids, list of dict or None).
        """
        self.vectors.sync()
        self.heads.sync()
        self.postings.sync()
        crashpoint("checkpoint-before-meta")
        with self.meta.write() as w:
            for name, a in arrays.items():
                w.put_array(name, a)
            if id_deletes is not None and len(id_deletes):
                w.delete_ids(id_deletes)
            if id_puts is not None and len(id_puts[0]):
                w.put_ids(*id_puts)
            if payload_puts is not None and len(payload_puts[0]):
                w.put_payloads(*payload_puts)
            w.set_manifest(manifest)
        self.manifest = manifest
        crashpoint("checkpoint-after-meta")
        self.remove_unreferenced()

    def reload_manifest(self) -> dict:
        """Re-read the manifest after a writer that wrote it through the metadata store directly (a build)."""
        self.manifest = self.meta.manifest()
        return self.manifest

    def copy_committed(self, dest: str | os.PathLike) -> list[str]:
        """Copy what the last commit references into the new directory `dest`: a consistent copy of LMDB, the
        vector and head rows the manifest counts, the posting file up to its last extent, the scan codes (if
        any). Returns the paths written, relative to `dest`.

        The caller excludes commits and posting / head writes meanwhile (the index's maint_lock); rows
        appended to the vector file past the committed count may go on: they are not copied."""
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=False)
        if self.manifest.get("postings_file", POSTINGS) != self.postings.path.name:
            raise FormatError(f"{self.path}: the posting file in use is not the committed one; checkpoint first")
        (dest / META).mkdir()
        self.meta.copy_to(dest / META)
        out = [f"{META}/{p.name}" for p in sorted((dest / META).iterdir())]
        for src, nbytes in ((self.vectors.path, HEADER_SIZE + self.manifest["n_rows"] * self.vectors.row_size),
                            (self.heads.path, HEADER_SIZE + self.manifest["n_heads"] * self.heads.row_size),
                            (self.postings.path, self.postings.file_bytes)):
            copy_prefix(src, dest / src.name, nbytes)
            out.append(src.name)
        try:  # the scan codes too: each entry names the posting CRC it encoded, so the copy's stale ones stay stale
            copy_prefix(self.path / SCAN_CODES, dest / SCAN_CODES, None)  # one open: a publish renames, never edits
            out.append(SCAN_CODES)
        except FileNotFoundError:
            pass
        return out

    def open_scan_codes(self) -> ScanCodeFile | None:
        """The directory's scan-code file, opened now (None if it has none). Optional: an index serves without
        it, and an entry of a posting changed since it was written is stale (the reader checks the CRCs)."""
        return open_scan_codes(self.path / SCAN_CODES)

    def scan_codes_summary(self) -> dict | None:
        """What the directory's scan-code file holds, from its headers (storage.scan_codes.scan_codes_summary);
        None if it has none."""
        return scan_codes_summary(self.path / SCAN_CODES)

    def write_scan_codes(self, *arrays) -> None:
        """Publish a new scan-code file atomically (storage.scan_codes.write_scan_codes's arguments after path)."""
        write_scan_codes(self.path / SCAN_CODES, *arrays)

    def disk_bytes(self) -> dict[str, int]:
        """Logical bytes per file (sparse growth tails excluded); the scan codes only if there are some."""
        out = {VECTORS: self.vectors.nbytes, HEADS: self.heads.nbytes, POSTINGS: self.postings.file_bytes,
               META: self.meta.disk_bytes()}
        try:
            out[SCAN_CODES] = (self.path / SCAN_CODES).stat().st_size
        except OSError:  # none, or unreadable (the scan tier's stats say which): counted as nothing
            pass
        return out

    def allocated_bytes(self) -> dict[str, int]:
        """Bytes the device holds for each entry of the directory (st_blocks: holes of reclaimed rows and sparse
        growth tails excluded; a directory such as meta/ or wal/ is the sum of its files), and their "total"."""
        out = {f.name: allocated_bytes(f) for f in sorted(self.path.iterdir())}
        out["total"] = sum(out.values())
        return out

    def swap_postings(self, new: PostingStore) -> PostingStore:
        """Serve from `new` from now on; returns the old store (the caller closes it). The switch becomes
        durable with the next commit, whose manifest names the new file."""
        old, self.postings = self.postings, new
        return old

    def close(self, *, release_lock: bool = True) -> None:
        """Close every file; with release_lock=False the caller keeps (and later closes) `self.lock`, e.g. a build
        that must hold its temporary directory until it is published."""
        for thing in (self.postings, self.heads, self.vectors, self.meta):
            thing.close()
        if release_lock:
            self.lock.close()


def check_replaceable(path: Path) -> None:
    """Refuse to replace a directory that another process holds open (LockedError naming its pid) or that holds
    a collection's write-ahead log with records: it is served as a collection, and replacing it would silently
    drop acknowledged writes."""
    with DirLock(path, exclusive=True):
        wal = path / WAL
        logged = [f for f in wal.glob("wal-*.log") if f.stat().st_size > SEGMENT_HEADER_SIZE] \
            if wal.is_dir() else []
        if logged:
            raise InUseError(f"{path} holds a collection's write-ahead log ({len(logged)} segment(s) with "
                             f"records): it is, or was, attached to a data directory as a collection")


def remove_stale_builds(out_dir: Path) -> list[Path]:
    """Delete the temporary directories of builds of `out_dir` that died (a live build holds its lock)."""
    removed = []
    for tmp in out_dir.parent.glob(f".{out_dir.name}{BUILD_SUFFIX}*"):
        try:
            lock = DirLock(tmp, exclusive=True)
        except (LockedError, OSError):
            continue  # a build in progress (or not ours to touch)
        try:
            shutil.rmtree(tmp)
            removed.append(tmp)
        finally:
            lock.close()
    return removed
