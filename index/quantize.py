"""INT8 scalar quantization.

`Int8Quantizer` (the one the index uses) is per dimension and affine: dimension j maps [lo_j, lo_j + 255 s_j]
onto the codes -128..127, so x_j ~ lo_j + s_j (c_j + 128) and |x_j - x^_j| <= s_j / 2 inside the trained range.
Distances are computed asymmetrically (float query, int8 codes):
    l2:  |q - x^|^2 = sum_j s_j^2 (u_j - c_j)^2      with u_j = (q_j - lo_j) / s_j - 128
    ip:  q . x^     = const + sum_j (q_j s_j) c_j    with const = sum_j q_j (lo_j + 128 s_j)

`PerVectorInt8` (Aeon's symmetric per-vector scale, x ~ (max|x| / 127) c) is kept for comparison: the
benchmark measures which one keeps more recall (docs/benchmarks.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from storage.posting_format import code_bytes


@dataclass(frozen=True)
class Int8Quantizer:
    lo: np.ndarray     # float32 [dim]
    scale: np.ndarray  # float32 [dim], > 0

    @classmethod
    def train(cls, sample: np.ndarray, margin: float = 0.02) -> "Int8Quantizer":
        """Fit the range of each dimension on a sample, widened by `margin` so later inserts rarely clip."""
        lo, hi = sample.min(axis=0).astype(np.float64), sample.max(axis=0).astype(np.float64)
        pad = (hi - lo) * margin
        lo, hi = lo - pad, hi + pad
        scale = np.maximum((hi - lo) / 255.0, 1e-12)
        return cls(lo.astype(np.float32), scale.astype(np.float32))

    @property
    def dim(self) -> int:
        return len(self.lo)

    def encode(self, x: np.ndarray) -> np.ndarray:
        """int8 codes [n, code_bytes(dim)] (padding bytes are zero)."""
        c = np.rint((x - self.lo) / self.scale) - 128.0
        out = np.zeros((len(x), code_bytes(self.dim)), np.int8)
        out[:, : self.dim] = np.clip(c, -128, 127)
        return out

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return (self.lo + self.scale * (codes[:, : self.dim].astype(np.float32) + 128.0)).astype(np.float32)

    def query_l2(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(u, w) for the l2 kernel: d = sum_j w_j (u_j - c_j)^2."""
        u = ((q - self.lo) / self.scale - 128.0).astype(np.float32)
        return u, (self.scale.astype(np.float32) ** 2)

    def query_ip(self, q: np.ndarray) -> tuple[np.ndarray, np.float32]:
        """(v, const) for the ip kernel: q.x^ = const + sum_j v_j c_j."""
        v = (q * self.scale).astype(np.float32)
        const = np.float32(np.dot(q.astype(np.float64), (self.lo + 128.0 * self.scale).astype(np.float64)))
        return v, const

    def to_array(self) -> np.ndarray:
        return np.stack([self.lo, self.scale]).astype(np.float32)

    @classmethod
    def from_array(cls, a: np.ndarray) -> "Int8Quantizer":
        return cls(a[0].astype(np.float32), a[1].astype(np.float32))


def kernel_queries(qz: Int8Quantizer | None, qs: np.ndarray, is_l2: bool):
    """(QA [nq, dim], qw [dim], QC [nq]): the queries as the scan kernels take them (index/kernels/search.py):
    l2 uses (u, w) of query_l2, ip uses v = q * scale and the per-query constant of query_ip."""
    dim = qs.shape[1]
    if qz is None:  # no postings yet: the kernel never reads these
        return qs, np.zeros(dim, np.float32), np.zeros(len(qs), np.float32)
    if is_l2:
        u, w = qz.query_l2(qs)
        return u, w, np.zeros(len(qs), np.float32)
    v = (qs * qz.scale).astype(np.float32)
    const = (qs.astype(np.float64) @ (qz.lo + 128.0 * qz.scale).astype(np.float64)).astype(np.float32)
    return v, np.zeros(dim, np.float32), const


@dataclass(frozen=True)
class PerVectorInt8:
    """Symmetric per-vector scale (for measurement only; needs a float per record)."""

    @staticmethod
    def encode(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scale = np.maximum(np.abs(x).max(axis=1), 1e-12) / 127.0
        return np.clip(np.rint(x / scale[:, None]), -127, 127).astype(np.int8), scale.astype(np.float32)

    @staticmethod
    def decode(codes: np.ndarray, scale: np.ndarray) -> np.ndarray:
        return (codes.astype(np.float32) * scale[:, None]).astype(np.float32)
