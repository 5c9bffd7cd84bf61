"""Validation of hybrid-search inputs, shared by the engine, the gRPC client and the router (same messages)."""
from __future__ import annotations

import numpy as np

from vdb.errors import InvalidArgumentError
from vdb.text.fusion import FUSIONS

DEFAULT_CANDIDATES = 50          # per list, before fusion (at least top_k)
DEFAULT_ALPHA = 0.5
TIE_SLACK = 16                   # each list is fetched this much deeper, to keep a tied group the cut would split


def query_texts(text) -> list[str] | None:
    """None, or the query strings of `text` (one string or a non-empty list of strings)."""
    if text is None:
        return None
    items = [text] if isinstance(text, str) else text
    if not isinstance(items, (list, tuple)) or not all(isinstance(t, str) for t in items):
        raise InvalidArgumentError("text must be a string or a list of strings")
    if not items:
        raise InvalidArgumentError("text: give at least one query string")
    for i, t in enumerate(items):
        try:
            t.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: a Python str, but no UTF-8 (the analyser and protobuf refuse it)
            raise InvalidArgumentError(f"text {i}: string is not valid Unicode (it holds a lone surrogate)") from None
    return list(items)


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def check_options(fusion: str, alpha, rrf_k, candidates, top_k, max_top_k: int) -> int:
    """Validate the fusion options; returns the per-list candidate depth."""
    if fusion not in FUSIONS:
        raise InvalidArgumentError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating)) or not 0.0 <= alpha <= 1.0:
        raise InvalidArgumentError(f"alpha must be a number in [0, 1], got {alpha!r}")
    if not _is_int(rrf_k) or not 1 <= rrf_k < 1 << 31:
        raise InvalidArgumentError(f"rrf_k must be an integer >= 1, got {rrf_k!r}")
    if not _is_int(top_k) or not 1 <= top_k <= max_top_k:
        raise InvalidArgumentError(f"top_k must be an integer in [1, {max_top_k}], got {top_k!r}")
    if candidates is None:
        return max(int(top_k), DEFAULT_CANDIDATES)
    if not _is_int(candidates) or not top_k <= candidates <= max_top_k:
        raise InvalidArgumentError(f"candidates must be an integer in [top_k, {max_top_k}], got {candidates!r}")
    return int(candidates)
