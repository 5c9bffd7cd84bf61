"""Payload filters: a small JSON query language, validated once, evaluated as numpy masks.

    {"genre": "jazz"}                              equality (on a list field: the list contains the value)
    {"year": {"$gte": 1990, "$lt": 2000}}          numeric ranges: $gt $gte $lt $lte
    {"tag": {"$in": ["a", "b"]}}                   membership; also $nin, $ne, $eq
    {"price": {"$exists": true}}
    {"title": {"$contains": "jazz"}}               a string value holding this substring, or a list holding it
    {"$and": [f, ...]}, {"$or": [f, ...]}, {"$not": f}
Several keys in one object are ANDed. Nested payload objects are addressed with dotted paths ("a.b").
Values are str, int, float or bool (bool and numbers never equal each other).
"""
from __future__ import annotations

import math
import reprlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from vdb.errors import InvalidArgumentError
from vdb.query.payloads import SCALARS

_RANGE = {"$gt": np.greater, "$gte": np.greater_equal, "$lt": np.less, "$lte": np.less_equal}
MAX_DEPTH = 16
MAX_TERMS = 1024     # conditions of one filter: each costs a pass over the rows (an $in list is one)
MAX_CONTAINS = 32    # $contains conditions of one filter: each also scans the field's vocabulary


class FilterError(InvalidArgumentError):
    pass


class Node:
    def mask(self, cols) -> np.ndarray:
        raise NotImplementedError

    def matches(self, payload: dict | None) -> bool:
        raise NotImplementedError


@dataclass(frozen=True)
class Eq(Node):
    field: str
    values: tuple          # equal to any of these

    def mask(self, cols):
        return cols.equals(self.field, self.values)

    def matches(self, payload):
        v = lookup(payload, self.field)
        items = v if isinstance(v, list) else [v]
        return any(_same(a, b) for a in items for b in self.values)


@dataclass(frozen=True)
class Range(Node):
    field: str
    op: str
    value: float

    def mask(self, cols):
        return cols.compare(self.field, _RANGE[self.op], self.value)

    def matches(self, payload):
        v = lookup(payload, self.field)
        return _is_number(v) and bool(_RANGE[self.op](v, self.value))


@dataclass(frozen=True)
class Contains(Node):
    """LlamaIndex's CONTAINS (`value in metadata_value`): a substring of a string value, an item of a list."""
    field: str
    value: Any

    def mask(self, cols):
        return cols.contains(self.field, self.value)

    def matches(self, payload):
        v = lookup(payload, self.field)
        if isinstance(v, list):
            return any(_same(item, self.value) for item in v)
        return isinstance(v, str) and isinstance(self.value, str) and self.value in v


@dataclass(frozen=True)
class Exists(Node):
    field: str

    def mask(self, cols):
        return cols.exists(self.field)

    def matches(self, payload):
        """A value, or a list holding one (an empty list, or one of objects only, holds no value to match)."""
        v = lookup(payload, self.field)
        if isinstance(v, list):
            return any(isinstance(item, SCALARS) for item in v)
        return v is not None


@dataclass(frozen=True)
class And(Node):
    parts: tuple

    def mask(self, cols):
        out = np.ones(cols.n_rows, bool)
        for p in self.parts:
            out &= p.mask(cols)
        return out

    def matches(self, payload):
        return all(p.matches(payload) for p in self.parts)


@dataclass(frozen=True)
class Or(Node):
    parts: tuple

    def mask(self, cols):
        out = np.zeros(cols.n_rows, bool)
        for p in self.parts:
            out |= p.mask(cols)
        return out

    def matches(self, payload):
        return any(p.matches(payload) for p in self.parts)


@dataclass(frozen=True)
class Not(Node):
    part: Node

    def mask(self, cols):
        return ~self.part.mask(cols)

    def matches(self, payload):
        return not self.part.matches(payload)


def compile_filter(spec: Any, path: str = "filter", depth: int = 0) -> Node:
    """Validate a filter and turn it into a tree; errors name the offending part. A filter's cost is bounded:
    at most MAX_TERMS conditions, of which MAX_CONTAINS $contains (a few kilobytes of filter must not hold a
    worker for minutes), counted while it compiles (a filter of a million conditions is refused at the
    1,025th, not after all of them are built)."""
    return _compile(spec, path, depth, _Budget(path))


