"""Parameters: build-time knobs (persisted with the index, immutable) apart from query-time knobs."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from enum import Enum
from typing import NamedTuple

import numpy as np

from index.errors import InvalidParameterError


_KINDS = {"int": (int, np.integer), "float": (int, float, np.integer, np.floating), "str": (str,), "bool": (bool,)}


def check_types(params) -> None:
    """Every field of a parameter dataclass has its declared type (no bool for a number, no NaN): bad knobs are
    InvalidParameterError, never a TypeError deep inside a search."""
    for f in fields(params):
        v = getattr(params, f.name)
        kind = f.type if isinstance(f.type, str) else f.type.__name__
        if kind.endswith(" | None"):  # optional: None means "chosen automatically"
            if v is None:
                continue
            kind = kind[: -len(" | None")]
        ok = isinstance(v, _KINDS[kind]) and (kind == "bool" or not isinstance(v, (bool, np.bool_)))
        if ok and kind == "float" and not v == v:  # NaN would pass every range check that follows
            raise InvalidParameterError(f"{f.name} must be a number, not NaN")
        if not ok:
            raise InvalidParameterError(f"{f.name} must be a{'n' if kind == 'int' else ''} {kind}, got {v!r}")


class Metric(str, Enum):
    """Distances returned are always "smaller is nearer":
    l2 -> squared Euclidean distance; ip -> negative inner product; cosine -> 1 - cosine similarity."""

    L2 = "l2"
    IP = "ip"
    COSINE = "cosine"

    @classmethod
    def parse(cls, value: "str | Metric") -> "Metric":
        try:
            return cls(value.value if isinstance(value, Metric) else str(value).lower())
        except ValueError:
            raise InvalidParameterError(f"unknown metric {value!r}: use l2, ip or cosine") from None

    @property
    def angular(self) -> bool:
        """Heads live on the unit sphere for ip/cosine (spherical k-means, as faiss IVF does for IP)."""
        return self is not Metric.L2


@dataclass(frozen=True)
class BuildParams:
    metric: str = "l2"
    head_ratio: float = 0.02          # heads as a fraction of N (SPANN uses 0.08-0.16; see docs/benchmarks.md)
    branching: int = 32               # children per node of the hierarchical balanced k-means
    leaf_split_max: int = 128         # a node whose head target is at most this is clustered directly
    train_samples: int = 10_000       # k-means training sample per node
    balance_slack: float = 3.0        # leaf cluster capacity = slack * n / k (1.1 cost 20 points of recall)
    candidates: int = 32              # nearest heads considered per vector in the closure assignment
    leaf_assign: bool = True          # candidates from each row's leaf head's neighbourhood, not a head search per
                                      # row: 10M build 411 -> 231 s (3.72x -> 2.24x faiss), 3% fewer replicas and
                                      # recall -0.8 at nprobe 48, which the calibrated nprobe absorbs (bulk build
                                      # only: the Ray build and online inserts search the head index)
    max_replicas: int = 8             # SPANN: 8 (4 at dim >= 768, applied in resolved())
    rng_factor: float = 1.0           # RNG rule: accept head c unless rng_factor * d(c, a) < d(x, c)
    closure_eps: float = 1.0          # replicate only into heads with d(x, c) <= (1 + closure_eps) d(x, c_1)
    posting_cap: int = 0              # 0: automatic, = split_limit (a bulk build starts within the online limit)
    extent_slack: float = 0.0         # bulk build: free append space per posting extent; 0 packs postings back
                                      # to back (disk = records; a posting's first append moves it to a fresh
                                      # page-aligned extent with room, see docs/storage_format.md)
    split_limit: int = 0              # split a posting longer than this; 0: automatic, ceil(4 / head_ratio)
    merge_limit: int = 0              # online: merge a posting with fewer live records; 0: split_limit // 8
    reassign_neighbors: int = 8       # online: neighbouring postings re-checked after a split (SPFresh LIRE)
    bootstrap_rows: int = 1000        # online: an empty collection gets its first heads at this many vectors
    head_index: str = "auto"          # auto (flat up to 4096 heads, else hnsw_sq8) | flat | hnsw | hnsw_sq8
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    seed: int = 0
    target_recall: float = 0.9        # the build calibrates the default nprobe to reach this recall@10 on
                                      # held-out samples (index/calibrate.py); 0 skips the calibration
    calibration_samples: int = 500    # stored rows used as queries for it
    scan_code_bytes: int = 0          # > 0: also encode every posting record into this many PQ bytes (scan.pq,
                                      # index/scancodes.py) that an index served from disk scans in RAM;
                                      # -1: automatic (types.scan_code_bytes: dim / 4)

    def resolved(self, dim: int) -> "BuildParams":
        """Validate and fill the automatic choices that depend on the data."""
        check_types(self)
        replicas = self.max_replicas if dim < 768 else min(self.max_replicas, 4)
        checks = [
            (0 < self.head_ratio <= 1, "head_ratio must be in (0, 1]"),
            (self.branching >= 2, "branching must be >= 2"),
            (self.leaf_split_max >= 2, "leaf_split_max must be >= 2"),
            (self.train_samples >= 100, "train_samples must be >= 100"),
            (self.balance_slack >= 1.0, "balance_slack must be >= 1"),
            (self.candidates >= 1, "candidates must be >= 1"),
            (1 <= self.max_replicas <= 64, "max_replicas must be in [1, 64]"),
            (self.rng_factor > 0, "rng_factor must be > 0"),
            (self.closure_eps >= 0, "closure_eps must be >= 0"),
            (self.posting_cap >= 0, "posting_cap must be >= 0"),
            (self.extent_slack >= 0, "extent_slack must be >= 0"),
            (self.head_index in ("auto", "flat", "hnsw", "hnsw_sq8"),
             "head_index must be auto, flat, hnsw or hnsw_sq8"),
            (self.split_limit >= 0 and self.merge_limit >= 0, "split_limit and merge_limit must be >= 0"),
            (self.split_limit == 0 or self.split_limit >= 8, "split_limit must be >= 8"),
            (self.reassign_neighbors >= 0, "reassign_neighbors must be >= 0"),
            (self.bootstrap_rows >= 1, "bootstrap_rows must be >= 1"),
            (self.hnsw_m >= 4, "hnsw_m must be >= 4"),
            (0 <= self.target_recall < 1, "target_recall must be in [0, 1)"),
            (self.calibration_samples >= 10, "calibration_samples must be >= 10"),
            (-1 <= self.scan_code_bytes <= MAX_SCAN_CODE_BYTES,
             f"scan_code_bytes must be in [-1, {MAX_SCAN_CODE_BYTES}]"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidParameterError(message)
        Metric.parse(self.metric)
        split = self.split_limit or max(16, int(np.ceil(4.0 / self.head_ratio)))
        merge = self.merge_limit or max(1, split // 8)
        if merge * 2 >= split:
            raise InvalidParameterError("merge_limit must be below half of split_limit")
        return BuildParams(**{**asdict(self), "max_replicas": replicas, "split_limit": split, "merge_limit": merge,
                              "posting_cap": self.posting_cap or split, "candidates": max(self.candidates, replicas)})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "BuildParams":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise InvalidParameterError(f"unknown build parameter(s): {', '.join(sorted(unknown))}")
        return cls(**d)


RERANK_PER_K, RERANK_MIN = 3, 32   # automatic rerank_k = max(3k, 32); measured: at k=10, 32 re-ranks as well as 64
EF_PER_NPROBE, EF_MIN = 2, 16      # automatic ef_search = max(2 * nprobe, 16)


FALLBACK_NPROBE = 32  # nprobe of an index built without a calibration (or before its first heads)
DISK_RERANK_EPS = 0.02  # automatic rerank_eps from disk: at 10M x 128 it read 2.4x fewer rows than 0 at equal recall


@dataclass(frozen=True)
class SearchParams:
    nprobe: int = 0           # heads probed at most; 0: the index's calibrated nprobe for its build's
                              # target_recall (index/calibrate.py), FALLBACK_NPROBE for an uncalibrated index
    target_recall: float = 0.0  # > 0: the smallest calibrated nprobe whose measured recall@10 reaches this
    eps: float = 1.0          # probe head i only if d(q, c_i) <= (1 + eps) * d(q, c_1) (plain, not squared)
    rerank_k: int = 0         # INT8 candidates re-ranked with float32; 0: automatic, max(3k, 32)
    ef_search: int = 0        # head-index HNSW beam; 0: automatic, max(2 * nprobe, 16)
    prefetch: bool = False    # MADV_WILLNEED postings, then the re-rank rows, before reading (a cold cache)
    rerank_eps: float | None = None  # re-rank only the candidates whose INT8 distance is within rerank_eps * |d_k|
                              # of the k-th one d_k (at least k); 0: all rerank_k. None: DISK_RERANK_EPS on an
                              # index served from disk (each re-ranked row is a page read there,
                              # index/diskread.py), 0 through mmap (a re-rank costs CPU only)

    @staticmethod
    def describe_rerank() -> str:
        return f"max({RERANK_PER_K}k, {RERANK_MIN})"

    def replace(self, **changes) -> "SearchParams":
        """A copy with some knobs changed (the only way knobs change: a new field can never shift silently).
        Runs on every search, so it copies the field dict instead of calling dataclasses.replace (3x slower)."""
        if not changes.keys() <= _SEARCH_FIELDS:
            unknown = sorted(set(changes) - _SEARCH_FIELDS)
            raise InvalidParameterError(f"unknown search parameter(s): {', '.join(unknown)}")
        return SearchParams(**{**self.__dict__, **changes})

    def resolved(self, k: int) -> "SearchParams":
        check_types(self)
        if self.nprobe < 0:
            raise InvalidParameterError(f"nprobe must be >= 1 (or 0: calibrated), got {self.nprobe}")
        if not 0 <= self.target_recall < 1:
            raise InvalidParameterError(f"target_recall must be in [0, 1), got {self.target_recall}")
        if self.eps < 0:
            raise InvalidParameterError(f"eps must be >= 0, got {self.eps}")
        if self.rerank_eps is not None and not self.rerank_eps >= 0:
            raise InvalidParameterError(f"rerank_eps must be >= 0, got {self.rerank_eps}")
        if self.rerank_k < 0 or self.ef_search < 0:
            raise InvalidParameterError("rerank_k and ef_search must be >= 0")
        rerank = self.rerank_k or max(RERANK_PER_K * k, RERANK_MIN)
        ef = self.ef_search or (max(EF_PER_NPROBE * self.nprobe, EF_MIN) if self.nprobe else 0)
        return self.replace(rerank_k=max(rerank, k), ef_search=ef)

    def with_nprobe(self, nprobe: int) -> "SearchParams":
        """Resolve an automatic nprobe (0) to the index's choice; ef_search follows unless it was given."""
        if self.nprobe:
            return self
        return self.replace(nprobe=nprobe, ef_search=self.ef_search or max(EF_PER_NPROBE * nprobe, EF_MIN))


