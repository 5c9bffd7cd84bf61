"""The catalog of a data directory: which collections exist and where their files are.

    DATA/LOCK                  exclusive lock: one server (or embedded process) per data directory
    DATA/catalog.json          {"collections": {name: {"path": ...}}, "crc32": CRC of the collections JSON},
                               replaced atomically; damage is DATA_LOSS naming the file, never a guess
    DATA/collections/<name>/   a collection: an index directory plus its WAL

Names are validated ([A-Za-z0-9_-]{1,64}) before they are ever joined to a path. An attached bulk-built
index keeps its own absolute path.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import uuid
import zlib
from pathlib import Path

from storage.errors import CorruptionError, InUseError
from storage.fileio import atomic_write_bytes, fsync_dir
from storage.indexdir import check_replaceable
from vdb.errors import AlreadyExistsError, FailedPreconditionError, InvalidArgumentError, NotFoundError

NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
CATALOG = "catalog.json"
COLLECTIONS = "collections"  # DATA/collections/NAME: the collections' own directories
TRASH = ".trash-"  # DATA/.trash-*: directories nobody needs (removed collections, interrupted unpacks); swept at open


def check_name(name) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise InvalidArgumentError(f"invalid collection name {name!r}: use 1-64 characters from A-Z a-z 0-9 _ -")
    return name


def _canonical(entries: dict) -> bytes:
    return json.dumps(entries, sort_keys=True, separators=(",", ":")).encode()


def _load(path: Path) -> dict[str, dict]:
    try:
        doc = json.loads(path.read_bytes())
        entries = doc["collections"]
        ok = isinstance(entries, dict) and all(
            isinstance(n, str) and NAME.fullmatch(n) and isinstance(e, dict) and isinstance(e.get("path"), str)
            for n, e in entries.items())
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptionError(path, f"unreadable catalog ({type(e).__name__}: {e})") from None
    if not ok:
        raise CorruptionError(path, "the catalog does not list collections as {name: {\"path\": ...}}")
    if "crc32" in doc and doc["crc32"] != zlib.crc32(_canonical(entries)):  # catalogs before checksums have none
        raise CorruptionError(path, "the catalog fails its checksum")
    return entries


def is_data_directory(root: Path) -> bool:
    """Whether `root` is a data directory: it has a catalog, or the collections folder its first open made."""
    return (root / CATALOG).exists() or (root / COLLECTIONS).is_dir()


def _check_none_lost(root: Path) -> None:
    """A data directory without a catalog is new, or was left by a crash in its first create_collection: its
    collections/ holds no collection that was ever served (served ones have a write-ahead log). Anything else
    means the catalog was lost, and opening would show no collections where there are some."""
    served = sorted(p.parent.name for p in (root / COLLECTIONS).glob("*/wal") if p.is_dir())
    if served:
        raise CorruptionError(root / CATALOG, f"missing, but {root / COLLECTIONS} holds {len(served)} "
                                              f"collection(s) that were served ({', '.join(served[:5])}): restore "
                                              f"the catalog from a backup; nothing was changed")


class Catalog:
    def __init__(self, root: Path, *, create: bool = True):
        self.root = root
        if create:
            (root / COLLECTIONS).mkdir(parents=True, exist_ok=True)
        path = root / CATALOG
        if not path.exists():
            _check_none_lost(root)
        self._entries: dict[str, dict] = _load(path) if path.exists() else {}

    @classmethod
    def read(cls, root: Path) -> "Catalog":
        """The catalog of an existing data directory, read without creating or changing anything."""
        return cls(root, create=False)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def path_of(self, name: str) -> Path:
        entry = self._entries.get(check_name(name))
        if entry is None:
            raise NotFoundError(f"collection {name!r} does not exist (see list_collections)")
        p = Path(entry["path"])
        return p if p.is_absolute() else self.root / p

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def new_path(self, name: str) -> Path:
        check_name(name)
        if name in self._entries:
            raise AlreadyExistsError(f"collection {name!r} already exists")
        path = self.root / COLLECTIONS / name
        if path.exists():  # left over by a crash between directory creation and catalog update
            try:
                check_replaceable(path)
            except InUseError:
                raise FailedPreconditionError(f"{path} holds a collection's data (its write-ahead log has records) "
                                              f"that the catalog does not list: nothing was deleted; move it away, "
                                              f"or restore the catalog that lists it") from None
            self._trash(path)
        return path

    def add(self, name: str, path: Path) -> None:
        rel = path.relative_to(self.root) if path.is_relative_to(self.root) else path.resolve()
        self._entries[name] = {"path": str(rel)}
        self._save()

    def forget(self, name: str) -> None:
        """Drop the entry and keep its files (an attached directory that failed to open stays the user's)."""
        del self._entries[name]
        self._save()

    def remove(self, name: str) -> None:
        path = self.path_of(name)
        del self._entries[name]
        self._save()
        if path.is_relative_to(self.root):
            self._trash(path)

    def _trash(self, path: Path) -> None:
        """Rename first (atomic, durable), then delete: a crash never leaves a half-deleted collection in place."""
        trash = self.root / f"{TRASH}{uuid.uuid4().hex[:8]}"
        os.rename(path, trash)
        fsync_dir(path.parent)  # a rename between two directories is durable once both are fsync'd
        fsync_dir(self.root)
        shutil.rmtree(trash, ignore_errors=True)

    def _save(self) -> None:
        doc = {"collections": self._entries, "crc32": zlib.crc32(_canonical(self._entries))}
        atomic_write_bytes(self.root / CATALOG, json.dumps(doc, indent=1).encode())

    def persist(self) -> None:
        """Write the catalog file if this data directory has none yet. Before the files of a collection that
        arrive with a write-ahead log (a restore) are written: without a catalog, a crash would leave them
        looking like a served collection whose catalog was lost, and the directory would not open."""
        if not (self.root / CATALOG).exists():
            self._save()

    def sweep_trash(self) -> None:
        for p in self.root.glob(f"{TRASH}*"):
            shutil.rmtree(p, ignore_errors=True)
