"""Slow: a whole Ray node lost under load, and repeated SIGKILLs, on simulated clusters (one host, loopback).

A node is removed with its raylet and every process on it; Ray reschedules the replica's placement-group
bundle onto another node, where the replica starts with an empty directory and its (possibly new) primary
seeds it from a snapshot. Run with `make test-slow` (or pytest -m slow).
"""
from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (optional extra: pip install 'vdb[ray]')")

import vdb  # noqa: E402
from raycluster import Load, simulated_ray, vector  # noqa: E402
from vdb.cluster import deploy, rayside  # noqa: E402
from vdb.cluster.routing import make_router  # noqa: E402
from vdb.cluster.spec import ClusterSpec  # noqa: E402
from vdb.config import load_settings  # noqa: E402
from vdb.service.server import create_server  # noqa: E402

pytestmark = pytest.mark.slow
DIM = 16


def _wait(predicate, what, timeout=180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


class Serving:
    def __init__(self, spec):
        self.spec = spec
        deploy.up(spec, wait_s=240)
        self.router = make_router(rayside.controller_peer(spec), spec)
        self.server, port = create_server(self.router, load_settings({"port": 0}))
        self.server.start()
        self.target = f"127.0.0.1:{port}"

    def status(self):
        return deploy.status(self.spec)["shards"]

    def whole(self) -> bool:
        m = rayside.controller_peer(self.spec).call("shard_map", timeout=10)
        return all(sh["primary"] and len(sh["readers"]) == self.spec.replicas for sh in m["shards"])

    def digests(self, name):
        connect = rayside.peer_by_name(self.spec.namespace)
        return [[connect(self.spec.replica_name(s, r)).call("digest", name, timeout=60)
                 for r in range(self.spec.replicas)] for s in range(self.spec.shards)]

    def load_collection(self, name, n=1500):
        with vdb.Client(self.target) as c:
            c.create_collection(name, DIM, bootstrap_rows=200, head_ratio=0.05)
            c.upsert(name, np.arange(n), np.stack([vector(i, 1, DIM) for i in range(n)]), [{"v": 1}] * n)

    def close(self):
        self.server.stop(0).wait()
        self.router.close()
        deploy.down(self.spec)


def _assert_clean(load, serving, name):
    assert load.search_errors == [], load.search_errors[:5]
    assert load.stale_reads == [], load.stale_reads[:5]
    with vdb.Client(serving.target) as c:
        assert load.check(c) > 20
    for shard in serving.digests(name):
        assert all(d == shard[0] for d in shard), shard


def test_a_lost_node_is_replaced_from_a_live_replica_under_load(tmp_path):
    # head with no CPU for replicas + 3 workers: R=2 strictly spread, and a third node to move to
    with simulated_ray(nodes=4, cpus=2, head_cpus=0) as (rc, workers):
        spec = ClusterSpec(data_root=str(tmp_path / "data"), name="loss", shards=1, replicas=2, replica_cpus=0.5)
        serving = Serving(spec)
        try:
            serving.load_collection("c")
            before = serving.status()[0]
            p = before["primary"]
            lost_node = before["members"][p]["node_id"]
            victim = next(w for w in workers if w.node_id == lost_node)
            with Load(serving.target, "c", DIM, first_id=10_000) as load:
                _wait(lambda: len(load.ops) > 30, "load")
                t = time.monotonic()
                rc.remove_node(victim)
                _wait(lambda: serving.status()[0]["members"][p]["node_id"] not in (None, lost_node)
                      and serving.whole(), "the lost replica re-created on another node and in sync")
                recovered = time.monotonic() - t
                n = len(load.ops)
                _wait(lambda: len(load.ops) > n + 20, "load after recovery")
            after = serving.status()[0]
            nodes = {m["node_id"] for m in after["members"]}
            assert lost_node not in nodes and len(nodes) == 2
            assert after["primary"] == 1 - p and after["term"] > before["term"]
            links = rayside.peer_by_name(spec.namespace)(spec.replica_name(0, 1 - p)).call("status", timeout=10)
            assert links["links"][p]["sources"]["snapshots"] >= 1  # seeded from the live replica
            _assert_clean(load, serving, "c")
            print(f"\nnode lost -> replica back in sync elsewhere in {recovered:.1f} s; {load.searches} searches, "
                  f"{len(load.ops)} writes ({len(load.write_errors)} failed, retried by the client), 0 failed searches")
        finally:
            serving.close()


def test_repeated_sigkills_of_primaries_and_followers(tmp_path):
    with simulated_ray(nodes=3, cpus=2) as (rc, workers):
        spec = ClusterSpec(data_root=str(tmp_path / "data"), name="kills", shards=2, replicas=2, replica_cpus=0.5)
        serving = Serving(spec)
        try:
            serving.load_collection("c")
            with Load(serving.target, "c", DIM, first_id=10_000) as load:
                for round_ in range(6):
                    shards = serving.status()
                    s = round_ % 2
                    slot = shards[s]["primary"] if round_ % 3 != 2 else 1 - shards[s]["primary"]
                    pid = shards[s]["members"][slot]["pid"]
                    n = len(load.ops)
                    _wait(lambda: len(load.ops) > n + 10, "load")
                    os.kill(pid, signal.SIGKILL)
                    _wait(lambda: serving.status()[s]["members"][slot]["pid"] not in (None, pid) and serving.whole(),
                          f"round {round_}: replica back")
            assert load.write_errors == [], load.write_errors[:5]
            _assert_clean(load, serving, "c")
        finally:
            serving.close()
