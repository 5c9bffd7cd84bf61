"""Columnar payload index: what makes a filter a few numpy operations instead of a scan over JSON.

For every (dotted) field seen, numbers go into a float64 column (NaN = absent), strings and booleans into
int32 category codes (-1 = absent), and values inside lists into an inverted map value -> rows. Columns are
indexed by row and grow with the collection. Built on the first filtered search, then kept up to date by the
write path.
"""
from __future__ import annotations

import threading
from typing import Iterable

import numpy as np


def flatten(payload: dict | None, prefix: str = "") -> dict:
    out: dict = {}
    for key, value in (payload or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _cat_key(v):
    return ("b", v) if isinstance(v, bool) else ("s", v)


class PayloadIndex:
    def __init__(self, n_rows: int = 0):
        self.n_rows = n_rows
        self._cap = max(1024, n_rows)
        self._num: dict[str, np.ndarray] = {}
        self._cat: dict[str, np.ndarray] = {}
        self._vocab: dict[str, dict] = {}
        self._multi: dict[str, dict] = {}
        self._lock = threading.Lock()

    def set_rows(self, rows: Iterable[int], payloads: Iterable[dict | None], n_rows: int) -> None:
        """Record the payloads of rows (new rows; rows never change their payload)."""
        with self._lock:
            self._grow(n_rows)
            for row, payload in zip(rows, payloads):
                for field, value in flatten(payload).items():
                    self._put(field, int(row), value)

    def _grow(self, n_rows: int) -> None:
        if n_rows > self._cap:
            self._cap = max(2 * self._cap, n_rows)
            for d, fill in ((self._num, np.nan), (self._cat, -1)):
                for f, a in d.items():
                    b = np.full(self._cap, fill, a.dtype)
                    b[: len(a)] = a
                    d[f] = b
        self.n_rows = max(self.n_rows, n_rows)

    def _put(self, field: str, row: int, value) -> None:
        if isinstance(value, list):
            m = self._multi.setdefault(field, {})
            for item in value:
                if isinstance(item, (str, int, float, bool)):
                    key = _cat_key(item) if isinstance(item, (str, bool)) else ("n", float(item))
                    m.setdefault(key, set()).add(row)
        elif isinstance(value, bool) or isinstance(value, str):
            vocab = self._vocab.setdefault(field, {})
            code = vocab.setdefault(_cat_key(value), len(vocab))
            col = self._cat.get(field)
            if col is None:
                col = self._cat[field] = np.full(self._cap, -1, np.int32)
            col[row] = code
        elif isinstance(value, (int, float)) and value is not None:
            col = self._num.get(field)
            if col is None:
                col = self._num[field] = np.full(self._cap, np.nan, np.float64)
            col[row] = float(value)

    # -- the interface filters.Node uses -----------------------------------------------------------------
    def equals(self, field: str, values: tuple) -> np.ndarray:
        out = np.zeros(self.n_rows, bool)
        num, cat, vocab, multi = self._num.get(field), self._cat.get(field), self._vocab.get(field, {}), \
            self._multi.get(field, {})
        for v in values:
            if isinstance(v, (bool, str)):
                code = vocab.get(_cat_key(v))
                if cat is not None and code is not None:
                    out |= cat[: self.n_rows] == code
                key = _cat_key(v)
            else:
                if num is not None:
                    out |= num[: self.n_rows] == float(v)
                key = ("n", float(v))
            rows = multi.get(key)
            if rows:
                out[np.fromiter(rows, np.int64, len(rows))] = True
        return out

    def contains(self, field: str, value) -> np.ndarray:
        """Rows whose string value at `field` holds `value` as a substring, or whose list there holds it: the
        field's vocabulary is scanned (one test per distinct string, not per row)."""
        out = np.zeros(self.n_rows, bool)
        cat = self._cat.get(field)
        if isinstance(value, str) and cat is not None:
            with self._lock:  # a writer may add to the vocabulary meanwhile
                vocab = list(self._vocab.get(field, {}).items())
            codes = [code for (kind, v), code in vocab if kind == "s" and value in v]
            if codes:
                out |= np.isin(cat[: self.n_rows], codes)
        key = _cat_key(value) if isinstance(value, (bool, str)) else ("n", float(value))
        rows = self._multi.get(field, {}).get(key)
        if rows:
            out[np.fromiter(rows, np.int64, len(rows))] = True
        return out

    def compare(self, field: str, op, value: float) -> np.ndarray:
        col = self._num.get(field)
        if col is None:
            return np.zeros(self.n_rows, bool)
        with np.errstate(invalid="ignore"):
            return op(col[: self.n_rows], value)

    def exists(self, field: str) -> np.ndarray:
        out = np.zeros(self.n_rows, bool)
        if field in self._num:
            out |= ~np.isnan(self._num[field][: self.n_rows])
        if field in self._cat:
            out |= self._cat[field][: self.n_rows] >= 0
        for rows in self._multi.get(field, {}).values():
            out[np.fromiter(rows, np.int64, len(rows))] = True
        return out

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._num.values()) + sum(a.nbytes for a in self._cat.values())
