"""Two versions of the scan-tier kernel (index/kernels/tier.py) in one process, on the same index, the same budget
and the same queries, in alternating blocks (which goes first alternates too), so the device's and the machine's
swings hit both alike: per-query latency and single-thread QPS of `SpannIndex.search`, and whether the answers
agree. The other version is the kernel file of a git revision (`git show REV:index/kernels/tier.py`).

    .venv/bin/python tools/benchkit/tier_kernel_ab.py INDEX_DIR QUERIES.npy --before REV --budget-mb 694 \
        --out docs/benchmarks/x.json
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def kernel_of(revision: str):
    """The tier_query of index/kernels/tier.py as `revision` has it, loaded as a module of its own."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{revision}:index/kernels/tier.py"], check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "tier_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("tier_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.tier_query


def main() -> None:
    from index import SpannIndex
    from index.kernels import tier
    from index.tierscan import TierSearcher
    from vdb.config import tune_process
    ap = argparse.ArgumentParser()
    ap.add_argument("index")
    ap.add_argument("queries")
    ap.add_argument("--before", required=True, help="git revision of the other kernel")
    ap.add_argument("--budget-mb", type=float, required=True)
    ap.add_argument("--blocks", type=int, default=16)
    ap.add_argument("--block", type=int, default=250, help="queries per block (each block runs both kernels)")
    ap.add_argument("--warm", type=int, default=600)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    tune_process()
    kernels = {"before": kernel_of(args.before), "after": tier.tier_query}
    q = np.load(args.queries).astype(np.float32)
    need = args.warm + args.blocks * args.block
    if len(q) < need:
        ap.error(f"{len(q)} queries; --warm + --blocks x --block need {need}")
    idx = SpannIndex.open(args.index, memory_budget_mb=args.budget_mb, scan_tier=True)
    if idx.tier is None:
        ap.error("the index serves without its scan tier within this budget")
    current = {"kernel": kernels["after"]}
    stored_codebook = np.ascontiguousarray(idx.tier.codes.codebook)  # [M, 256, dsub], as the file has it
    original = TierSearcher.estimates

    def estimates(self, pids, qv, is_l2, state, allow, rerank_k):
        c = self.codes
        kernel = current["kernel"]
        # kernels before 2026-12-04 take the codebook as stored, [M, 256, dsub]; later ones transposed
        transposed = "codebook_t" in inspect.signature(kernel.py_func).parameters
        codebook = self.codebook_t if transposed else stored_codebook
        rows, est, scanned = kernel(pids.astype(np.int64), self.start, self.count, c.rows, c.versions, c.terms,
                                    c.codes, codebook, self.base, self.scale, self.offset, qv, state, allow,
                                    is_l2, rerank_k)
        return rows, est, int(scanned)
    TierSearcher.estimates = estimates
    try:
        for name in kernels:  # compile and warm both, on queries the blocks do not use
            current["kernel"] = kernels[name]
            for i in range(args.warm):
                idx.search(q[i], 10)
        lat = {name: [] for name in kernels}
        answers = {name: {} for name in kernels}
        first = args.warm
        for block in range(args.blocks):
            order = list(kernels) if block % 2 == 0 else list(kernels)[::-1]
            for name in order:
                current["kernel"] = kernels[name]
                for j in range(first, first + args.block):
                    t = time.perf_counter()
                    ids, _ = idx.search(q[j], 10)
                    lat[name].append(time.perf_counter() - t)
                    answers[name][j] = ids
            first += args.block
    finally:
        TierSearcher.estimates = original
    out = {"index": args.index, "before": args.before, "budget_mb": args.budget_mb, "nprobe": idx.default_nprobe(),
           "command": " ".join(sys.argv), "blocks": args.blocks, "block": args.block}
    for name, values in lat.items():
        a = np.array(values) * 1e3
        out[name] = {"n": len(a), "p50_ms": round(float(np.percentile(a, 50)), 3),
                     "p99_ms": round(float(np.percentile(a, 99)), 3), "qps_1thread": round(1e3 / float(a.mean()), 1)}
    out["qps_ratio_after_over_before"] = round(out["after"]["qps_1thread"] / out["before"]["qps_1thread"], 3)
    out["same_answers"] = float(np.mean([np.array_equal(answers["before"][j], answers["after"][j])
                                         for j in answers["before"]]))
    idx.close()
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
