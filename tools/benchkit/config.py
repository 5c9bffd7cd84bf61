"""The knobs of one benchmark run (what is measured how often), shared by every system module."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class RunConfig:
    k: int = 10
    cpu: int | None = 1          # searches run on one thread pinned to this CPU (None: not pinned)
    build_threads: int = 2       # builds use both cores
    n_single: int = 1000         # single-query latency samples per operating point (warm)
    cold: bool = True
    cold_prefetch: bool = True   # vdb: also the cold run with prefetch=True (MADV_WILLNEED on chosen postings)
    n_cold: int = 200            # cold single queries (cache evicted before each)
    n_cold_batch: int = 500      # cold-start batch (cache evicted once before it)
    timeout_s: int = 1800        # per out-of-process peer step

    def replace(self, **changes) -> "RunConfig":
        return dataclasses.replace(self, **changes)
