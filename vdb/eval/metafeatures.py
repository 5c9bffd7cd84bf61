"""Meta-features of a dataset: cheap statistics, measured on samples with a fixed seed, that predict which metric
and which kind of index will serve the task (Iceberg's decision tree) and how vdb's index will behave.

Metric-independent (on the raw vectors, as the embedding model emitted them):
  DBI_E, DBI_C   Davies-Bouldin index of a k-means clustering, under Euclidean distance (plain k-means) and
                 under cosine distance (spherical k-means on unit vectors):
                 DBI = (1/C) Σ_i max_{j≠i} (S_i + S_j) / M_ij, S_i = mean distance of cluster i's members to its
                 centre, M_ij = distance between centres. Lower = more compact, better separated clusters.
  CV             coefficient of variation of the norms, std(|x|) / mean(|x|) (0 for unit vectors).
  centroid shift |mean(Q) - mean(B)| / mean |b - mean(B)|.

In the vector space the chosen metric searches (the unit sphere for cosine, raw vectors for l2 and ip), with
Euclidean distances, for a query sample Q' and a base sample B':
  RA             relative angle: mean angle, in degrees, between a query and each of its k nearest base
                 vectors, arccos(q·x / |q||x|). Our reading of Iceberg's RA (its paper gives the threshold,
                 RA >= 60, not an estimator we could read): large angles mean neighbourhoods are diffuse.
  RC             relative contrast (He, Kumar & Chang, ICML 2012): E[D_mean] / E[D_nn], D_mean = a query's mean
                 distance to random base vectors, D_nn = its distance to the nearest one. Near 1 = hard.
  LID            local intrinsic dimensionality, MLE (Levina-Bickel / Amsaleg et al. 2015) over the k_lid
                 nearest distances r_1..r_k: LID = -1 / ((1/k) Σ_i ln(r_i / r_k)), averaged over queries.
  hubness        skewness of the k-occurrence N_k(x) (how often x is among the k-NN of other points of B').
  cluster skew   CV and max/mean of k-means cluster sizes: predicts how uneven vdb's postings will be.
  label purity   mean fraction of a base point's k nearest (other) base vectors that share its label.
  query shift    mean NN distance of queries to the base / mean NN distance of base points to the rest of
                 the base (~1 when queries come from the base distribution; > 1 when they lie off it).
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import faiss
import numpy as np
from scipy.stats import skew

log = logging.getLogger(__name__)
KMEANS_ITERS = 20
KMEANS_REDO = 3


@dataclass(frozen=True)
class MetaFeatures:
    dbi_euclidean: float
    dbi_cosine: float
    cv_norms: float
    relative_angle: float
    relative_contrast: float
    lid: float
    hubness: float
    cluster_size_cv: float
    cluster_size_max_ratio: float
    label_purity: float | None
    query_shift: float
    centroid_shift: float
    space: str
    k: int
    clusters: int
    n_base_sample: int
    n_query_sample: int
    seed: int

    def as_dict(self) -> dict:
        return {key: (round(v, 5) if isinstance(v, float) else v) for key, v in asdict(self).items()}


def compute_metafeatures(base: np.ndarray, queries: np.ndarray, *, metric: str = "l2",
                         base_labels: np.ndarray | None = None, k: int = 10, lid_k: int = 20,
                         clusters: int = 32, base_sample: int = 4000, query_sample: int = 1000,
                         seed: int = 0) -> MetaFeatures:
    """All meta-features of (raw) base and query vectors; `metric` picks the space of the neighbourhood ones."""
    rng = np.random.default_rng(seed)
    bs = _sample_rows(len(base), base_sample, rng)
    qs = _sample_rows(len(queries), query_sample, rng)
    b_raw, q_raw = _f32(base[bs]), _f32(queries[qs])
    clusters = max(2, min(clusters, len(bs) // 4))
    dbi_e, dbi_c, sizes = _clusterings(b_raw, clusters, seed, spherical_sizes=(metric == "cosine"))
    space_base, space_q, space_bs = (_space(_f32(base), metric), _space(q_raw, metric), _space(b_raw, metric))
    search = faiss.IndexFlatL2(space_base.shape[1])
    search.add(space_base)
    q_d, q_i = _knn(search, space_q, max(k, lid_k))
    b_d, b_i = _drop_self(*_knn(search, space_bs, k + 1), bs)
    return MetaFeatures(
        dbi_euclidean=dbi_e, dbi_cosine=dbi_c, cv_norms=norm_cv(base),
        relative_angle=relative_angle(space_q, space_base, q_i[:, :k]),
        relative_contrast=relative_contrast(q_d[:, 0], mean_distance(space_q, space_base[bs])),
        lid=lid_mle(q_d[:, :lid_k]), hubness=hubness(space_bs, k),
        cluster_size_cv=float(sizes.std() / sizes.mean()), cluster_size_max_ratio=float(sizes.max() / sizes.mean()),
        label_purity=None if base_labels is None else label_purity(b_i, base_labels[bs], base_labels),
        query_shift=_ratio(q_d[:, 0].mean(), b_d[:, 0].mean()), centroid_shift=centroid_shift(base, queries),
        space="unit sphere" if metric == "cosine" else "raw", k=k, clusters=clusters,
        n_base_sample=len(bs), n_query_sample=len(qs), seed=seed)


# -- metric-independent ---------------------------------------------------------------------------------------
def norm_cv(x: np.ndarray) -> float:
    norms = np.linalg.norm(np.asarray(x, np.float64), axis=1)
    return _ratio(norms.std(), norms.mean())


def davies_bouldin(x: np.ndarray, assign: np.ndarray, centers: np.ndarray, distance: str = "euclidean") -> float:
    """DBI of a clustering (see the module docstring); empty clusters are ignored."""
    used = np.unique(assign)
    if len(used) < 2:
        return float("nan")
    cen = centers[used]
    remap = np.searchsorted(used, assign)
    spread = np.bincount(remap, weights=_dist(x, cen[remap], distance), minlength=len(used))
    spread /= np.bincount(remap, minlength=len(used))
    sep = _pairwise(cen, distance)
    np.fill_diagonal(sep, np.inf)
    ratio = (spread[:, None] + spread[None, :]) / np.maximum(sep, 1e-30)
    return float(ratio.max(axis=1).mean())


def kmeans(x: np.ndarray, n_clusters: int, *, spherical: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(assignment [n], centres [c, d]) by faiss k-means (spherical: unit vectors and unit centres) from
    k-means++ seeds, the best of KMEANS_REDO restarts (faiss's own random-point seeding often merges
    well-separated clusters, and a single bad optimum skews DBI)."""
    x = np.ascontiguousarray(x, np.float32)
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(KMEANS_REDO):
        km = faiss.Kmeans(x.shape[1], n_clusters, niter=KMEANS_ITERS, seed=int(rng.integers(1 << 30)),
                          spherical=spherical, verbose=False, max_points_per_centroid=1 << 20,
                          min_points_per_centroid=1)
        km.train(x, init_centroids=kmeans_pp_seeds(x, n_clusters, rng))
        if best is None or km.obj[-1] < best.obj[-1]:
            best = km
    _, assign = best.index.search(x, 1)
    return assign[:, 0].astype(np.int64), best.centroids.copy()


