"""Validation of what writers send (ids, payloads) before anything reaches the WAL."""
from __future__ import annotations

import json

import numpy as np

from vdb.errors import InvalidArgumentError, ResourceExhaustedError

MAX_ID = (1 << 63) - 1
MAX_PAYLOAD_BYTES = 1 << 20


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
    if not np.issubdtype(a.dtype, np.integer):
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
    if payloads is None:
        return None
    if not isinstance(payloads, (list, tuple)) or len(payloads) != n:
        raise InvalidArgumentError(f"payloads must be a list of {n} objects (dict or None), one per id")
    for i, p in enumerate(payloads):
        if p is not None and not isinstance(p, dict):
            raise InvalidArgumentError(f"payload {i} must be a JSON object (dict) or None, got {type(p).__name__}")
        try:
            size = len(json.dumps(p, allow_nan=False))
        except (TypeError, ValueError) as e:
            raise InvalidArgumentError(f"payload {i} is not JSON-serialisable: {e}") from None
        if size > MAX_PAYLOAD_BYTES:
            raise InvalidArgumentError(f"payload {i} is {size} bytes; the limit is {MAX_PAYLOAD_BYTES}")
    return list(payloads)
