"""What the evaluator evaluates: `EvalDataset` (vectors + the task's labels/targets) and `load_dataset(spec)`.

A dataset is the embedding model's output plus what the downstream task knows about it:
  * base and query vectors (float32). `base_norms` / `query_norms`, when given, are the norms the vectors had
    before they were normalised: `raw_base()` = `base * base_norms[:, None]` is what the model emitted, and it is
    what the indexes are built on (so a metric choice is tested against the real model output);
  * optional class labels (`base_labels`, `query_labels`) and extra label sets (e.g. kjv's sections);
  * optional `query_target` (one relevant base id per query, -1 for none) and `qrels` (a set per query);
  * its natural metric (what the embedding model was trained for) and a description.

Specs `load_dataset` accepts: a folder in the `../shared/data` layout (`base.npy`, `query.npy`, ...), an
ann-benchmarks `.hdf5`, Iceberg `.bin` files (a folder, one base file, or "BASE.bin,QUERY.bin"), and the named
built-ins "synthetic" / "synthetic:n=2000,nq=200,dim=16,clusters=20,spread=3,seed=0".
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Mapping

import numpy as np

from vdb.eval.errors import EvalDatasetError

log = logging.getLogger(__name__)
METRICS = ("l2", "ip", "cosine")


@dataclass(frozen=True, eq=False)
class EvalDataset:
    name: str
    base: np.ndarray
    queries: np.ndarray
    base_labels: np.ndarray | None = None
    query_labels: np.ndarray | None = None
    extra_labels: Mapping[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    query_target: np.ndarray | None = None
    qrels: tuple[np.ndarray, ...] | None = None
    metric: str = "l2"
    description: str = ""
    base_norms: np.ndarray | None = None
    query_norms: np.ndarray | None = None
    neighbors: np.ndarray | None = None     # ground truth shipped with the file (ann-benchmarks), for a cross-check
    base_texts: tuple[str, ...] | None = None   # the text each base vector embeds (then BM25 and hybrid are judged)
    query_texts: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def n(self) -> int:
        return len(self.base)

    @property
    def nq(self) -> int:
        return len(self.queries)

    @property
    def dim(self) -> int:
        return int(self.base.shape[1])

    @property
    def has_labels(self) -> bool:
        return self.base_labels is not None and self.query_labels is not None

    @property
    def has_texts(self) -> bool:
        return self.base_texts is not None and self.query_texts is not None

    def raw_base(self) -> np.ndarray:
        """The vectors as the embedding model emitted them (before any normalisation the file applied)."""
        return _scaled(self.base, self.base_norms)

    def raw_queries(self) -> np.ndarray:
        return _scaled(self.queries, self.query_norms)

    def label_sets(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """name -> (base labels, query labels); the primary set is called "label"."""
        out = {"label": (self.base_labels, self.query_labels)} if self.has_labels else {}
        out.update(self.extra_labels)
        return out

    @cached_property
    def fingerprint(self) -> str:
        """Content hash of the raw vectors (what ground truth depends on)."""
        return array_fingerprint(self.raw_base(), self.raw_queries())

    def with_queries(self, n: int) -> "EvalDataset":
        """The first n queries (deterministic subset, for --quick)."""
        if n >= self.nq:
            return self
        cut = slice(0, n)
        return replace(
            self, queries=self.queries[cut],
            query_labels=None if self.query_labels is None else self.query_labels[cut],
            extra_labels={k: (b, q[cut]) for k, (b, q) in self.extra_labels.items()},
            query_target=None if self.query_target is None else self.query_target[cut],
            qrels=None if self.qrels is None else self.qrels[cut],
            query_norms=None if self.query_norms is None else self.query_norms[cut],
            neighbors=None if self.neighbors is None else self.neighbors[cut],
            query_texts=None if self.query_texts is None else self.query_texts[cut])

    def summary(self) -> dict:
        return {"name": self.name, "n": self.n, "nq": self.nq, "dim": self.dim, "metric": self.metric,
                "labels": sorted(self.label_sets()), "target": self.query_target is not None,
                "qrels": self.qrels is not None, "raw_norms": self.base_norms is not None, "texts": self.has_texts,
                "fingerprint": self.fingerprint, "description": self.description}


def array_fingerprint(*arrays: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=10)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def _scaled(x: np.ndarray, norms: np.ndarray | None) -> np.ndarray:
    if norms is None:
        return x
    return (x * norms.astype(np.float32)[:, None]).astype(np.float32)


def _validate(ds: EvalDataset) -> None:
    def bad(msg: str) -> None:
        raise EvalDatasetError(f"{ds.name}: {msg}")

    for name in ("base", "queries"):
        a = getattr(ds, name)
        if not isinstance(a, np.ndarray) or a.ndim != 2 or a.dtype != np.float32 or 0 in a.shape:
            bad(f"{name} must be a non-empty float32 [n, dim] array")
        if not np.isfinite(a).all():
            bad(f"{name} contain NaN or Inf")
    if ds.base.shape[1] != ds.queries.shape[1]:
        bad(f"base has dimension {ds.base.shape[1]} but queries have {ds.queries.shape[1]}")
    if ds.metric not in METRICS:
        bad(f"unknown metric {ds.metric!r}: use l2, ip or cosine")
    if (ds.base_labels is None) != (ds.query_labels is None):
        bad("base_labels and query_labels must be given together")
    sets = dict(ds.extra_labels)
    if ds.has_labels:
        sets["label"] = (ds.base_labels, ds.query_labels)
    for key, (bl, ql) in sets.items():
        _check_vector(bl, ds.n, f"base {key}s", bad, integer=True)
        _check_vector(ql, ds.nq, f"query {key}s", bad, integer=True)
    _check_vector(ds.base_norms, ds.n, "base_norms", bad)
    _check_vector(ds.query_norms, ds.nq, "query_norms", bad)
    _check_ids(ds, bad)
    if (ds.base_texts is None) != (ds.query_texts is None):
        bad("base_texts and query_texts must be given together")
    if ds.has_texts and (len(ds.base_texts) != ds.n or len(ds.query_texts) != ds.nq):
        bad(f"{len(ds.base_texts)} base texts / {len(ds.query_texts)} query texts for {ds.n} / {ds.nq} vectors")


def _check_vector(a, n: int, what: str, bad, *, integer: bool = False) -> None:
    if a is None:
        return
    if not isinstance(a, np.ndarray) or a.ndim != 1 or len(a) != n:
        bad(f"{what} must be a 1-D array of {n} values")
    if integer and not np.issubdtype(a.dtype, np.integer):
        bad(f"{what} must be integers, got {a.dtype}")


def _check_ids(ds: EvalDataset, bad) -> None:
    if ds.query_target is not None:
        _check_vector(ds.query_target, ds.nq, "query_target", bad, integer=True)
        if ds.query_target.max() >= ds.n or ds.query_target.min() < -1:
            bad(f"query_target holds ids outside [-1, {ds.n - 1}]")
    if ds.qrels is not None:
        if len(ds.qrels) != ds.nq:
            bad(f"qrels has {len(ds.qrels)} entries for {ds.nq} queries")
        flat = np.concatenate([np.asarray(r, np.int64) for r in ds.qrels] + [np.zeros(0, np.int64)])
        if len(flat) and (flat.min() < 0 or flat.max() >= ds.n):
            bad(f"qrels hold ids outside [0, {ds.n - 1}]")


# -- loading -------------------------------------------------------------------------------------------------
def load_dataset(spec: str, *, dim: int | None = None) -> EvalDataset:
    """Load a dataset from a spec (see the module docstring). `dim`: record dimension of Iceberg .bin files
    (inferred from the bytes when omitted)."""
    from vdb.eval import formats
    spec = str(spec)
    if spec == "synthetic" or spec.startswith("synthetic:"):
        return synthetic_dataset(**_synthetic_args(spec))
    if spec == "synthetic-text" or spec.startswith("synthetic-text:"):
        from vdb.eval.textdata import load_synthetic_text
        return load_synthetic_text(spec)
    if "," in spec:
        base, query = (Path(p) for p in spec.split(",", 1))
        return formats.read_iceberg_pair(base, query, dim=dim)
    path = Path(spec)
    if path.is_dir():
        return formats.read_folder(path, dim=dim)
    if not path.exists():
        raise EvalDatasetError(f"{path}: no such file or directory (and not a built-in dataset: try 'synthetic')")
    suffix = path.suffix.lower()
    if suffix in (".hdf5", ".h5"):
        return formats.read_ann_hdf5(path)
    if suffix == ".bin":
        return formats.read_iceberg_pair(path, formats.sibling_query_file(path), dim=dim)
    raise EvalDatasetError(f"{path}: unknown dataset type {suffix!r}; give a folder, an .hdf5 file, "
                           f"Iceberg .bin files or 'synthetic'")


SYNTHETIC_DEFAULTS = {"n": 20_000, "nq": 1_000, "dim": 64, "clusters": 100, "spread": 3.0, "seed": 0}


def _synthetic_args(spec: str) -> dict:
    args = dict(SYNTHETIC_DEFAULTS)
    if ":" not in spec:
        return args
    for item in filter(None, spec.split(":", 1)[1].split(",")):
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in args or not value:
            raise EvalDatasetError(f"synthetic: bad option {item!r}; known: {', '.join(args)} (KEY=VALUE)")
        args[key] = _number(key, value, integer=isinstance(SYNTHETIC_DEFAULTS[key], int))
    return args


def _number(key: str, value: str, *, integer: bool) -> float | int:
    try:
        num = float(value)
    except ValueError:
        raise EvalDatasetError(f"synthetic: {key} must be a number, got {value!r}") from None
    if integer and not num.is_integer():
        raise EvalDatasetError(f"synthetic: {key} must be an integer, got {value!r}")
    return int(num) if integer else num


def synthetic_dataset(n: int = 20_000, nq: int = 1_000, dim: int = 64, clusters: int = 100,
                      spread: float = 3.0, seed: int = 0) -> EvalDataset:
    """The built-in default: vdb's clustered Gaussian mixture, labelled by the nearest mixture centre.

    `spread` 3.0 makes clusters overlap so that a 10-NN vote is right about 80% of the time (at the default
    0.6 the task is trivially 100%). Base and queries are independent draws (streams 1 and 2).
    """
    from vdb.inputs.synthetic import ClusteredMixture
    if min(n, nq, dim, clusters) < 1 or spread <= 0:
        raise EvalDatasetError("synthetic: n, nq, dim and clusters must be >= 1 and spread > 0")
    mix = ClusteredMixture(dim, clusters, seed, spread=spread)
    base, queries = mix.sample(n, 1), mix.sample(nq, 2)
    return EvalDataset(
        name="synthetic" if (n, nq, dim, clusters, spread, seed) == tuple(SYNTHETIC_DEFAULTS.values())
        else f"synthetic-{n}x{dim}-c{clusters}-s{spread:g}-seed{seed}",
        base=base, queries=queries,
        base_labels=mix.labels_for(base).astype(np.int32), query_labels=mix.labels_for(queries).astype(np.int32),
        metric="l2",
        description=f"vdb.inputs.synthetic.ClusteredMixture(dim={dim}, n_clusters={clusters}, seed={seed}, "
                    f"spread={spread:g}): {n} base / {nq} query vectors; label = nearest mixture centre")
