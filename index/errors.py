"""Typed errors of the index layer (bad input, bad parameters)."""
from __future__ import annotations


class VectorIndexError(Exception):
    """Base class for index errors."""


class InvalidVectorsError(VectorIndexError, ValueError):
    """Vectors of the wrong shape or dimension, empty, NaN/Inf, or zero where a direction is needed."""


class InvalidParameterError(VectorIndexError, ValueError):
    """A build or search parameter out of range."""
