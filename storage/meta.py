"""The metadata store: one LMDB environment per index/collection directory.

Named databases:
    manifest   b"manifest" -> b"VDBM1" + CRC-32 (u32 LE) + JSON: format version, dim, metric, build parameters,
               row counts, checkpoint LSN
    arrays     name -> CRC-32 (u32 LE) + .npy bytes, compressed when large (storage/arrays.py): posting directory,
               per-row state, id map, head index, ...
    ext2int    external id (u64 big endian, so keys sort numerically) -> internal row id (u32 LE) + check (u32 LE)
    payloads   external id (u64 big endian) -> 0x01 + CRC-32 of key and JSON (u32 LE) + JSON bytes

Every stored byte that decides an answer is checked when it is read: a flipped byte is a CorruptionError naming
data.mdb and the record, never a wrong payload, another id's vector or a wrong count. The id-map check is the
position-weighted word sum the vector rows use (storage/vectors.py), so a bulk build checks 10M entries in one
numpy pass; it covers the key too, so an entry moved to another key fails. Records written before checksums
(a raw manifest, 4-byte rows, bare JSON payloads) are still read.

Every change of a checkpoint is one LMDB write transaction, so a crash leaves the previous checkpoint whole.
A data.mdb shorter than its own last page (a truncated file) is refused at open: LMDB would SIGBUS on it; one too
short to hold LMDB's two meta pages is refused too (LMDB would take it for a new environment and initialise it).
"""
from __future__ import annotations

import json
import os
import struct
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import lmdb
import numpy as np

from storage.arrays import checked_body, encode_array, stream_bytes, view_array
from storage.errors import CorruptionError, FormatError, MetaStoreError
from storage.lmdbenv import LMDB_DAMAGE, acquire, mapping_start, names_damage, release, value_in_file

DEFAULT_MAP_SIZE = 256 << 30  # virtual reservation only; the file grows with what is stored
_U32 = struct.Struct("<I")
_ROW = struct.Struct("<II")       # row, check
MANIFEST_MAGIC = b"VDBM1"
PAYLOAD_MAGIC = b"\x01"
_ID_WEIGHTS = np.array([1, 3, 5], np.uint64)  # odd weights: any change of one word changes the sum
_ID_SALT = np.uint64(0x85EBCA6B)
IDS_PER_PUT = 1 << 16  # id-map entries encoded per cursor call: a bulk build's 10M at once were ~2 GB of Python
#                        objects (a bytes key and value and a tuple per entry), its peak anonymous memory
_MASK32 = np.uint64(0xFFFFFFFF)


