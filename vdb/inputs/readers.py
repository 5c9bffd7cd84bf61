"""Vector dataset files as lazily sliced arrays: .npy, .fvecs/.bvecs/.ivecs, .fbin/.u8bin/.i8bin/.ibin, .hdf5.

Every reader returns something with `.shape == (n, dim)` that supports `x[start:stop]` and `x[rows]` without
reading the whole file (numpy memmaps, h5py datasets), so a 1M x 128 build streams its input.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vdb.errors import InvalidArgumentError

VECS = {".fvecs": np.float32, ".bvecs": np.uint8, ".ivecs": np.int32}
BIN = {".fbin": np.float32, ".u8bin": np.uint8, ".i8bin": np.int8, ".ibin": np.int32}
SUPPORTED = (".npy", *VECS, *BIN, ".hdf5", ".h5")


class DatasetError(InvalidArgumentError):
    """An input file that cannot be read as vectors."""


def open_vectors(path: str | os.PathLike, *, dataset: str = "train"):
    """Open a vector file lazily. `dataset` names the HDF5 dataset (ann-benchmarks: train / test)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    ext = path.suffix.lower()
    if ext == ".npy":
        return _npy(path)
    if ext in VECS:
        return _vecs(path, VECS[ext])
    if ext in BIN:
        return _bin(path, BIN[ext])
    if ext in (".hdf5", ".h5"):
        return _hdf5(path, dataset)
    raise DatasetError(f"{path}: unknown file type {ext!r}; supported: {', '.join(SUPPORTED)}")


def open_array(path: str | os.PathLike) -> np.ndarray:
    """A .npy file of any shape as a read-only memmap (labels, norms, ids as well as vectors)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise DatasetError(f"{path}: not a readable .npy file ({e})") from None


def open_hdf5(path: str | os.PathLike):
    """An HDF5 file opened read-only (h5py.File; the caller closes it)."""
    import h5py
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(f"{path}: not a readable HDF5 file ({e})") from None


def _npy(path: Path):
    a = open_array(path)
    if a.ndim != 2:
        raise DatasetError(f"{path}: expected a 2-D array [n, dim], got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise DatasetError(f"{path}: expected numeric vectors, got dtype {a.dtype}")
    return a


def _vecs(path: Path, dtype) -> np.ndarray:
    """Each record: int32 dim, then dim values of `dtype` (the TEXMEX format)."""
    size = path.stat().st_size
    if size < 4:
        raise DatasetError(f"{path}: file is empty or shorter than one record header")
    dim = int(np.fromfile(path, dtype=np.int32, count=1)[0])
    item = np.dtype(dtype).itemsize
    rec = 4 + dim * item
    if dim <= 0 or size % rec:
        raise DatasetError(f"{path}: size {size} is not a multiple of the record size {rec} (dim {dim}); "
                           f"truncated or not a {path.suffix} file")
    raw = np.memmap(path, dtype=np.uint8, mode="r", shape=(size // rec, rec))
    heads = raw[[0, -1], :4].copy().view(np.int32)[:, 0]
    if (heads != dim).any():
        raise DatasetError(f"{path}: records disagree on the dimension ({heads.tolist()})")
    if dtype == np.uint8:
        return raw[:, 4:]
    return np.memmap(path, dtype=dtype, mode="r", shape=(size // rec, rec // item))[:, 1:]


def _bin(path: Path, dtype) -> np.ndarray:
    """big-ann-benchmarks format: u32 n, u32 dim, then n * dim values."""
    size = path.stat().st_size
    if size < 8:
        raise DatasetError(f"{path}: file is shorter than its 8-byte header")
    n, dim = (int(v) for v in np.fromfile(path, dtype=np.uint32, count=2))
    need = 8 + n * dim * np.dtype(dtype).itemsize
    if size != need:
        raise DatasetError(f"{path}: header says {n} x {dim} ({need} bytes) but the file has {size} bytes")
    return np.memmap(path, dtype=dtype, mode="r", offset=8, shape=(n, dim))


def _hdf5(path: Path, dataset: str):
    f = open_hdf5(path)
    if dataset not in f:
        raise DatasetError(f"{path}: no dataset {dataset!r} (has: {', '.join(f.keys())})")
    ds = f[dataset]
    if ds.ndim != 2:
        raise DatasetError(f"{path}:{dataset}: expected a 2-D dataset, got shape {ds.shape}")
    return ds


def load_ids(path: str | os.PathLike) -> np.ndarray:
    path = Path(path)
    if path.suffix.lower() != ".npy":
        raise DatasetError(f"{path}: ids must be a .npy file of integers")
    a = _npy_1d(path)
    if not np.issubdtype(a.dtype, np.integer):
        raise DatasetError(f"{path}: ids must be integers, got dtype {a.dtype}")
    return np.asarray(a)


def _npy_1d(path: Path) -> np.ndarray:
    a = open_array(path)
    if a.ndim != 1:
        raise DatasetError(f"{path}: expected a 1-D array, got shape {a.shape}")
    return a
