"""A multi-node Ray cluster simulated on this host (ray.cluster_utils.Cluster: one raylet per "node"), on
loopback only, with its own Ray temp directory so that no other process's `ray.init()` finds it, and small
object stores. Plus a load generator with a model of what the cluster must hold afterwards."""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager

import numpy as np

import vdb
from vdb.errors import VdbError

STORE = 80 << 20  # object store per node (Ray's floor is ~75 MB)


@contextmanager
def simulated_ray(nodes: int = 3, cpus: int = 2, head_cpus: int | None = None):
    """Yield (cluster, worker nodes): a head (`head_cpus`, default `cpus` logical CPUs) and nodes - 1 workers
    with `cpus` each."""
    import ray
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster
    saved = {k: os.environ.get(k) for k in ("RAY_TMPDIR", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    tmp = tempfile.mkdtemp(prefix="vdbray-", dir="/tmp")  # short: Ray's socket paths live below it
    os.environ["RAY_TMPDIR"] = tmp  # Ray's address file and sessions: no other process's ray.init() finds us
    # Loopback: Ray then takes 127.0.0.1 as every node's address. Its processes read the variable when they
    # start; this one read it when it imported ray, hence the constant too (restored afterwards).
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    enabled, ray_constants.ENABLE_RAY_CLUSTER = ray_constants.ENABLE_RAY_CLUSTER, False
    cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=cpus if head_cpus is None else head_cpus,
                                                                object_store_memory=STORE,
                                                                include_dashboard=False))
    try:
        workers = [cluster.add_node(num_cpus=cpus, object_store_memory=STORE) for _ in range(nodes - 1)]
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        cluster.wait_for_nodes()
        yield cluster, workers
    finally:
        ray.shutdown()
        cluster.shutdown()
        ray_constants.ENABLE_RAY_CLUSTER = enabled
        shutil.rmtree(tmp, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


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
