"""The staging directory of a distributed build: everything a restart needs, and nothing else.

    OUT.parent/.OUT.ray-staging/
        LOCK                     flock held by the running driver (one build per output at a time)
        progress.json            fingerprint of (input, ids, parameters, partitioning) + completed partitions
        plan.npz                 what the driver trained: INT8 quantizer, heads, serialized head index
        parts/part-000003.npz    per completed partition: records (row, head, squared dist) and INT8 codes
        index/                   the index directory being built (storage.IndexDir); actors write their float32
                                 rows into index/vectors.f32 at their final offsets, the merge writes the rest

Every file here is published temp -> fsync -> rename -> fsync(dir). `progress.json` is the record of truth: a
partition counts as done only once it is listed there, and it is listed only after its part file and its vector
rows are durable. Anything else (a part file without a record, rows of an unlisted partition) is redone.
A staging directory whose fingerprint differs from the new build's is discarded whole.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from index.quantize import Int8Quantizer
from storage.fileio import atomic_write_bytes
from storage.lock import LOCK_NAME, DirLock

log = logging.getLogger(__name__)
STAGING_VERSION = 1
PROGRESS, PLAN, PARTS, INDEX = "progress.json", "plan.npz", "parts", "index"


@dataclass(frozen=True)
class Plan:
    """The driver's trained state, shipped to every actor and kept for a resumed build."""

    quantizer: Int8Quantizer
    heads: np.ndarray            # float32 [H, dim], head-space, indexed by head id
    head_index: np.ndarray       # uint8: faiss serialization of the head index (HeadIndex.to_bytes)

    def to_bytes(self) -> bytes:
        return _npz_bytes(quantizer=self.quantizer.to_array(), heads=self.heads, head_index=self.head_index)

    @classmethod
    def from_file(cls, path: Path) -> "Plan":
        a = _load_npz(path)
        return cls(Int8Quantizer.from_array(a["quantizer"]), a["heads"], a["head_index"])


@dataclass
class Progress:
    fingerprint: dict
    n_partitions: int
    done: set[int]

    def to_bytes(self) -> bytes:
        return json.dumps({"version": STAGING_VERSION, "fingerprint": self.fingerprint,
                           "n_partitions": self.n_partitions, "done": sorted(self.done)},
                          sort_keys=True, indent=1).encode()

    @classmethod
    def from_file(cls, path: Path) -> "Progress | None":
        try:
            raw = json.loads(path.read_bytes())
            if raw.get("version") != STAGING_VERSION:
                return None
            return cls(raw["fingerprint"], int(raw["n_partitions"]), {int(p) for p in raw["done"]})
        except (OSError, ValueError, KeyError, TypeError):
            return None


class Staging:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.progress_path, self.plan_path = self.root / PROGRESS, self.root / PLAN
        self.parts_dir, self.index_dir = self.root / PARTS, self.root / INDEX

    @classmethod
    def for_output(cls, out_dir: Path) -> "Staging":
        """Deterministic per output directory, so a restarted build finds its predecessor's work."""
        return cls(out_dir.parent / f".{out_dir.name}.ray-staging")

    def lock(self) -> DirLock:
        self.root.mkdir(parents=True, exist_ok=True)
        return DirLock(self.root, exclusive=True)

    def resume(self, fingerprint: dict, n_partitions: int) -> Progress | None:
        """The progress of an earlier build of the same thing, or None (then the caller starts fresh)."""
        progress = Progress.from_file(self.progress_path)
        if progress is None:
            return None
        if progress.fingerprint != fingerprint or progress.n_partitions != n_partitions:
            changed = sorted(k for k in set(fingerprint) | set(progress.fingerprint)
                             if fingerprint.get(k) != progress.fingerprint.get(k))
            log.warning("discarding staged build in %s: %s changed", self.root, ", ".join(changed) or "layout")
            return None
        if not self.index_dir.is_dir() or (progress.done and not self.plan_path.is_file()):
            log.warning("discarding staged build in %s: its index directory or plan is missing", self.root)
            return None
        missing = {p for p in progress.done if not self.part_path(p).is_file()}
        if missing:
            log.warning("staged partitions %s have no part file; redoing them", sorted(missing))
            progress.done -= missing
        return progress

    def wipe(self) -> None:
        """Remove everything but the lock file (the caller holds the lock)."""
        for child in self.root.iterdir():
            if child.name == LOCK_NAME:
                continue
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def save_progress(self, progress: Progress) -> None:
        atomic_write_bytes(self.progress_path, progress.to_bytes())

    def save_plan(self, plan: Plan) -> None:
        atomic_write_bytes(self.plan_path, plan.to_bytes())

    def load_plan(self) -> Plan | None:
        return Plan.from_file(self.plan_path) if self.plan_path.is_file() else None

    # -- partition files (written by actors, read by the driver's merge) --------------------------------
    def part_path(self, pid: int) -> Path:
        return self.parts_dir / f"part-{pid:06d}.npz"

    def save_part(self, pid: int, rows: np.ndarray, heads: np.ndarray, dists: np.ndarray,
                  codes: np.ndarray) -> None:
        self.parts_dir.mkdir(exist_ok=True)
        atomic_write_bytes(self.part_path(pid), _npz_bytes(rows=rows, heads=heads, dists=dists, codes=codes))

    def load_part(self, pid: int) -> dict[str, np.ndarray]:
        return _load_npz(self.part_path(pid))


def fingerprint(input_path: Path, source, reader, ids: np.ndarray | None, params_dict: dict,
                partition_rows: int, head_sample: int | None) -> dict:
    """What must be equal for a staged build to be reused. The input is identified by path, size and mtime."""
    st = os.stat(input_path)
    return {
        "input": str(input_path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
        "shape": [int(s) for s in source.shape], "dtype": str(getattr(source, "dtype", "")),
        "reader": describe_callable(reader),
        "ids_sha256": hashlib.sha256(np.ascontiguousarray(ids).tobytes()).hexdigest() if ids is not None else None,
        "params": params_dict, "partition_rows": int(partition_rows), "head_sample": head_sample,
    }


def describe_callable(fn) -> str:
    """A stable description of a reader (functools.partial included); never a memory address."""
    import functools
    if isinstance(fn, functools.partial):
        kw = ", ".join(f"{k}={v!r}" for k, v in sorted(fn.keywords.items()))
        return f"partial({describe_callable(fn.func)}, args={fn.args!r}, {kw})"
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz, fully read (zip member CRCs are checked on the way)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, EOFError) as e:
        from storage.errors import CorruptionError
        raise CorruptionError(path, f"staged file is unreadable ({e})",
                              hint="delete the staging directory and rebuild") from e