_SEARCH_FIELDS = frozenset(f.name for f in fields(SearchParams))


# The scan tier (index/scancodes.py, index/tierscan.py): PQ codes of every posting record held in RAM
SCAN_BITS_PER_DIM = 2       # automatic PQ code size: dim / 4 bytes (9 more per entry: row, version, norm). Measured
                            # on 1M x 128 at nprobe 8, recall@10 after re-ranking the best 12 / 32 estimates:
                            # 16 B 0.571 / 0.814, 32 B 0.768 / 0.898, 64 B 0.893 / 0.905, INT8 0.903 / 0.905
                            # (docs/benchmarks/disk-c128-1m-scan-quality.json); 32 B is what 10M fits in 1 GiB
MAX_SCAN_CODE_BYTES = 256   # PQ sub-quantizers (bytes per entry) a build or `vdbctl scan-codes` may ask for
SCAN_TRAIN_SAMPLES = 65_536  # residuals the product quantizer is trained on
DISK_TIER_RERANK_EPS = 0.05  # automatic rerank_eps with the scan tier (relative to the k-th PQ distance): 32 B
                            # codes at 1M, nprobe 16: 0.02 -> recall 0.82 with 12.6 rows, 0.05 -> 0.90 with 17.2
TIER_RERANK_EPS_LADDER = (DISK_TIER_RERANK_EPS, 0.1, 0.2, 0.4)  # what the tier's calibration tries in turn until
                            # its curve reaches the target (32-d test data, 8 B codes, nprobe 8: recall 0.897 /
                            # 0.941 / 0.993 / 0.999); the first that does becomes the tier's automatic rerank_eps