def kmeans_pp_seeds(x: np.ndarray, n_clusters: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: each next seed drawn with probability proportional to its squared distance to the
    nearest seed so far."""
    seeds = [x[rng.integers(len(x))]]
    d2 = ((x - seeds[0]) ** 2).sum(axis=1).astype(np.float64)
    for _ in range(1, n_clusters):
        total = d2.sum()
        seeds.append(x[rng.choice(len(x), p=d2 / total) if total > 0 else rng.integers(len(x))])
        d2 = np.minimum(d2, ((x - seeds[-1]) ** 2).sum(axis=1))
    return np.ascontiguousarray(np.stack(seeds), np.float32)


def _clusterings(b: np.ndarray, clusters: int, seed: int, *, spherical_sizes: bool):
    a_e, c_e = kmeans(b, clusters, spherical=False, seed=seed)
    unit = _unit(b)
    a_c, c_c = kmeans(unit, clusters, spherical=True, seed=seed)
    sizes = np.bincount(a_c if spherical_sizes else a_e, minlength=clusters).astype(np.float64)
    return davies_bouldin(b, a_e, c_e, "euclidean"), davies_bouldin(unit, a_c, c_c, "cosine"), sizes


def centroid_shift(base: np.ndarray, queries: np.ndarray) -> float:
    mb, mq = np.asarray(base, np.float64).mean(0), np.asarray(queries, np.float64).mean(0)
    spread = np.linalg.norm(np.asarray(base[: 20_000], np.float64) - mb, axis=1).mean()
    return _ratio(np.linalg.norm(mq - mb), spread)


# -- neighbourhood features ----------------------------------------------------------------------------------
def relative_angle(q: np.ndarray, base: np.ndarray, nn_ids: np.ndarray) -> float:
    x = base[nn_ids]
    cos = np.einsum("qkd,qd->qk", _unit(x.reshape(-1, x.shape[-1])).reshape(x.shape), _unit(q))
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))).mean())


def relative_contrast(nn_dist: np.ndarray, mean_dist: np.ndarray) -> float:
    return _ratio(np.mean(mean_dist), np.mean(nn_dist))


def mean_distance(q: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Each query's mean Euclidean distance to `points` (a random base sample)."""
    sq = (q * q).sum(1)[:, None] - 2.0 * q @ points.T + (points * points).sum(1)[None, :]
    return np.sqrt(np.maximum(sq, 0.0)).mean(axis=1)


def lid_mle(dists: np.ndarray) -> float:
    """Mean MLE of the local intrinsic dimension from ascending neighbour distances [m, k]; zero distances
    (duplicates) are left out, and rows with fewer than 2 positive distances are skipped."""
    d = np.asarray(dists, np.float64)
    rk = d[:, -1:]
    pos = (d > 0) & (rk > 0)
    logs = np.where(pos, np.log(np.where(pos, d, 1.0) / np.where(rk > 0, rk, 1.0)), 0.0)
    count = pos.sum(axis=1)
    mean_log = logs.sum(axis=1) / np.maximum(count, 1)
    ok = (count >= 2) & (mean_log < 0)
    return float((-1.0 / mean_log[ok]).mean()) if ok.any() else float("nan")


def hubness(points: np.ndarray, k: int) -> float:
    """Skewness of the k-occurrence distribution within `points` (0 when every point occurs equally often)."""
    index = faiss.IndexFlatL2(points.shape[1])
    index.add(points)
    _, ids = _drop_self(*_knn(index, points, k + 1), np.arange(len(points)))
    occ = np.bincount(ids.ravel(), minlength=len(points)).astype(np.float64)
    return float(skew(occ)) if occ.std() > 1e-12 else 0.0


def label_purity(nn_ids: np.ndarray, sample_labels: np.ndarray, base_labels: np.ndarray) -> float:
    return float((base_labels[nn_ids] == np.asarray(sample_labels)[:, None]).mean())


# -- helpers ---------------------------------------------------------------------------------------------------
def _knn(index: faiss.Index, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(plain Euclidean distances, ids), ascending."""
    d, i = index.search(np.ascontiguousarray(q, np.float32), min(k, index.ntotal))
    return np.sqrt(np.maximum(d, 0.0)), i


def _drop_self(d: np.ndarray, i: np.ndarray, self_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's own id (or, if a duplicate displaced it, the last column)."""
    is_self = i == np.asarray(self_ids)[:, None]
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), i.shape[1] - 1)
    keep = np.ones(i.shape, bool)
    keep[np.arange(len(i)), drop] = False
    shape = (len(i), i.shape[1] - 1)
    return d[keep].reshape(shape), i[keep].reshape(shape)


def _sample_rows(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(n) if n <= size else np.sort(rng.choice(n, size, replace=False))


def _space(x: np.ndarray, metric: str) -> np.ndarray:
    return _unit(x) if metric == "cosine" else np.ascontiguousarray(x, np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return np.ascontiguousarray(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30))


def _f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, np.float32)


def _dist(a: np.ndarray, b: np.ndarray, distance: str) -> np.ndarray:
    if distance == "euclidean":
        return np.linalg.norm(a - b, axis=1)
    return 1.0 - (_unit(a) * _unit(b)).sum(axis=1)


def _pairwise(c: np.ndarray, distance: str) -> np.ndarray:
    if distance == "euclidean":
        return np.linalg.norm(c[:, None, :] - c[None, :, :], axis=2)
    u = _unit(c)
    return 1.0 - u @ u.T


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b > 0 else float("nan")
