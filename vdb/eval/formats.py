"""On-disk dataset layouts the evaluator reads, each into an `EvalDataset`.

* **npy folder** (`../shared/data/<name>/`): `base.npy`, `query.npy` (required, [n, dim]); optional
  `base_labels.npy` + `query_labels.npy` (int [n]), any other `base_<x>.npy` + `query_<x>.npy` integer pair as an
  extra label set named `<x>` without a plural "s" (kjv: `sections` -> "section"), `base_norms.npy` +
  `query_norms.npy` (norms before normalisation), `query_target.npy` (base id per query, -1 = none),
  `qrels*.json` ({"query index": [base ids]}), `meta.json` ("metric", or "normalized": true -> cosine).
* **ann-benchmarks HDF5**: datasets `train`, `test`, optional `neighbors`; attribute `distance`
  (euclidean -> l2, angular -> cosine, dot -> ip). No labels: label metrics are skipped, recall still works.
* **Iceberg .bin**: back-to-back records of `uint32 label, float32[dim]`, one file for the base and one for the
  queries. The file has no header, so `dim` is given or inferred: the smallest dim for which every record's
  first word in both files is a small integer (< 2^24, i.e. a label rather than the bits of a float).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from vdb.eval.datasets import METRICS, EvalDataset
from vdb.inputs.readers import DatasetError, open_array, open_hdf5
from vdb.eval.errors import EvalDatasetError

log = logging.getLogger(__name__)
LABEL_LIMIT = 1 << 24          # a uint32 below this is a label; a float32 with these bits is 0 or denormal
INFER_SAMPLE_WORDS = 1 << 20
HDF5_METRICS = {"euclidean": "l2", "l2": "l2", "angular": "cosine", "cosine": "cosine", "dot": "ip", "ip": "ip",
                "inner_product": "ip"}


# -- npy folder ----------------------------------------------------------------------------------------------
def read_folder(path: Path, *, dim: int | None = None) -> EvalDataset:
    if (path / "base.npy").is_file():
        return read_npy_folder(path)
    h5 = sorted(path.glob("*.hdf5")) + sorted(path.glob("*.h5"))
    if len(h5) == 1:
        return read_ann_hdf5(h5[0])
    bins = [p for p in sorted(path.glob("*.bin")) if "label" not in p.stem.lower()]
    if bins:
        base = _pick(bins, ("train", "base"), path)
        return read_iceberg_pair(base, _pick([b for b in bins if b != base], ("test", "query", "valid"), path),
                                 dim=dim, name=path.name)
    raise EvalDatasetError(f"{path}: no base.npy, single .hdf5 or Iceberg .bin files found")


def read_npy_folder(path: Path) -> EvalDataset:
    query_file = path / "query.npy" if (path / "query.npy").is_file() else path / "queries.npy"
    base, queries = _matrix(path / "base.npy"), _matrix(query_file)
    meta = _json(path / "meta.json") if (path / "meta.json").is_file() else {}
    labels = _pair(path, "labels")
    norms = _pair(path, "norms", integer=False)
    target = _vector(path / "query_target.npy") if (path / "query_target.npy").is_file() else None
    qrels_files = sorted(path.glob("qrels*.json"))
    return EvalDataset(
        name=path.name, base=base, queries=queries,
        base_labels=labels[0] if labels else None, query_labels=labels[1] if labels else None,
        extra_labels=_extra_label_sets(path), query_target=target,
        qrels=_qrels(qrels_files[0], len(queries)) if qrels_files else None,
        metric=_metric_from_meta(meta, base),
        description=_description(path, meta),
        base_norms=norms[0] if norms else None, query_norms=norms[1] if norms else None,
        **_texts(path, len(base), len(queries)))


def _texts(path: Path, n: int, nq: int) -> dict:
    """base_texts / query_texts from texts.jsonl and queries.jsonl (the "text" of each line), when both exist."""
    files = path / "texts.jsonl", path / "queries.jsonl"
    if not all(f.is_file() for f in files):
        return {}
    out = []
    for f, want in zip(files, (n, nq)):
        try:
            texts = tuple(json.loads(line)["text"] for line in f.read_text().splitlines() if line.strip())
        except (ValueError, KeyError, TypeError) as e:
            raise EvalDatasetError(f"{f}: every line must be a JSON object with a \"text\" ({e})") from None
        if len(texts) != want:
            raise EvalDatasetError(f"{f}: {len(texts)} texts for {want} vectors")
        out.append(texts)
    return {"base_texts": out[0], "query_texts": out[1]}


def _pair(path: Path, key: str, *, integer: bool = True):
    b, q = path / f"base_{key}.npy", path / f"query_{key}.npy"
    if not (b.is_file() and q.is_file()):
        return None
    return _vector(b, integer=integer), _vector(q, integer=integer)


def _extra_label_sets(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for f in sorted(path.glob("base_*.npy")):
        key = f.stem[len("base_"):]
        if key in ("labels", "norms") or not (path / f"query_{key}.npy").is_file():
            continue
        b, q = _vector(f), _vector(path / f"query_{key}.npy")
        if np.issubdtype(b.dtype, np.integer) and np.issubdtype(q.dtype, np.integer):
            out[key[:-1] if key.endswith("s") else key] = (b, q)
    return out


def _matrix(path: Path) -> np.ndarray:
    a = _load(path)
    if a.ndim != 2 or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise EvalDatasetError(f"{path}: expected a numeric 2-D array [n, dim], got {a.dtype} {a.shape}")
    return np.ascontiguousarray(a, dtype=np.float32)


def _vector(path: Path, *, integer: bool = False) -> np.ndarray:
    a = _load(path)
    if a.ndim != 1:
        raise EvalDatasetError(f"{path}: expected a 1-D array, got shape {a.shape}")
    if integer and not np.issubdtype(a.dtype, np.integer):
        raise EvalDatasetError(f"{path}: expected integers, got {a.dtype}")
    return a if np.issubdtype(a.dtype, np.integer) else a.astype(np.float32)


def _load(path: Path) -> np.ndarray:
    try:
        return np.asarray(open_array(path))
    except DatasetError as e:
        raise EvalDatasetError(e.message) from None


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (ValueError, OSError) as e:
        raise EvalDatasetError(f"{path}: not readable JSON ({e})") from None


def _qrels(path: Path, nq: int) -> tuple[np.ndarray, ...]:
    raw = _json(path)
    if not isinstance(raw, dict):
        raise EvalDatasetError(f"{path}: expected an object {{\"query index\": [base ids]}}")
    out = [np.zeros(0, np.int64)] * nq
    for key, ids in raw.items():
        try:
            qi = int(key)
            arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        except (TypeError, ValueError):
            raise EvalDatasetError(f"{path}: entry {key!r} is not 'query index: [integer ids]'") from None
        if not 0 <= qi < nq:
            raise EvalDatasetError(f"{path}: query index {qi} is outside [0, {nq - 1}]")
        out[qi] = arr
    return tuple(out)


def _metric_from_meta(meta: dict, base: np.ndarray) -> str:
    if meta.get("metric") in METRICS:
        return meta["metric"]
    if meta.get("normalized") is True:
        return "cosine"
    return natural_metric(base)


def natural_metric(base: np.ndarray) -> str:
    """cosine when the stored vectors are unit length (to 1%), else l2."""
    norms = np.linalg.norm(base[: 10_000], axis=1)
    return "cosine" if np.allclose(norms, 1.0, atol=1e-2) else "l2"


def _description(path: Path, meta: dict) -> str:
    readme = path / "README.md"
    if readme.is_file():
        for line in readme.read_text(errors="replace").splitlines():
            if line.startswith("#"):
                return line.lstrip("# ").strip()
    return str(meta.get("description", ""))


# -- ann-benchmarks HDF5 -------------------------------------------------------------------------------------
def read_ann_hdf5(path: Path) -> EvalDataset:
    try:
        f = open_hdf5(path)
    except DatasetError as e:
        raise EvalDatasetError(e.message) from None
    with f:
        missing = [k for k in ("train", "test") if k not in f]
        if missing:
            raise EvalDatasetError(f"{path}: no {' or '.join(missing)} dataset (ann-benchmarks needs train/test)")
        distance = f.attrs.get("distance", "euclidean")
        distance = distance.decode() if isinstance(distance, bytes) else str(distance)
        if distance.lower() not in HDF5_METRICS:
            raise EvalDatasetError(f"{path}: distance {distance!r} is not one vdb supports (l2, ip, cosine)")
        arrays = {k: np.asarray(f[k]) for k in ("train", "test", "neighbors", "train_labels", "test_labels")
                  if k in f}
    for k in ("train", "test"):
        if arrays[k].ndim != 2:
            raise EvalDatasetError(f"{path}:{k}: expected a 2-D dataset, got shape {arrays[k].shape}")
    labelled = "train_labels" in arrays and "test_labels" in arrays
    return EvalDataset(
        name=path.stem, base=np.ascontiguousarray(arrays["train"], np.float32),
        queries=np.ascontiguousarray(arrays["test"], np.float32),
        base_labels=arrays["train_labels"].astype(np.int64) if labelled else None,
        query_labels=arrays["test_labels"].astype(np.int64) if labelled else None,
        metric=HDF5_METRICS[distance.lower()],
        neighbors=arrays["neighbors"].astype(np.int64) if "neighbors" in arrays else None,
        description=f"ann-benchmarks file {path.name} (distance {distance})")


# -- Iceberg .bin --------------------------------------------------------------------------------------------
def read_iceberg_pair(base_path: Path, query_path: Path, *, dim: int | None = None,
                      name: str | None = None) -> EvalDataset:
    for p in (base_path, query_path):
        if not p.is_file():
            raise EvalDatasetError(f"{p}: no such file")
    dim = dim if dim is not None else infer_record_dim(base_path, query_path)
    base_labels, base = read_records(base_path, dim)
    query_labels, queries = read_records(query_path, dim)
    return EvalDataset(
        name=name or base_path.stem, base=base, queries=queries, base_labels=base_labels,
        query_labels=query_labels, metric=natural_metric(base),
        description=f"Iceberg records {base_path.name} / {query_path.name} (dim {dim})")


def read_records(path: Path, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels int64 [n], vectors float32 [n, dim]) from `uint32 label, float32[dim]` records."""
    if dim < 1:
        raise EvalDatasetError(f"{path}: dimension must be >= 1, got {dim}")
    size, rec = path.stat().st_size, 4 * (dim + 1)
    if size == 0 or size % rec:
        raise EvalDatasetError(f"{path}: {size} bytes is not a whole number of {rec}-byte records (dim {dim})")
    words = np.fromfile(path, dtype=np.uint32).reshape(-1, dim + 1)
    vectors = np.ascontiguousarray(words[:, 1:]).view(np.float32)
    if not np.isfinite(vectors).all():
        raise EvalDatasetError(f"{path}: vectors contain NaN or Inf (wrong dimension {dim}?)")
    return words[:, 0].astype(np.int64), vectors