def id_checks(ext_ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The u32 check of each (external id, row) entry: a weighted sum of its three 32-bit words."""
    ext = np.asarray(ext_ids, dtype=np.uint64)
    words = np.stack([ext & _MASK32, ext >> np.uint64(32), np.asarray(rows, dtype=np.uint64)], axis=-1)
    return (((words * _ID_WEIGHTS).sum(-1) + _ID_SALT) & _MASK32).astype(np.uint32)


def _payload_record(key: bytes, payload: dict) -> bytes:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return PAYLOAD_MAGIC + _U32.pack(zlib.crc32(body, zlib.crc32(key))) + body


def encode_ids(ids: np.ndarray) -> list[bytes]:
    raw = np.asarray(ids, dtype=np.uint64).astype(">u8").tobytes()
    return [raw[i: i + 8] for i in range(0, len(raw), 8)]


def require_store(path: str | os.PathLike) -> None:
    """FormatError unless `path` holds a metadata store: callers check before they write anything (a lock file)
    into a directory that may be none of vdb's."""
    if not (Path(path) / "data.mdb").exists():
        raise FormatError(f"{path}: no metadata store here (missing data.mdb); is this a vdb directory?")


class MetaStore:
    def __init__(self, path: str | os.PathLike, *, readonly: bool = False, create: bool = False,
                 map_size: int = DEFAULT_MAP_SIZE):
        self.path = Path(path)
        self._map_start: int | None = None  # found on the first checked read (see _mapped_end)
        if not create:
            require_store(self.path)
        self._key = os.path.realpath(self.path)
        self.env, self._db, self._guard = acquire(self._key, self.path, readonly, create, map_size)
        self._closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            release(self._key)

    def _corrupt(self, detail: str) -> CorruptionError:
        return CorruptionError(self.path / "data.mdb", detail)

    # -- reads ------------------------------------------------------------------------------------------
    @names_damage
    def manifest(self) -> dict:
        with self.env.begin(db=self._db[b"manifest"]) as txn:
            raw = txn.get(b"manifest")
        if raw is None:
            raise FormatError(f"{self.path}: metadata store has no manifest (interrupted build?)")
        if raw.startswith(MANIFEST_MAGIC):
            (crc,) = _U32.unpack_from(raw, len(MANIFEST_MAGIC))
            raw = raw[len(MANIFEST_MAGIC) + _U32.size:]
            if zlib.crc32(raw) != crc:
                raise self._corrupt("the manifest fails its checksum")
        try:
            manifest = json.loads(raw)
        except ValueError as e:
            raise self._corrupt(f"manifest is not valid JSON ({e})") from e
        if not isinstance(manifest, dict):
            raise self._corrupt("the manifest is not a JSON object")
        return manifest

    @names_damage
    def get_array(self, name: str) -> np.ndarray | None:
        # Decoded inside the transaction from LMDB's own mapping, so the array is copied once (bytes + slice +
        # read_array made three copies: a 150 MB head index peaked at 450 MB while opening).
        return self.read_array(name, lambda a: a.copy(order="K"))

    @names_damage
    def read_array(self, name: str, use):
        """use(array) on the stored array `name` read in place from LMDB's mapping, without a copy (the array
        is valid only during the call); returns use's result, or None if there is no such array."""
        with self.env.begin(db=self._db[b"arrays"], buffers=True) as txn:
            body = self._stored_body(txn, name)
            return None if body is None else use(view_array(body))

    @names_damage
    def read_array_stream(self, name: str, use):
        """use(read) on the bytes of the stored 1-D uint8 array `name`: read(n) returns up to n of them, read in
        place from LMDB's mapping and inflated as they are read (valid only during the call); returns use's
        result, or None if there is no such array. For a blob its reader copies into its own structures (the head
        index: read_array would hold its inflated image and the reader's copy at once, 3x its size at the open's
        peak)."""
        with self.env.begin(db=self._db[b"arrays"], buffers=True) as txn:
            body = self._stored_body(txn, name)
            if body is None:
                return None
            return stream_bytes(body, self.path / "data.mdb", name, use)

    def _stored_body(self, txn, name: str) -> memoryview | None:
        raw = value_in_file(txn.get(name.encode()), self._mapped_end(), self.path / "data.mdb", name.encode())
        return None if raw is None else checked_body(raw, self.path / "data.mdb", name)

    @names_damage
    def lookup(self, ext_ids: np.ndarray) -> np.ndarray:
        """Internal row id of each external id, -1 where unknown; every entry found is checked."""
        out = np.full(len(ext_ids), -1, np.int64)
        checks = np.zeros(len(ext_ids), np.int64)
        legacy = np.zeros(len(ext_ids), bool)
        with self.env.begin(db=self._db[b"ext2int"], buffers=True) as txn:
            for i, key in enumerate(encode_ids(ext_ids)):
                v = txn.get(key)
                if v is None:
                    continue
                if len(v) == _ROW.size:
                    out[i], checks[i] = _ROW.unpack(v)
                elif len(v) == _U32.size:
                    out[i], legacy[i] = _U32.unpack(v)[0], True
                else:
                    raise self._corrupt(f"id-map entry for id {int(ext_ids[i])} has {len(v)} bytes")
        self._verify_ids(np.asarray(ext_ids), out, checks, (out >= 0) & ~legacy)
        return out

    def _verify_ids(self, ext_ids: np.ndarray, rows: np.ndarray, checks: np.ndarray, mask: np.ndarray) -> None:
        if mask.any():
            bad = np.nonzero(mask & (id_checks(ext_ids, np.maximum(rows, 0)) != checks.astype(np.uint32)))[0]
            if len(bad):
                raise self._corrupt(f"id-map entry for id {int(ext_ids[bad[0]])} fails its checksum "
                                    f"({len(bad)} bad entries among those read)")

    def _payload(self, key: bytes, raw) -> dict | None:
        raw = bytes(raw)
        if raw.startswith(PAYLOAD_MAGIC):
            (crc,) = _U32.unpack_from(raw, 1)
            raw = raw[1 + _U32.size:]
            if zlib.crc32(raw, zlib.crc32(key)) != crc:
                raise self._corrupt(f"payload of id {struct.unpack('>Q', key)[0]} fails its checksum")
        try:
            return json.loads(raw)
        except ValueError as e:
            raise self._corrupt(f"payload of id {struct.unpack('>Q', key)[0]} is not valid JSON ({e})") from e

    @names_damage
    def payloads(self, ext_ids: np.ndarray) -> list[dict | None]:
        keys = encode_ids(ext_ids)
        with self.env.begin(db=self._db[b"payloads"], buffers=True) as txn:
            end = self._mapped_end()
            raws = [value_in_file(txn.get(k), end, self.path / "data.mdb", k) for k in keys]
        return [self._payload(k, r) if r is not None else None for k, r in zip(keys, raws)]

    @names_damage
    def iter_payloads(self) -> Iterator[tuple[int, dict]]:
        with self.env.begin(db=self._db[b"payloads"], buffers=True) as txn:
            end = self._mapped_end()
            for k, v in txn.cursor():
                k = bytes(k)
                yield struct.unpack(">Q", k)[0], self._payload(k, value_in_file(v, end, self.path / "data.mdb", k))

    def iter_payload_ids(self) -> Iterator[int]:
        """The external id of every stored payload, without reading the payloads (keys only)."""
        with self.env.begin(db=self._db[b"payloads"]) as txn:
            for k in txn.cursor().iternext(keys=True, values=False):
                yield struct.unpack(">Q", k)[0]

    def _mapped_end(self) -> tuple[int, int] | None:
        """(start of LMDB's mapping of data.mdb, the address one past the file's last byte in it): pages past
        that are not backed by the file. None where /proc/self/maps cannot say (the check is then skipped)."""
        if self._map_start is None:
            self._map_start = mapping_start(self.path / "data.mdb")
        if not self._map_start:
            return None
        return self._map_start, self._map_start + os.path.getsize(self.path / "data.mdb")

    @names_damage
    def iter_ids(self, chunk: int = 65536) -> Iterator[tuple[int, int]]:
        """Every (external id, row) entry, ascending by id, each checked."""
        with self.env.begin(db=self._db[b"ext2int"]) as txn:
            cur = txn.cursor()
            more = cur.first()
            while more:
                keys, rows, checks, legacy = [], [], [], []
                while more and len(keys) < chunk:
                    k, v = cur.item()
                    keys.append(struct.unpack(">Q", k)[0])
                    if len(v) == _ROW.size:
                        r, c = _ROW.unpack(v)
                    elif len(v) == _U32.size:
                        r, c = _U32.unpack(v)[0], 0
                    else:
                        raise self._corrupt(f"id-map entry for id {keys[-1]} has {len(v)} bytes")
                    rows.append(r), checks.append(c), legacy.append(len(v) == _U32.size)
                    more = cur.next()
                ids, rows_a = np.array(keys, np.uint64), np.array(rows, np.int64)
                self._verify_ids(ids, rows_a, np.array(checks, np.int64), ~np.array(legacy, bool))
                yield from zip(keys, rows)

    def verify(self) -> list[str]:
        """Read and check every record (manifest, arrays, id map, payloads): the violations found. Read-only."""
        problems: list[str] = []
        checks = [self.manifest, lambda: list(self.iter_ids()), lambda: sum(1 for _ in self.iter_payloads())]
        try:
            with self.env.begin(db=self._db[b"arrays"]) as txn:
                names = [bytes(k).decode() for k, _ in txn.cursor()]
        except LMDB_DAMAGE as e:
            names = []
            problems.append(f"{self.path / 'data.mdb'}: the table of arrays is damaged: {e}")
        checks += [lambda n=n: self.get_array(n) for n in names]
        for check in checks:
            try:
                check()
            except (CorruptionError, FormatError) as e:
                problems.append(str(e))
            except LMDB_DAMAGE as e:
                problems.append(f"{self.path / 'data.mdb'}: a page of the metadata store is damaged: {e}")
        return problems

    def count_ids(self) -> int:
        with self.env.begin(db=self._db[b"ext2int"]) as txn:
            return txn.stat(self._db[b"ext2int"])["entries"]

    def disk_bytes(self) -> int:
        return (self.path / "data.mdb").stat().st_size

    def copy_to(self, directory: str | os.PathLike) -> None:
        """Write a consistent, compacted copy of the store (as of one read transaction) into the existing,
        empty `directory` (snapshots: vdb/engine/snapshot.py)."""
        try:
            self.env.copy(os.fspath(directory), compact=True)
        except lmdb.Error as e:
            raise MetaStoreError(f"{self.path}: copying the metadata store to {directory} failed ({e})") from e

    # -- writes -----------------------------------------------------------------------------------------
    @contextmanager
    def write(self) -> Iterator["MetaWriter"]:
        """One atomic, durable write transaction."""
        try:
            with self._guard.writing():
                txn = self.env.begin(write=True)
                try:
                    yield MetaWriter(txn, self._db)
                except BaseException:
                    txn.abort()
                    raise
                txn.commit()
        except lmdb.MapFullError as e:
            raise MetaStoreError(f"{self.path}: metadata store is full ({e})",
                                 hint="open with a larger map_size") from e
        except lmdb.Error as e:
            raise MetaStoreError(f"{self.path}: metadata write failed ({e})") from e


class MetaWriter:
    def __init__(self, txn: lmdb.Transaction, dbs: dict):
        self._txn, self._db = txn, dbs

    def set_manifest(self, manifest: dict) -> None:
        body = json.dumps(manifest, sort_keys=True).encode()
        self._txn.put(b"manifest", MANIFEST_MAGIC + _U32.pack(zlib.crc32(body)) + body, db=self._db[b"manifest"])

    def put_array(self, name: str, a: np.ndarray) -> None:
        self._txn.put(name.encode(), encode_array(a), db=self._db[b"arrays"])

    def put_ids(self, ext_ids: np.ndarray, internal: np.ndarray, *, sorted_new: bool = False) -> None:
        """Map external ids to internal rows. `sorted_new`: keys ascending and absent (fast bulk append)."""
        ext_ids, internal = np.asarray(ext_ids), np.asarray(internal, dtype=np.int64)
        with self._txn.cursor(db=self._db[b"ext2int"]) as cur:
            for s in range(0, len(internal), IDS_PER_PUT):
                keys, rows = ext_ids[s: s + IDS_PER_PUT], internal[s: s + IDS_PER_PUT]
                packed = np.empty((len(rows), 2), "<u4")
                packed[:, 0], packed[:, 1] = rows, id_checks(keys, rows)
                raw = packed.tobytes()
                items = zip(encode_ids(keys), (raw[i: i + 8] for i in range(0, len(raw), 8)))
                if sorted_new:
                    cur.putmulti(items, append=True)
                else:
                    cur.putmulti(items, overwrite=True)

    def delete_ids(self, ext_ids: np.ndarray) -> None:
        for key in encode_ids(ext_ids):
            self._txn.delete(key, db=self._db[b"ext2int"])

    def put_payloads(self, ext_ids: np.ndarray, payloads: list[dict | None]) -> None:
        db = self._db[b"payloads"]
        for key, p in zip(encode_ids(ext_ids), payloads):
            if p is None:
                self._txn.delete(key, db=db)
            else:
                self._txn.put(key, _payload_record(key, p), db=db)
