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


SCALARS = (str, int, float, bool)  # what a list item must be to be indexed (and to make the list a value)


def _cat_key(v):
    return ("b", v) if isinstance(v, bool) else ("s", v)


def _key(v):
    """The key of a value in the vocabulary and the list sets."""
    return _cat_key(v) if isinstance(v, (bool, str)) else ("n", float(v))


class PayloadIndex:
    def __init__(self, n_rows: int = 0):
        self.n_rows = n_rows
        self._cap = max(1024, n_rows)
        self._num: dict[str, np.ndarray] = {}
        self._cat: dict[str, np.ndarray] = {}
        self._vocab: dict[str, dict] = {}
        self._multi: dict[str, dict] = {}
        self._listed: dict[str, np.ndarray] = {}  # bool per row: the field holds a list there ($exists)
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
            for d, fill in ((self._num, np.nan), (self._cat, -1), (self._listed, False)):
                for f, a in d.items():
                    b = np.full(self._cap, fill, a.dtype)
                    b[: len(a)] = a
                    d[f] = b
        self.n_rows = max(self.n_rows, n_rows)

    def _put(self, field: str, row: int, value) -> None:
        if isinstance(value, list):
            m = self._multi.setdefault(field, {})
            for item in value:
                if isinstance(item, SCALARS):
                    m.setdefault(_key(item), set()).add(row)
                    listed = self._listed.get(field)
                    if listed is None:
                        listed = self._listed[field] = np.zeros(self._cap, bool)
                    listed[row] = True  # $exists: the list holds a value
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

    # -- reads: a filter evaluates against one view ------------------------------------------------------
    def view(self, n_rows: int | None = None) -> "PayloadView":
        """The index as of now, for one filter's evaluation: every mask it gives has the same length, whatever
        writers add meanwhile (masks of different lengths did not combine: an InternalError under writes)."""
        with self._lock:
            return PayloadView(self, self.n_rows if n_rows is None else min(n_rows, self.n_rows))

    def column_refs(self, field: str, keys, copy, *, vocabulary: bool = False):
        """(numbers, categories, lists, {category key: code} of `keys` (the whole vocabulary if asked), {list key:
        row array} of the keys in `copy`) of `field`, read under the lock writers wait for: the arrays are
        replaced when they grow and keep every row below the n_rows of any earlier view; the vocabulary and the
        list sets change in place, so what is taken of them is copied, and only that (PayloadView copies each
        list key once)."""
        with self._lock:
            multi = self._multi.get(field, {})
            rows = {key: np.fromiter(multi[key], np.int64, len(multi[key])) for key in copy if key in multi}
            vocab = self._vocab.get(field, {})
            codes = dict(vocab) if vocabulary else {key: vocab[key] for key in keys if key in vocab}
            return self._num.get(field), self._cat.get(field), self._listed.get(field), codes, rows

    def nbytes(self) -> int:
        return sum(a.nbytes for d in (self._num, self._cat, self._listed) for a in d.values())


class PayloadView:
    """What filters.Node.mask reads: the payload index at `n_rows` rows (PayloadIndex.view). A list value's rows
    are copied once per view, however many conditions of the filter name it."""

    def __init__(self, index: PayloadIndex, n_rows: int):
        self._index, self.n_rows = index, n_rows
        self._copied: dict[tuple, np.ndarray] = {}  # (field, list key) -> its rows, as copied for this view

    def _refs(self, field: str, keys, *, vocabulary: bool = False):
        missing = [key for key in keys if (field, key) not in self._copied]
        num, cat, listed, codes, rows = self._index.column_refs(field, keys, missing, vocabulary=vocabulary)
        for key in missing:
            self._copied[(field, key)] = rows.get(key)
        return num, cat, listed, codes, {key: self._copied[(field, key)] for key in keys}

    def _rows_mask(self, rows: np.ndarray | None, out: np.ndarray) -> np.ndarray:
        if rows is not None and len(rows):
            out[rows[rows < self.n_rows]] = True
        return out

    def equals(self, field: str, values: tuple) -> np.ndarray:
        n = self.n_rows
        keys = list(dict.fromkeys(_key(v) for v in values))  # a value given twice is looked up once
        num, cat, _, vocab, multi = self._refs(field, keys)
        out = np.zeros(n, bool)
        codes = [vocab[key] for key in keys if key[0] != "n" and key in vocab]
        numbers = [key[1] for key in keys if key[0] == "n"]
        if cat is not None and codes:  # one pass over the rows for a whole $in list
            out |= cat[:n] == codes[0] if len(codes) == 1 else np.isin(cat[:n], codes)
        if num is not None and numbers:
            out |= num[:n] == numbers[0] if len(numbers) == 1 else np.isin(num[:n], numbers)
        for key in keys:
            self._rows_mask(multi[key], out)
        return out

    def contains(self, field: str, value) -> np.ndarray:
        """Rows whose string value at `field` holds `value` as a substring, or whose list there holds it: the
        field's vocabulary is scanned (one test per distinct string, not per row)."""
        n = self.n_rows
        key = _key(value)
        _, cat, _, vocab, multi = self._refs(field, [key], vocabulary=isinstance(value, str))
        out = np.zeros(n, bool)
        if isinstance(value, str) and cat is not None:
            codes = [code for (kind, v), code in vocab.items() if kind == "s" and value in v]
            if codes:
                out |= np.isin(cat[:n], codes)
        return self._rows_mask(multi[key], out)

    def compare(self, field: str, op, value: float) -> np.ndarray:
        num = self._refs(field, [])[0]
        if num is None:
            return np.zeros(self.n_rows, bool)
        with np.errstate(invalid="ignore"):
            return op(num[: self.n_rows], value)

    def exists(self, field: str) -> np.ndarray:
        n = self.n_rows
        num, cat, listed, _, _ = self._refs(field, [])
        out = np.zeros(n, bool)
        if num is not None:
            out |= ~np.isnan(num[:n])
        if cat is not None:
            out |= cat[:n] >= 0
        if listed is not None:
            out |= listed[:n]
        return out
