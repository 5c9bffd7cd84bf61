"""Where a search's time goes during bench_updates' mixed phase (a diagnostic, issue 13): runs
tools/bench_updates.py with the same arguments, timing each search's phases (head search, posting-scan kernel,
memtable scan, merge, head-index lock wait) in wall and thread-CPU time, plus its context switches and page faults
(getrusage RUSAGE_THREAD), then prints the means of the slowest 1% and of the median searches, idle and during
writes. The timers add a few microseconds per call, so its latencies are not the benchmark's.

    .venv/bin/python tools/benchkit/search_phases.py --n 1000000 --rate 5000 --out /tmp/phases.json
"""
import sys, threading, time, json, resource
from pathlib import Path
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "tools"))
import numpy as np
import bench_updates as B
import vdb.engine.reads as R
import index.spann as S
import index.centroids as C
import vdb.engine.memtable as M

tl = threading.local()
def rec(name, fn):
    def w(*a, **k):
        ph = getattr(tl, "ph", None)
        if ph is None:
            return fn(*a, **k)
        t = time.perf_counter(); c = time.thread_time()
        try:
            return fn(*a, **k)
        finally:
            ph[name] = ph.get(name, 0.0) + time.perf_counter() - t
            ph[name + "_cpu"] = ph.get(name + "_cpu", 0.0) + time.thread_time() - c
    return w
R.search_exact = rec("memscan", R.search_exact)
R.merge_candidates = rec("merge", R.merge_candidates)
S.search_many = rec("kernel", S.search_many)
C.HeadIndex.search = rec("headsearch", C.HeadIndex.search)
_rl = C._ReadWriteLock.read
from contextlib import contextmanager
@contextmanager
def read(self):
    ph = getattr(tl, "ph", None)
    t = time.perf_counter()
    with _rl(self):
        if ph is not None: ph["rwwait"] = ph.get("rwwait", 0.0) + time.perf_counter() - t
        yield
C._ReadWriteLock.read = read
rows = []
def latencies(db, name, queries, nprobe, stop=None, limit=None):
    out = []; i = 0
    while (stop is None or not stop.is_set()) and (limit is None or i < limit):
        tl.ph = {}
        ru = resource.getrusage(resource.RUSAGE_THREAD)
        t = time.perf_counter(); c = time.thread_time()
        db.search(name, queries[i % len(queries)], top_k=10, nprobe=nprobe, use_cache=False)
        w = time.perf_counter() - t; tl.ph["wall"] = w; tl.ph["cpu"] = time.thread_time() - c
        ru2 = resource.getrusage(resource.RUSAGE_THREAD)
        tl.ph["vol"] = (ru2.ru_nvcsw - ru.ru_nvcsw) / 1e3; tl.ph["invol"] = (ru2.ru_nivcsw - ru.ru_nivcsw) / 1e3
        tl.ph["minflt"] = (ru2.ru_minflt - ru.ru_minflt) / 1e3; tl.ph["majflt"] = (ru2.ru_majflt - ru.ru_majflt) / 1e3
        tl.ph["idle"] = stop is None
        rows.append(tl.ph); tl.ph = None
        out.append(w); i += 1
    return np.array(out)
B.latencies = latencies
try:
    B.main()
finally:
    busy = [r for r in rows if not r["idle"]]; idle = [r for r in rows if r["idle"]]
    def summ(rs, label):
        w = np.array([r["wall"] for r in rs]); p99 = np.percentile(w, 99)
        keys = sorted({k for r in rs for k in r if k != "idle"})
        for sel, nm in ((w >= p99, "slowest1%"), ((w > np.percentile(w, 45)) & (w < np.percentile(w, 55)), "median")):
            sub = [r for r, s in zip(rs, sel) if s]
            print(label, nm, len(sub), {k: round(1e3 * float(np.mean([r.get(k, 0) for r in sub])), 3) for k in keys})
    summ(idle, "IDLE"); summ(busy, "BUSY")
    Path(sys.argv[sys.argv.index("--out") + 1]).with_suffix(".phases.json").write_text(json.dumps(rows)) if "--out" in sys.argv else None
