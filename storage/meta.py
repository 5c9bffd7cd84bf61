"""The metadata store: one LMDB environment per index/collection directory.

Named databases:
    manifest   b"manifest" -> JSON: format version, dim, metric, build parameters, row counts, checkpoint LSN
    arrays     name -> CRC-32 (u32 LE) + .npy bytes: posting directory, per-row state, id map, head index, ...
    ext2int    external id (u64 big endian, so keys sort numerically) -> internal row id (u32 LE)
    payloads   external id (u64 big endian) -> JSON bytes

Every change of a checkpoint is one LMDB write transaction, so a crash leaves the previous checkpoint whole.
"""
from __future__ import annotations

import io
import json
import os
import struct
import threading
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import lmdb
import numpy as np

from storage.errors import CorruptionError, FormatError, MetaStoreError

DEFAULT_MAP_SIZE = 256 << 30  # virtual reservation only; the file grows with what is stored
_SUBDBS = (b"manifest", b"arrays", b"ext2int", b"payloads")
_U32 = struct.Struct("<I")


def encode_ids(ids: np.ndarray) -> list[bytes]:
    raw = np.asarray(ids, dtype=np.uint64).astype(">u8").tobytes()
    return [raw[i: i + 8] for i in range(0, len(raw), 8)]


# py-lmdb allows one Environment per path and process, so readers of the same directory share it.
_ENVS: dict[str, list] = {}  # realpath -> [env, dbs, refcount]
_ENVS_LOCK = threading.Lock()


def _acquire(key: str, path: Path, readonly: bool, create: bool, map_size: int):
    with _ENVS_LOCK:
        if key in _ENVS:
            entry = _ENVS[key]
            entry[2] += 1
            return entry[0], entry[1]
        try:
            # The directory lock (storage.lock) already excludes a concurrent writer, so read-only opens can
            # skip LMDB's own lock file and work on read-only media.
            env = lmdb.open(str(path), map_size=map_size, max_dbs=len(_SUBDBS), readonly=readonly,
                            lock=not readonly, subdir=True, create=create, readahead=False)
        except lmdb.Error as e:
            raise CorruptionError(path, f"cannot open LMDB environment: {e}") from e
        try:
            dbs = {name: env.open_db(name, create=not readonly) for name in _SUBDBS}
        except lmdb.Error as e:
            env.close()
            raise FormatError(f"{path}: metadata store lacks its tables ({e})") from e
        _ENVS[key] = [env, dbs, 1]
        return env, dbs


def _release(key: str) -> None:
    with _ENVS_LOCK:
        entry = _ENVS[key]
        entry[2] -= 1
        if entry[2] == 0:
            entry[0].close()
            del _ENVS[key]


def _encode_array(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(a), allow_pickle=False)
    body = buf.getvalue()
    return _U32.pack(zlib.crc32(body)) + body


def _read_npy(body: memoryview) -> np.ndarray:
    """A .npy image viewed in place (the header parsed; no pickles)."""
    head = io.BytesIO(bytes(body[: min(len(body), 1 << 16)]))
    version = np.lib.format.read_magic(head)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(head)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(head)
    if dtype.hasobject:
        raise ValueError("stored arrays never hold Python objects")
    count = int(np.prod(shape)) if shape else 1
    a = np.frombuffer(body, dtype, count=count, offset=head.tell())
    return a.reshape(shape, order="F" if fortran else "C")


