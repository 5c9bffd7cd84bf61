"""Validation of what writers send (ids, payloads, batch size) before anything reaches the WAL.

The rule: whatever is acknowledged can always be applied, now and at every replay. So every value is checked
here, before the WAL append, against everything that later handles it (the JSON encoding in the WAL, the
columnar payload index, the filter language, protobuf's UTF-8 strings), and payloads are normalised to the exact
form recovery will decode from the log (plain dict / list / str / int / float / bool / None).
"""
from __future__ import annotations

import json
import math

import numpy as np

from vdb.errors import InvalidArgumentError, ResourceExhaustedError

MAX_ID = (1 << 63) - 1
MAX_PAYLOAD_BYTES = 1 << 20
MAX_PAYLOAD_DEPTH = 32        # nesting of objects and lists; deeper payloads are refused, never a RecursionError
MAX_KEY_BYTES = 256
INT_RANGE = (-(1 << 63), (1 << 63) - 1)  # payload integers are int64, as filters and the payload index see them


def check_ids(ids, max_batch: int, *, unique: bool = True) -> np.ndarray:
    a = np.asarray(ids)
    if a.ndim == 0:
        a = a[None]
    if a.ndim != 1:
        raise InvalidArgumentError(f"ids must be a 1-D array, got shape {a.shape}")
    if len(a) == 0:
        raise InvalidArgumentError("empty batch: give at least one id")
    if len(a) > max_batch:
        raise ResourceExhaustedError(f"batch of {len(a)} exceeds max_batch={max_batch}; split it")
    if not np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_:
        raise InvalidArgumentError(f"ids must be integers, got {a.dtype}")
    if (a.dtype.kind == "i" and a.min() < 0) or (a.dtype == np.uint64 and a.max() > MAX_ID):
        raise InvalidArgumentError("ids must be in [0, 2**63 - 1]")
    a = a.astype(np.int64)
    if unique:
        u, counts = np.unique(a, return_counts=True)
        if len(u) != len(a):
            raise InvalidArgumentError(f"duplicate ids in one batch: {u[counts > 1][:5].tolist()}")
    return a


def check_payloads(payloads, n: int) -> list | None:
    """None, or a list of n payloads (JSON objects or None), normalised; InvalidArgumentError names the first
    payload and the path inside it that cannot be stored."""
    if payloads is None:
        return None
    if not isinstance(payloads, (list, tuple)) or len(payloads) != n:
        raise InvalidArgumentError(f"payloads must be a list of {n} objects (dict or None), one per id")
    out = []
    for i, p in enumerate(payloads):
        if p is not None and not isinstance(p, dict):
            raise InvalidArgumentError(f"payload {i} must be a JSON object (dict) or None, got {type(p).__name__}")
        clean = None if p is None else _value(p, f"payload {i}", 0)
        size = len(json.dumps(clean, separators=(",", ":"), ensure_ascii=False).encode())
        if size > MAX_PAYLOAD_BYTES:
            raise InvalidArgumentError(f"payload {i} is {size} bytes; the limit is {MAX_PAYLOAD_BYTES}")
        out.append(clean)
    return out


def _value(v, where: str, depth: int):
    if v is None or isinstance(v, (bool, np.bool_)):
        return None if v is None else bool(v)
    if isinstance(v, (int, np.integer)):
        v = int(v)
        if not INT_RANGE[0] <= v <= INT_RANGE[1]:
            raise InvalidArgumentError(f"{where}: integer {_short(v)} is outside the 64-bit range")
        return v
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if not math.isfinite(v):
            raise InvalidArgumentError(f"{where}: {v} is not a finite number (JSON has no NaN or Infinity)")
        return v
    if isinstance(v, str):
        return _text(v, where)
    if depth >= MAX_PAYLOAD_DEPTH:
        raise InvalidArgumentError(f"{where}: nested deeper than {MAX_PAYLOAD_DEPTH} levels")
    if isinstance(v, list):
        return [_value(x, f"{where}[{j}]", depth + 1) for j, x in enumerate(v)]
    if isinstance(v, dict):
        out = {}
        for key, x in v.items():
            if not isinstance(key, str):
                raise InvalidArgumentError(f"{where}: key {_short(key)} is a {type(key).__name__}; keys are strings")
            _check_key(key, where)
            out[key] = _value(x, f"{where}.{key}", depth + 1)
        return out
    raise InvalidArgumentError(f"{where}: a {type(v).__name__} is not a JSON value (use objects, lists, strings, "
                               f"numbers, booleans or null)")


def _check_key(key: str, where: str) -> None:
    _text(key, f"{where}: key")
    if not key or len(key.encode()) > MAX_KEY_BYTES:
        raise InvalidArgumentError(f"{where}: keys must be 1 to {MAX_KEY_BYTES} bytes, got {_short(key)}")
    if "." in key:  # filters address nested fields as "a.b": a key with a dot would be ambiguous
        raise InvalidArgumentError(f"{where}: key {_short(key)} contains '.', which filters use for nesting")


def _text(s: str, where: str) -> str:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: valid Python, not storable as UTF-8 (nor sent by protobuf)
        raise InvalidArgumentError(f"{where}: string is not valid Unicode (it holds a lone surrogate)") from None
    return s


def _short(v) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def check_record_size(nbytes: int, limit: int) -> None:
    """A write's WAL record must fit the log's record limit; refuse it before anything is logged."""
    if nbytes > limit:
        raise ResourceExhaustedError(f"this batch encodes to {nbytes} bytes, over the write-ahead log's record "
                                     f"limit of {limit} bytes; split it into smaller batches")
