"""What the Ray tests share: the simulated cluster (vdb/cluster/simulate.py) and a load generator with a model
of what the cluster must hold afterwards."""
from __future__ import annotations

import threading
import time

import numpy as np

import vdb
from vdb.cluster.simulate import simulated_ray  # noqa: F401 (re-exported for the test modules)
from vdb.errors import VdbError


def vector(i: int, version: int, dim: int) -> np.ndarray:
    return np.random.default_rng(i * 1_000_003 + version).normal(size=dim).astype(np.float32)


class Load:
    """Searches on `searchers` threads and one writer (upserts of new and existing ids, deletes) through a
    router. The writer reads each acknowledged write back at once (read-your-writes through the router, on
    whichever replica it lands). Every op is logged with its outcome, so the final state can be checked."""

    def __init__(self, target: str, name: str, dim: int, first_id: int, searchers: int = 2):
        self.target, self.name, self.dim, self.first_id = target, name, dim, first_id
        self.stop = threading.Event()
        self.search_errors: list[str] = []
        self.write_errors: list[str] = []
        self.stale_reads: list[str] = []
        self.searches = 0
        self.ops: list[tuple] = []          # (id, kind, version, acked, lsn, t_ack)
        self.threads = [threading.Thread(target=self._search, daemon=True) for _ in range(searchers)]
        self.threads.append(threading.Thread(target=self._write, daemon=True))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def _search(self):
        rng = np.random.default_rng(threading.get_ident() % 1000)
        with vdb.Client(self.target, retries=0, timeout=60) as c:
            while not self.stop.is_set():
                try:
                    res = c.search(self.name, rng.normal(size=(4, self.dim)).astype(np.float32), 5,
                                   use_cache=False)
                    assert res.ids.shape == (4, 5) and not res.partial
                    self.searches += 1
                except (VdbError, AssertionError) as e:
                    self.search_errors.append(repr(e))

    def _write(self):
        rng = np.random.default_rng(7)
        nxt, version = self.first_id, 1
        with vdb.Client(self.target, retries=0, timeout=60) as c:
            while not self.stop.is_set():
                version += 1
                if rng.random() < 0.25 and nxt > self.first_id + 5:
                    i = int(rng.integers(self.first_id, nxt))
                    self._op(c, i, "delete", version)
                else:
                    i = nxt if rng.random() < 0.6 else int(rng.integers(self.first_id, nxt + 1))
                    nxt = max(nxt, i + 1)
                    self._op(c, i, "upsert", version)

    def _op(self, c, i: int, kind: str, version: int):
        try:
            if kind == "upsert":
                lsn = c.upsert(self.name, [i], vector(i, version, self.dim)[None], [{"v": version}])
            else:
                lsn = c.delete(self.name, [i])
        except VdbError as e:
            self.ops.append((i, kind, version, False, None, time.monotonic()))
            self.write_errors.append(repr(e))
            return
        self.ops.append((i, kind, version, True, lsn, time.monotonic()))
        try:
            got = c.get(self.name, [i])
        except VdbError as e:
            self.search_errors.append(f"read-back: {e!r}")
            return
        want = [{"v": version}] if kind == "upsert" else []
        if [r.payload for r in got] != want:
            self.stale_reads.append(f"id {i}: {kind} v{version} acknowledged, read back {got}")

    def allowed(self) -> dict[int, list]:
        """Per id, the states it may end in: after its last acknowledged op, or after any failed op that
        followed it (it may or may not have been applied). A state: None (absent) or the version."""
        out: dict[int, list] = {}
        for i, kind, version, acked, _lsn, _t in self.ops:
            state = version if kind == "upsert" else None
            out[i] = [state] if acked else out.get(i, [None]) + [state]  # ids start absent
        return out

    def check(self, db) -> int:
        """Compare `db` (a router client) with the ops; returns how many ids were checked."""
        allowed = self.allowed()
        ids = sorted(allowed)
        got = {r.id: r for r in db.get(self.name, ids)}
        for i in ids:
            r = got.get(i)
            state = r.payload["v"] if r is not None else None
            ok = allowed[i]
            assert state in ok, f"id {i}: holds {state}, allowed {ok}"
            if r is not None:
                np.testing.assert_array_equal(r.vector, vector(i, state, self.dim))
        return len(ids)