class MetaStore:
    def __init__(self, path: str | os.PathLike, *, readonly: bool = False, create: bool = False,
                 map_size: int = DEFAULT_MAP_SIZE):
        self.path = Path(path)
        if not create and not (self.path / "data.mdb").exists():
            raise FormatError(f"{self.path}: no metadata store here (missing data.mdb); is this a vdb directory?")
        self._key = os.path.realpath(self.path)
        self.env, self._db = _acquire(self._key, self.path, readonly, create, map_size)
        self._closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _release(self._key)

    # -- reads ------------------------------------------------------------------------------------------
    def manifest(self) -> dict:
        with self.env.begin(db=self._db[b"manifest"]) as txn:
            raw = txn.get(b"manifest")
        if raw is None:
            raise FormatError(f"{self.path}: metadata store has no manifest (interrupted build?)")
        try:
            return json.loads(raw)
        except ValueError as e:
            raise CorruptionError(self.path / "data.mdb", f"manifest is not valid JSON ({e})") from e

    def get_array(self, name: str) -> np.ndarray | None:
        # Decoded inside the transaction from LMDB's own mapping, so the array is copied once (bytes + slice +
        # read_array made three copies: a 150 MB head index peaked at 450 MB while opening).
        return self.read_array(name, lambda a: a.copy(order="K"))

    def read_array(self, name: str, use):
        """use(array) on the stored array `name` read in place from LMDB's mapping, without a copy (the array
        is valid only during the call); returns use's result, or None if there is no such array."""
        with self.env.begin(db=self._db[b"arrays"], buffers=True) as txn:
            raw = txn.get(name.encode())
            if raw is None:
                return None
            (crc,) = _U32.unpack_from(raw)
            body = memoryview(raw)[_U32.size:]
            if zlib.crc32(body) != crc:
                raise CorruptionError(self.path / "data.mdb", f"stored array {name!r} fails its checksum",
                                      length=len(body))
            return use(_read_npy(body))

    def lookup(self, ext_ids: np.ndarray) -> np.ndarray:
        """Internal row id of each external id, -1 where unknown."""
        out = np.full(len(ext_ids), -1, np.int64)
        with self.env.begin(db=self._db[b"ext2int"], buffers=True) as txn:
            for i, key in enumerate(encode_ids(ext_ids)):
                v = txn.get(key)
                if v is not None:
                    out[i] = _U32.unpack(v)[0]
        return out

    def payloads(self, ext_ids: np.ndarray) -> list[dict | None]:
        with self.env.begin(db=self._db[b"payloads"]) as txn:
            raws = [txn.get(k) for k in encode_ids(ext_ids)]
        return [json.loads(r) if r is not None else None for r in raws]

    def iter_payloads(self) -> Iterator[tuple[int, dict]]:
        with self.env.begin(db=self._db[b"payloads"]) as txn:
            for k, v in txn.cursor():
                yield struct.unpack(">Q", k)[0], json.loads(v)

    def iter_ids(self) -> Iterator[tuple[int, int]]:
        with self.env.begin(db=self._db[b"ext2int"]) as txn:
            for k, v in txn.cursor():
                yield struct.unpack(">Q", k)[0], _U32.unpack(v)[0]

    def count_ids(self) -> int:
        with self.env.begin(db=self._db[b"ext2int"]) as txn:
            return txn.stat(self._db[b"ext2int"])["entries"]

    def disk_bytes(self) -> int:
        return (self.path / "data.mdb").stat().st_size

    # -- writes -----------------------------------------------------------------------------------------
    @contextmanager
    def write(self) -> Iterator["MetaWriter"]:
        """One atomic, durable write transaction."""
        try:
            with self.env.begin(write=True) as txn:
                yield MetaWriter(txn, self._db)
        except lmdb.MapFullError as e:
            raise MetaStoreError(f"{self.path}: metadata store is full ({e})",
                                 hint="open with a larger map_size") from e
        except lmdb.Error as e:
            raise MetaStoreError(f"{self.path}: metadata write failed ({e})") from e


class MetaWriter:
    def __init__(self, txn: lmdb.Transaction, dbs: dict):
        self._txn, self._db = txn, dbs

    def set_manifest(self, manifest: dict) -> None:
        self._txn.put(b"manifest", json.dumps(manifest, sort_keys=True).encode(), db=self._db[b"manifest"])

    def put_array(self, name: str, a: np.ndarray) -> None:
        self._txn.put(name.encode(), _encode_array(a), db=self._db[b"arrays"])

    def put_ids(self, ext_ids: np.ndarray, internal: np.ndarray, *, sorted_new: bool = False) -> None:
        """Map external ids to internal rows. `sorted_new`: keys ascending and absent (fast bulk append)."""
        values = [_U32.pack(int(i)) for i in internal]
        items = list(zip(encode_ids(ext_ids), values))
        with self._txn.cursor(db=self._db[b"ext2int"]) as cur:
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
                self._txn.put(key, json.dumps(p, separators=(",", ":")).encode(), db=db)
