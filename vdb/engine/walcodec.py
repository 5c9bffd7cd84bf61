"""What the engine writes into the WAL: one record per upsert or delete batch.

    UPSERT (type 1):  u32 n | u32 dim | u32 payload_bytes | n x u64 ids | n x dim x f32 vectors (stored form:
                      normalised for cosine) | payload_bytes of JSON: a list of n (object or null), or empty
    DELETE (type 2):  u32 n | n x u64 ids
    RELOCATE (type 3): u32 n | n x u64 ids | n x u64 rows: each id still at that row moves, with its vector and
                      payload unchanged, to a new row (the maintenance thread's, to free the vector file's sparse
                      blocks; vdb/engine/relocation.py). Replay applies it by the same rule.

All little endian. The WAL adds length, checksum and LSN around these bytes (docs/wal_format.md).
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np

UPSERT, DELETE, RELOCATE = 1, 2, 3
_UPSERT_HEAD = struct.Struct("<III")
_COUNT_HEAD = struct.Struct("<I")  # DELETE and RELOCATE: the number of ids


@dataclass(frozen=True)
class Upsert:
    ids: np.ndarray                     # int64 [n]
    vectors: np.ndarray                 # float32 [n, dim], stored form
    payloads: list[dict | None] | None
    heads: np.ndarray | None = None     # the writer's nearest head per vector (not logged: see Collection._apply)


@dataclass(frozen=True)
class Delete:
    ids: np.ndarray


@dataclass(frozen=True)
class Relocate:
    ids: np.ndarray                     # int64 [n]
    rows: np.ndarray                    # int64 [n]: the row each id must still be at to move
    vectors: np.ndarray | None = None   # those rows' vectors and nearest heads, read by the relocating thread
    heads: np.ndarray | None = None     # before the log's lock (not logged: replay reads and searches again)


def encode_upsert(ids: np.ndarray, vectors: np.ndarray, payloads: list[dict | None] | None) -> bytes:
    blob = json.dumps(payloads, separators=(",", ":")).encode() if payloads is not None else b""
    n, dim = vectors.shape
    return b"".join([_UPSERT_HEAD.pack(n, dim, len(blob)), np.asarray(ids, "<u8").tobytes(),
                     np.ascontiguousarray(vectors, "<f4").tobytes(), blob])


def encode_delete(ids: np.ndarray) -> bytes:
    return _COUNT_HEAD.pack(len(ids)) + np.asarray(ids, "<u8").tobytes()


def encode_relocate(ids: np.ndarray, rows: np.ndarray) -> bytes:
    return _COUNT_HEAD.pack(len(ids)) + np.asarray(ids, "<u8").tobytes() + np.asarray(rows, "<u8").tobytes()


def decode(rtype: int, data: bytes) -> Upsert | Delete | Relocate:
    """The operation a record holds; ValueError if its bytes do not form one (the WAL checksum passed, so this
    means a writer bug or a format this version does not know)."""
    try:
        return _decode(rtype, data)
    except (struct.error, ValueError, TypeError) as e:
        raise ValueError(f"WAL record of type {rtype} does not decode: {e}") from None


def _decode(rtype: int, data: bytes) -> Upsert | Delete | Relocate:
    if rtype == UPSERT:
        n, dim, nblob = _UPSERT_HEAD.unpack_from(data)
        off = _UPSERT_HEAD.size
        ids = np.frombuffer(data, "<u8", n, off).astype(np.int64)
        off += 8 * n
        vectors = np.frombuffer(data, "<f4", n * dim, off).reshape(n, dim).astype(np.float32)
        off += 4 * n * dim
        payloads = json.loads(data[off: off + nblob]) if nblob else None
        return Upsert(ids, vectors, payloads)
    if rtype == DELETE:
        (n,) = _COUNT_HEAD.unpack_from(data)
        return Delete(np.frombuffer(data, "<u8", n, _COUNT_HEAD.size).astype(np.int64))
    if rtype == RELOCATE:
        (n,) = _COUNT_HEAD.unpack_from(data)
        if len(data) != _COUNT_HEAD.size + 16 * n:
            raise ValueError(f"{len(data)} bytes for {n} relocated rows")
        both = np.frombuffer(data, "<u8", 2 * n, _COUNT_HEAD.size).astype(np.int64)
        return Relocate(both[:n], both[n:])
    raise ValueError(f"unknown WAL record type {rtype}")
