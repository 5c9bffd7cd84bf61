"""Would re-rank rows laid out in posting order share pages? Counts, per query, the 4 KiB pages its re-rank rows
touch in vectors.f32 (by row id, today) and in a hypothetical float32 copy in posting order (SPANN-style: each
candidate read from the first probed posting that holds it), with and without page-aligned packing (7 rows of
516 bytes per page). Uses the scan tier's own candidates (nprobe, rerank_eps as given). Writes JSON:

    .venv/bin/python tools/benchkit/rerank_layout.py INDEX_DIR QUERIES.npy --out docs/benchmarks/x.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
PAGE = 4096


def _pages(offsets: np.ndarray, length: int) -> int:
    return len(set((offsets // PAGE).tolist()) | set(((offsets + length - 1) // PAGE).tolist()))


def main() -> None:
    from index import SpannIndex
    from index.kernels import rerank_cut
    from index.types import SearchParams
    from vdb.config import tune_process
    ap = argparse.ArgumentParser()
    ap.add_argument("index"), ap.add_argument("queries")
    ap.add_argument("--nq", type=int, default=400)
    ap.add_argument("--nprobe", type=int, default=48)
    ap.add_argument("--rerank-eps", type=float, default=0.05)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    tune_process()
    qs = np.load(a.queries)[-a.nq:].astype(np.float32)
    idx = SpannIndex.open(a.index, memory_budget_mb=512)
    tier, codes = idx.tier, idx.tier.codes
    row = idx.dim * 4 + 4
    per_row = PAGE // row
    P = idx.probe(qs, SearchParams(nprobe=a.nprobe).resolved(10))
    now, post, packed, rows_n = [], [], [], []
    for i, q in enumerate(qs):
        pids = P[i][P[i] >= 0]
        rows, est, _ = tier.estimates(pids, q, True, idx.state, np.zeros(0, np.uint8), 33)
        rows = rows[: rerank_cut(est, 10, a.rerank_eps)]
        ent = []
        for r in rows:
            for p in pids:
                s, n = int(codes.start[p]), int(codes.count[p])
                hit = np.nonzero(codes.rows[s:s + n] == r)[0]
                if len(hit):
                    ent.append(s + int(hit[0]))
                    break
        ent = np.asarray(ent, np.int64)
        rows_n.append(len(rows))
        now.append(_pages(PAGE + rows * row, row))
        post.append(_pages(ent * row, row))
        packed.append(len(set((ent // per_row).tolist())))
    res = {"index": a.index, "nq": a.nq, "nprobe": a.nprobe, "rerank_eps": a.rerank_eps,
           "rerank_rows_per_query": round(float(np.mean(rows_n)), 2),
           "pages_by_row_id": round(float(np.mean(now)), 2), "pages_posting_order": round(float(np.mean(post)), 2),
           f"pages_posting_order_{per_row}_rows_per_page": round(float(np.mean(packed)), 2)}
    print(json.dumps(res, indent=1))
    Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
