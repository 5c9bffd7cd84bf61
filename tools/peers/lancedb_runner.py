"""LanceDB IVF-PQ peer (a disk-resident index: Lance files read through the OS), run in its own virtualenv.

    python lancedb_runner.py build  --base B.npy --metric l2 --out DIR --partitions 1000 --subvectors 32 --json b.json
    python lancedb_runner.py search --index DIR --queries Q.npy --metric l2 --points 8:1,8:10 --json s.json

An operating point is `nprobes:refine_factor` (refine_factor 1 = no float32 re-rank). The caller pins the process
to one core (taskset) and sets LANCE_CPU_THREADS=1. "Cold" drops the table's files from the page cache before
each query; LanceDB's own in-process index cache is kept (it is part of its resident RAM, measured as RSS).
Results: JSON and one ids .npy per operating point, next to the JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procstats import cold_point, percentiles, rss_delta, status, time_chunks, time_singles  # noqa: E402

TABLE = "vectors"


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def cmd_build(a) -> dict:
    import lancedb
    import pyarrow as pa
    base = np.load(a.base, mmap_mode="r")
    n, dim = base.shape
    t = time.perf_counter()
    db = lancedb.connect(a.out)
    chunk = 200_000

    def batches():
        for s in range(0, n, chunk):
            x = np.ascontiguousarray(base[s: s + chunk], dtype=np.float32)
            vec = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), dim)
            yield pa.RecordBatch.from_arrays([pa.array(np.arange(s, s + len(x), dtype=np.int64)), vec],
                                             names=["id", "vector"])

    schema = pa.schema([("id", pa.int64()), ("vector", pa.list_(pa.float32(), dim))])
    tbl = db.create_table(TABLE, data=batches(), schema=schema, mode="overwrite")
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    tbl.create_index(metric=a.metric, num_partitions=a.partitions, num_sub_vectors=a.subvectors,
                     index_type="IVF_PQ")
    index_s = time.perf_counter() - t
    return {"build_s": round(load_s + index_s, 3), "ingest_s": round(load_s, 3), "index_s": round(index_s, 3),
            "n": int(n), "dim": int(dim), "partitions": a.partitions, "subvectors": a.subvectors,
            "disk_bytes": _dir_bytes(Path(a.out))}


def cmd_search(a) -> dict:
    import lancedb
    queries = np.ascontiguousarray(np.load(a.queries), dtype=np.float32)
    out_dir = Path(a.json).parent
    s0 = status()
    t = time.perf_counter()
    tbl = lancedb.connect(a.index).open_table(TABLE)
    load_s = time.perf_counter() - t

    def query(q, nprobes, refine):
        b = tbl.search(q).distance_type(a.metric).limit(a.k).nprobes(nprobes).select(["id"])
        return b.refine_factor(refine) if refine > 1 else b

    def one(q, p):
        return query(q, *p).to_arrow()["id"].to_numpy()

    def batch(qs, p):
        out = np.full((len(qs), a.k), -1, np.int64)
        for s in range(0, len(qs), a.batch):
            r = query(qs[s: s + a.batch], *p).with_row_id(False).to_arrow()
            qi, ids = r["query_index"].to_numpy(), r["id"].to_numpy()
            for i in np.unique(qi):
                got = ids[qi == i][: a.k]
                out[s + i, : len(got)] = got
        return out

    one(queries[0], a.points[0])
    s1 = status()
    batch(queries[:1000], a.points[-1])  # warm-up: index cache and page cache
    points = []
    for p in a.points:  # every point warm first, then every point cold
        chunks, ids, io_batch = time_chunks(lambda qs: batch(qs, p), queries)
        name = f"ids-np{p[0]}-rf{p[1]}.npy"
        np.save(out_dir / name, ids)
        warm, _ = time_singles(lambda q: one(q, p), queries[: a.n_single])
        points.append({"params": {"nprobes": p[0], "refine_factor": p[1]}, "ids_file": name,
                       "warm": {**chunks, **percentiles(warm), "read_bytes_per_query": io_batch / len(queries)}})
        print(f"[lancedb] {p} qps={points[-1]['warm']['qps']} p50={points[-1]['warm']['p50_ms']} ms",
              file=sys.stderr, flush=True)
    for point, p in zip(points, a.points):
        point["cold"] = cold_point(lambda q: one(q, p), lambda qs: batch(qs, p), queries, [a.index], a.n_cold,
                                   a.n_cold_batch)
    s2 = status()
    return {"load_s": round(load_s, 3), "status_before": s0, "status_after_load": s1, "status_after_runs": s2,
            "ram_after_load": rss_delta(s0, s1), "ram_after_runs": rss_delta(s0, s2),
            "batch_size": a.batch, "points": points}


def _point(v: str) -> tuple[int, int]:
    nprobes, _, refine = v.partition(":")
    return int(nprobes), int(refine or 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--base", required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--partitions", type=int, default=1000)
    b.add_argument("--subvectors", type=int, default=32)
    s = sub.add_parser("search")
    s.add_argument("--index", required=True)
    s.add_argument("--queries", required=True)
    s.add_argument("--k", type=int, default=10)
    s.add_argument("--points", type=lambda v: [_point(x) for x in v.split(",")], default=[(8, 1)])
    s.add_argument("--batch", type=int, default=1000, help="query vectors per multi-vector search call")
    s.add_argument("--n-single", type=int, default=1000)
    s.add_argument("--n-cold", type=int, default=200)
    s.add_argument("--n-cold-batch", type=int, default=1000)
    for p in (b, s):
        p.add_argument("--metric", choices=("l2", "cosine"), required=True)
        p.add_argument("--json", required=True)
    a = ap.parse_args()
    result = cmd_build(a) if a.cmd == "build" else cmd_search(a)
    from importlib.metadata import version
    result["versions"] = {"numpy": np.__version__, "lancedb": version("lancedb"), "pyarrow": version("pyarrow")}
    Path(a.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
