"""Vectors and math: clustering, assignment, quantization, search. Reaches storage through storage.IndexDir."""
from index.build import build_index
from index.errors import InvalidParameterError, InvalidVectorsError, VectorIndexError
from index.flat import FlatIndex, recall_at_k
from index.spann import SearchStats, SpannIndex
from index.types import BuildParams, Metric, SearchParams

__all__ = ["BuildParams", "FlatIndex", "InvalidParameterError", "InvalidVectorsError", "Metric", "SearchParams",
           "SearchStats", "SpannIndex", "VectorIndexError", "build_index", "recall_at_k"]
