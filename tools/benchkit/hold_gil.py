"""An experiment for issue 13: tools/bench_updates.py with the two kernels of a single search, the posting scan
(search_many) and the memtable scan (small_exact_topk), compiled to keep the GIL (nogil=False), so a search
gives the GIL away only around the faiss head search. It tests whether the searches' GIL hand-overs to the
writer and maintenance threads make the tail during writes (tools/benchkit/search_phases.py counted ~4
voluntary context switches in each of the slowest 1%). HOLD_GIL=0 runs the same script unchanged, for an
interleaved A/B in one session:

    HOLD_GIL=0 .venv/bin/python tools/benchkit/hold_gil.py --n 1000000 --rate 5000 --out /tmp/a.json
    HOLD_GIL=1 .venv/bin/python tools/benchkit/hold_gil.py --n 1000000 --rate 5000 --out /tmp/b.json

The variants are compiled on each run (not cached), before any timing starts.
"""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "tools"))
from numba import njit  # noqa: E402

import index.kernels.exact as exact_kernels  # noqa: E402
import index.kernels.search as search_kernels  # noqa: E402
import index.spann as spann  # noqa: E402
import vdb.engine.memtable as memtable  # noqa: E402

if os.environ.get("HOLD_GIL", "1") == "1":
    spann.search_many = njit(nogil=False, fastmath=True)(search_kernels.search_many.py_func)
    memtable.small_exact_topk = njit(nogil=False, fastmath=True)(exact_kernels.small_exact_topk.py_func)
    print("search kernels keep the GIL", file=sys.stderr)

import bench_updates  # noqa: E402

if __name__ == "__main__":
    bench_updates.main()
