"""Deterministic clustered synthetic vectors: the embedded default dataset of the demo, tests and benchmarks.

A mixture of anisotropic Gaussians, chosen to look like real embeddings rather than uniform noise:
  * cluster sizes are Zipf-skewed (p_i ~ 1 / (i + 5)^0.9), so some regions are far denser than others
    (this is what unbalances naive k-means postings);
  * cluster centres lie near a 24-dimensional subspace plus small full-rank noise, so the data has a low
    intrinsic dimension, as learned embeddings do;
  * each cluster is stretched along its own random rotation with a decaying spectrum (lambda_j ~ j^-1.2)
    and a per-cluster scale drawn log-normally, so clusters differ in shape and spread and overlap.
Everything is a pure function of (dim, n_clusters, seed): the same call gives the same bytes on every machine
with the same numpy.
"""
from __future__ import annotations

import numpy as np

N_ROTATIONS = 64


class ClusteredMixture:
    def __init__(self, dim: int = 128, n_clusters: int = 1000, seed: int = 0, spread: float = 0.6):
        self.dim, self.n_clusters, self.seed = dim, n_clusters, seed
        rng = np.random.default_rng([seed, 1])
        w = 1.0 / (np.arange(n_clusters) + 5.0) ** 0.9
        self.weights = rng.permutation(w / w.sum())
        sub = min(24, dim)
        basis = np.linalg.qr(rng.standard_normal((dim, sub)))[0]
        self.centers = (rng.standard_normal((n_clusters, sub)) * 10.0) @ basis.T
        self.centers += rng.standard_normal((n_clusters, dim)) * 1.0
        self.scales = np.exp(rng.normal(0.0, 0.35, n_clusters)) * spread * 10.0 / np.sqrt(dim) * 3
        spectrum = np.arange(1, dim + 1, dtype=np.float64) ** -1.2
        self.spectrum = np.sqrt(spectrum / spectrum.mean())
        self.rotations = np.stack([np.linalg.qr(rng.standard_normal((dim, dim)))[0] for _ in range(N_ROTATIONS)])
        self.offset = 0.0

    def sample(self, n: int, seed: int) -> np.ndarray:
        """n points (float32 [n, dim]); `seed` picks the stream (base and queries use different seeds)."""
        rng = np.random.default_rng([self.seed, 2, seed])
        labels = rng.choice(self.n_clusters, size=n, p=self.weights)
        out = np.empty((n, self.dim), np.float32)
        z = rng.standard_normal((n, self.dim))
        order = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[order], np.arange(self.n_clusters + 1))
        for c in range(self.n_clusters):
            rows = order[bounds[c]: bounds[c + 1]]
            if len(rows) == 0:
                continue
            rot = self.rotations[c % N_ROTATIONS]
            out[rows] = (z[rows] * (self.spectrum * self.scales[c])) @ rot.T + self.centers[c]
        return out

    def labels_for(self, x: np.ndarray) -> np.ndarray:
        """Nearest centre of each point (a cheap "class" label for tests)."""
        d = (x * x).sum(1)[:, None] - 2 * x @ self.centers.T + (self.centers ** 2).sum(1)[None, :]
        return d.argmin(1)


def default_clusters(n: int) -> int:
    return max(8, min(1000, n // 1000))


def clustered(n: int, dim: int = 128, *, seed: int = 0, n_clusters: int | None = None) -> np.ndarray:
    """n base vectors of the default dataset (mixture of `n_clusters`, by default about n / 1000)."""
    return ClusteredMixture(dim, n_clusters or default_clusters(n), seed).sample(n, 1)


def clustered_queries(nq: int, n: int, dim: int = 128, *, seed: int = 0, n_clusters: int | None = None) -> np.ndarray:
    """nq queries from the *same* mixture as `clustered(n, dim, seed=seed, n_clusters=n_clusters)` (an independent
    stream). The mixture depends on the base size n, not on nq: always pass the base's n."""
    return ClusteredMixture(dim, n_clusters or default_clusters(n), seed).sample(nq, 2)