def infer_record_dim(*paths: Path, max_dim: int = 16_384) -> int:
    """Smallest dim whose record layout puts a small integer (a label) at every record start in every file."""
    samples = []
    for p in paths:
        size = p.stat().st_size
        if size == 0 or size % 4:
            raise EvalDatasetError(f"{p}: {size} bytes is not a whole number of 4-byte words")
        samples.append((size // 4, np.fromfile(p, dtype=np.uint32, count=INFER_SAMPLE_WORDS)))
    for d in range(1, max_dim + 1):
        if all(_labels_at_record_starts(total, words, d) for total, words in samples):
            log.info("inferred Iceberg record dimension %d from %s", d, ", ".join(map(str, paths)))
            return d
    raise EvalDatasetError(f"{paths[0]}: cannot infer the vector dimension of these .bin records; pass it "
                           f"(--dim / load_dataset(dim=...))")


def _labels_at_record_starts(total_words: int, words: np.ndarray, d: int) -> bool:
    stride = d + 1
    if total_words % stride or total_words // stride < 2:
        return False
    starts = words[: len(words) // stride * stride: stride]
    return len(starts) >= 2 and bool((starts < LABEL_LIMIT).all())


def sibling_query_file(base: Path) -> Path:
    """The query file that goes with an Iceberg base file (train -> test / validation, base -> query)."""
    stem = base.name
    for a, b in (("train", "test"), ("train", "validation"), ("base", "query")):
        if a in stem and (base.parent / stem.replace(a, b)).is_file():
            return base.parent / stem.replace(a, b)
    raise EvalDatasetError(f"{base}: cannot find its query file; give both as 'BASE.bin,QUERY.bin'")


def _pick(files: list[Path], words: tuple[str, ...], folder: Path) -> Path:
    for w in words:
        hits = [f for f in files if w in f.stem.lower()]
        if len(hits) == 1:
            return hits[0]
    raise EvalDatasetError(f"{folder}: cannot tell which .bin file is the {words[0]} set "
                           f"(name one with {' / '.join(words)} in it, or give 'BASE.bin,QUERY.bin')")
