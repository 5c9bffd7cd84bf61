"""How good must the scan tier's codes be? Recall@10 after re-ranking the best R estimates, per quantizer.

For each query: the postings vdb probes (nprobe), every valid record in them, its residual against the posting's
INT8-coded head (what index/scancodes.py encodes), decoded by each candidate quantizer (faiss PQ with M bytes,
SQ 4/6-bit, the index's own INT8 for reference); rows ranked by |q - x^|^2, the best R distinct rows re-ranked
exactly, recall@10 against the exact top-10. The probe set is the same for all, so the differences are the
codes' alone. Writes JSON:

    .venv/bin/python tools/benchkit/scan_quality.py INDEX_DIR QUERIES.npy TRUTH.npy --out docs/benchmarks/x.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    import faiss
    from index import SpannIndex
    from index.types import SearchParams
    from storage.scan_codes import ScanCodeFile
    ap = argparse.ArgumentParser()
    ap.add_argument("index"), ap.add_argument("queries"), ap.add_argument("truth")
    ap.add_argument("--nq", type=int, default=300)
    ap.add_argument("--nprobe", type=int, default=8)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    faiss.omp_set_num_threads(1)
    qs = np.load(a.queries)[: a.nq].astype(np.float32)
    gt = np.load(a.truth)[: a.nq, :10]
    idx = SpannIndex.open(a.index)
    sc = ScanCodeFile(Path(a.index) / "scan.pq")  # for its posting table and base codes only
    mat, qz, dim = idx.stored_matrix(), idx.quantizer, idx.dim
    base_f = qz.decode(np.asarray(sc.base))
    rows_all = sc.rows.astype(np.int64)
    pids_all = np.repeat(np.arange(sc.n_postings), sc.count)
    rng = np.random.default_rng(0)
    take = np.sort(rng.choice(len(rows_all), min(65536, len(rows_all)), replace=False))
    train = (np.asarray(mat[rows_all[take], :dim]) - base_f[pids_all[take]]).astype(np.float32)
    P = idx.probe(qs, SearchParams(nprobe=a.nprobe).resolved(10))
    per_q = [np.concatenate([np.arange(sc.start[p], sc.start[p] + sc.count[p]) for p in row[row >= 0]]) for row in P]
    ent = np.unique(np.concatenate(per_q))
    where = np.searchsorted(ent, np.concatenate(per_q))
    bounds = np.cumsum([0] + [len(e) for e in per_q])
    resid = (np.asarray(mat[rows_all[ent], :dim]) - base_f[pids_all[ent]]).astype(np.float32)

    def evaluate(decoded: np.ndarray) -> dict:
        xh = decoded + base_f[pids_all[ent]]
        out = {}
        for r_n in (10, 12, 16, 20, 32):
            hits = []
            for i, q in enumerate(qs):
                j = where[bounds[i]: bounds[i + 1]]
                rows = rows_all[ent[j]]
                order = np.argsort(((xh[j] - q) ** 2).sum(1), kind="stable")
                _, first = np.unique(rows[order], return_index=True)
                short = rows[order][np.sort(first)][:r_n]
                exact = ((np.asarray(mat[short, :dim]) - q) ** 2).sum(1)
                hits.append(len(np.intersect1d(short[np.argsort(exact)[:10]], gt[i])) / 10)
            out[str(r_n)] = round(float(np.mean(hits)), 4)
        return out

    res = {"index": a.index, "nq": a.nq, "nprobe": a.nprobe, "entries_probed": int(len(ent)), "quantizers": {}}
    res["quantizers"]["int8 (the index's)"] = evaluate(qz.decode(qz.encode(resid + base_f[pids_all[ent]]))
                                                       - base_f[pids_all[ent]])
    for m in (16, 32, 64):
        pq = faiss.ProductQuantizer(dim, m, 8)
        t = time.perf_counter()
        pq.train(train)
        res["quantizers"][f"pq {m} B"] = {**evaluate(pq.decode(pq.compute_codes(resid))),
                                          "train_s": round(time.perf_counter() - t, 1)}
    for name, kind in (("sq4 (64 B)", faiss.ScalarQuantizer.QT_4bit), ("sq6 (96 B)", faiss.ScalarQuantizer.QT_6bit)):
        sq = faiss.ScalarQuantizer(dim, kind)
        sq.train(train)
        res["quantizers"][name] = evaluate(sq.decode(sq.compute_codes(resid)))
    print(json.dumps(res, indent=1))
    Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
