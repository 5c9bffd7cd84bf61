"""What the engine writes into the WAL: one record per upsert or delete batch.

    UPSERT (type 1):  u32 n | u32 dim | u32 payload_bytes | n x u64 ids | n x dim x f32 vectors (stored form:
                      normalised for cosine) | payload_bytes of JSON: a list of n (object or null), or empty
    DELETE (type 2):  u32 n | n x u64 ids

All little endian. The WAL adds length, checksum and LSN around these bytes (docs/wal_format.md).
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np

UPSERT, DELETE = 1, 2
_UPSERT_HEAD = struct.Struct("<III")
_DELETE_HEAD = struct.Struct("<I")


@dataclass(frozen=True)
class Upsert:
    ids: np.ndarray                     # int64 [n]
    vectors: np.ndarray                 # float32 [n, dim], stored form
    payloads: list[dict | None] | None
    heads: np.ndarray | None = None     # the writer's nearest head per vector (not logged: see Collection._apply)


@dataclass(frozen=True)
class Delete:
    ids: np.ndarray


def encode_upsert(ids: np.ndarray, vectors: np.ndarray, payloads: list[dict | None] | None) -> bytes:
    blob = json.dumps(payloads, separators=(",", ":")).encode() if payloads is not None else b""
    n, dim = vectors.shape
    return b"".join([_UPSERT_HEAD.pack(n, dim, len(blob)), np.asarray(ids, "<u8").tobytes(),
                     np.ascontiguousarray(vectors, "<f4").tobytes(), blob])


def encode_delete(ids: np.ndarray) -> bytes:
    return _DELETE_HEAD.pack(len(ids)) + np.asarray(ids, "<u8").tobytes()


def decode(rtype: int, data: bytes) -> Upsert | Delete:
    """The operation a record holds; ValueError if its bytes do not form one (the WAL checksum passed, so this
    means a writer bug or a format this version does not know)."""
    try:
        return _decode(rtype, data)
    except (struct.error, ValueError, TypeError) as e:
        raise ValueError(f"WAL record of type {rtype} does not decode: {e}") from None


def _decode(rtype: int, data: bytes) -> Upsert | Delete:
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
        (n,) = _DELETE_HEAD.unpack_from(data)
        return Delete(np.frombuffer(data, "<u8", n, _DELETE_HEAD.size).astype(np.int64))
    raise ValueError(f"unknown WAL record type {rtype}")
