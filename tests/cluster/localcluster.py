"""A cluster in this process: the real Controller, Replicas (each with its gRPC endpoint) and router, joined by
LocalPeers instead of Ray. "Nodes" are node ids (separate directories). Killing a replica makes every call
to it fail as a dead process's would, closes it without a checkpoint, and restarting runs recovery on its
directory (or on an empty one on another node): the protocol is the same as on Ray, only faster to test."""
from __future__ import annotations

import time

from vdb.cluster.controller import Controller
from vdb.cluster.peer import LocalPeer
from vdb.cluster.replica import Replica
from vdb.cluster.routing import make_router
from vdb.cluster.spec import ClusterSpec

FAST = dict(ping_s=0.05, lease_s=0.4, follower_lease_s=0.8, call_timeout_s=5.0)


class LocalCluster:
    def __init__(self, root, *, shards=1, replicas=2, monitor=True, settings=None, **spec):
        self.spec = ClusterSpec(data_root=str(root), shards=shards, replicas=replicas,
                                settings={"checkpoint_interval_s": 3600, **(settings or {})}, **{**FAST, **spec})
        self.peers: dict[str, LocalPeer] = {}
        self.controller = Controller(self.spec.to_dict(), connect=self.peers.get, monitor=monitor)
        self.cpeer = LocalPeer(self.controller, "controller")
        for s, r in self.spec.slots():
            self.start(s, r)
        self.routers = []

    def name(self, s, r) -> str:
        return self.spec.replica_name(s, r)

    def replica(self, s, r) -> Replica:
        return self.peers[self.name(s, r)].obj

    def start(self, s, r, node: str | None = None) -> Replica:
        """Start (or restart) replica (s, r) on `node` (default: node n<r>, where it ran before)."""
        rep = Replica(self.spec.to_dict(), s, r, controller=self.cpeer, node_id=node or f"n{r}")
        peer = self.peers.get(self.name(s, r))
        if peer is None:
            self.peers[self.name(s, r)] = LocalPeer(rep, self.name(s, r))
        else:  # the same "handle" reaches the new incarnation, as a Ray actor handle does
            peer.obj, peer.dead = rep, False
        return rep

    def kill(self, s, r) -> None:
        """The process dies: calls fail from now on; nothing is checkpointed."""
        peer = self.peers[self.name(s, r)]
        peer.kill()
        rep = peer.obj
        if rep.leader is not None:
            rep.leader.stop()
        rep.server.stop(0).wait()
        rep.db.close(checkpoint=False)

    def primary_of(self, s) -> int:
        return self.controller.shards[s]["primary"]

    def router(self):
        r = make_router(self.cpeer, self.spec, timeout_s=20.0)
        self.routers.append(r)
        return r

    def wait(self, predicate, what: str, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = predicate()
            if out:
                return out
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}; status: {self.controller.status()}")

    def wait_in_sync(self, s=None, timeout: float = 30.0) -> None:
        """Until every shard has a primary and all its other replicas in the in-sync set."""
        shards = range(self.spec.shards) if s is None else [s]

        def done():
            for i in shards:
                sh = self.controller.shards[i]
                if sh["primary"] is None or len(sh["in_sync"]) != self.spec.replicas - 1:
                    return False
                if len(self.controller.shard_map()["shards"][i]["readers"]) != self.spec.replicas:
                    return False
            return True
        self.wait(done, "every replica in sync", timeout)

    def close(self) -> None:
        for r in self.routers:
            r.close()
        self.controller.stop()
        for peer in self.peers.values():
            if not peer.dead:
                peer.obj.close()