class HeadProbe(NamedTuple):
    """What the head search of a search chose, per query: the postings it scans and the head nearest to it."""
    postings: np.ndarray  # int64 [nq, <= nprobe]: posting ids, nearest first; -1 where pruned or unknown
    nearest: np.ndarray   # int64 [nq]: the nearest head found that was not retired, *including* one newer than
                          # the posting snapshot (unprobed, but the memtable's filing rule needs it); -1: none


def scan_code_bytes(dim: int) -> int:
    """The automatic scan-code size for vectors of `dim` dimensions (SCAN_BITS_PER_DIM per dimension)."""
    return max(1, -(-dim * SCAN_BITS_PER_DIM // 8))


def resolve_scan_code_bytes(code_bytes, dim: int) -> int:
    """The code size an explicit encoding of the scan tier uses: -1 is automatic (scan_code_bytes), else
    1..MAX_SCAN_CODE_BYTES. 0, which a build reads as "no scan tier", asks for nothing here: an error, as is
    anything else (InvalidParameterError)."""
    if isinstance(code_bytes, bool) or not isinstance(code_bytes, (int, np.integer)) or \
            not (code_bytes == -1 or 1 <= code_bytes <= MAX_SCAN_CODE_BYTES):
        raise InvalidParameterError(f"scan code bytes must be -1 (automatic) or in [1, {MAX_SCAN_CODE_BYTES}], "
                                    f"got {code_bytes!r}")
    return scan_code_bytes(dim) if code_bytes == -1 else int(code_bytes)