class _Budget:
    """The conditions a filter may still hold, charged by each condition as it is compiled."""

    def __init__(self, path: str):
        self.path, self.terms, self.contains = path, 0, 0

    def charge(self, node: Node) -> Node:
        for leaf in _leaves(node):
            self.terms += 1
            self.contains += isinstance(leaf, Contains)
        if self.terms > MAX_TERMS:
            raise FilterError(f"{self.path}: more than {MAX_TERMS} conditions; at most {MAX_TERMS} in one filter")
        if self.contains > MAX_CONTAINS:
            raise FilterError(f"{self.path}: more than {MAX_CONTAINS} $contains conditions; at most "
                              f"{MAX_CONTAINS} in one filter")
        return node


def _leaves(node: Node):
    if isinstance(node, (And, Or)):
        for part in node.parts:
            yield from _leaves(part)
    elif isinstance(node, Not):
        yield from _leaves(node.part)
    else:
        yield node


def _compile(spec: Any, path: str, depth: int, budget: _Budget) -> Node:
    if depth > MAX_DEPTH:
        raise FilterError(f"{path}: filter nested deeper than {MAX_DEPTH} levels")
    if not isinstance(spec, dict) or not spec:
        raise FilterError(f"{path}: a filter is a non-empty JSON object, got {reprlib.repr(spec)}")
    parts = []
    for key, value in spec.items():
        where = f"{path}.{key}"
        if key in ("$and", "$or"):
            if not isinstance(value, list) or not value:
                raise FilterError(f"{where}: expects a non-empty list of filters")
            sub = tuple(_compile(v, f"{where}[{i}]", depth + 1, budget) for i, v in enumerate(value))
            parts.append(And(sub) if key == "$and" else Or(sub))
        elif key == "$not":
            parts.append(Not(_compile(value, where, depth + 1, budget)))
        elif key.startswith("$"):
            raise FilterError(f"{where}: unknown operator {key!r} (use $and, $or, $not at the top level)")
        else:
            _check_field(key, where)
            parts.append(budget.charge(_field_condition(key, value, where)))
    return parts[0] if len(parts) == 1 else And(tuple(parts))


def _field_condition(field: str, value: Any, where: str) -> Node:
    if not isinstance(value, dict):
        return Eq(field, (_scalar(value, where),))
    if not value:
        raise FilterError(f"{where}: empty condition object")
    parts: list[Node] = []
    for op, arg in value.items():
        at = f"{where}.{op}"
        if op == "$eq":
            parts.append(Eq(field, (_scalar(arg, at),)))
        elif op == "$ne":
            parts.append(Not(Eq(field, (_scalar(arg, at),))))
        elif op in ("$in", "$nin"):
            if not isinstance(arg, list) or not arg:
                raise FilterError(f"{at}: expects a non-empty list of values")
            node = Eq(field, tuple(_scalar(a, at) for a in arg))
            parts.append(node if op == "$in" else Not(node))
        elif op in _RANGE:
            if not _is_number(arg):
                raise FilterError(f"{at}: expects a finite 64-bit number, got {_scalar_repr(arg)}")
            parts.append(Range(field, op, float(arg)))
        elif op == "$contains":
            parts.append(Contains(field, _scalar(arg, at)))
        elif op == "$exists":
            if not isinstance(arg, bool):
                raise FilterError(f"{at}: expects true or false")
            parts.append(Exists(field) if arg else Not(Exists(field)))
        else:
            raise FilterError(f"{at}: unknown operator; use $eq $ne $in $nin $gt $gte $lt $lte $contains $exists")
    return parts[0] if len(parts) == 1 else And(tuple(parts))


def _check_field(field: str, where: str) -> None:
    if not field or len(field) > 256 or any(not p for p in field.split(".")):
        raise FilterError(f"{where}: invalid field name {field!r}")


def _scalar(v: Any, where: str):
    if isinstance(v, (str, bool)) or _is_number(v):
        return v
    shown = repr(v) if len(repr(v)) <= 60 else repr(v)[:57] + "..."
    raise FilterError(f"{where}: values must be strings, finite 64-bit numbers or booleans, got {shown}")


def _is_number(v) -> bool:
    """A finite float or a 64-bit integer (what payloads may hold; a bigger int cannot even become a float)."""
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return -(1 << 63) <= v < (1 << 63)
    return isinstance(v, float) and math.isfinite(v)


def _same(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a) and _is_number(b):
        return float(a) == float(b)
    return isinstance(a, str) and isinstance(b, str) and a == b


def _scalar_repr(v) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def lookup(payload: dict | None, field: str):
    v: Any = payload
    for part in field.split("."):
        if not isinstance(v, dict):
            return None
        v = v.get(part)
    return v
