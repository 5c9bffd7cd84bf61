"""Everything of the cluster that touches Ray: peers over actor handles, the actors' options (restarts,
placement groups), and who-am-I on a node. Ray is imported here (and only when a cluster is used).

Why plain actors rather than Ray Serve deployments (docs/scaling.md): a replica is stateful, with a data
directory on its node; it needs its own identity (shard, slot), placement next to no other copy of its shard
(one STRICT_SPREAD placement group per shard) and a role decided by the controller. Serve's replicas are
interchangeable copies behind its proxy, which would also add a hop to every query; here a search goes from
the router straight to a replica's gRPC port and Ray is not in that path at all.
"""
from __future__ import annotations

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError, RayTaskError

from vdb.cluster.peer import PeerGone, PeerUnreachable

ACTOR_CONCURRENCY = 64   # threads per actor: pings must get through while replication calls wait


class RayPeer:
    """A cluster member behind a Ray actor handle (the handle reaches its restarted incarnations too)."""

    def __init__(self, handle, key: str):
        self.handle, self.key = handle, key
        self.known: tuple[int, str] | None = None   # (pid, node id) of the incarnation last heard from

    def know(self, status: dict) -> None:
        """Remember which process answered (status of Replica.status / report)."""
        if "pid" in status and "node_id" in status:
            self.known = (int(status["pid"]), str(status["node_id"]))

    def call(self, method: str, *args, timeout: float, **kwargs):
        """Run the actor's method; PeerGone / PeerUnreachable as peer.py defines them; the method's own
        exception is raised as itself."""
        try:
            return ray.get(getattr(self.handle, method).remote(*args, **kwargs), timeout=timeout)
        except RayTaskError as e:
            raise e.as_instanceof_cause() from None
        except (GetTimeoutError, ActorUnavailableError) as e:
            raise PeerUnreachable(f"{self.key}: {type(e).__name__}") from None
        except (ActorDiedError, RayActorError) as e:
            raise PeerGone(f"{self.key}: {type(e).__name__}") from None

    def gone(self) -> bool | None:
        """Has the process we last heard from ended? Ray's actor table knows: it lists the live incarnation
        of each actor with its pid and node (a restarting actor, or one whose node died, has none)."""
        if self.known is None:
            return None
        try:
            # ray._private.state is Ray's GCS actor table accessor ("for debugging"); ray.util.state would need
            # the dashboard, which small clusters (and our tests) run without. One call, only after a failure.
            from ray._private import state as gcs
            table = gcs.actors(actor_state_name="ALIVE")
        except Exception:  # the accessor moved in another Ray version: cannot tell
            return None
        pid, node = self.known
        return not any(a.get("Pid") == pid and a.get("Address", {}).get("NodeID") == node
                       for a in table.values())

    def __repr__(self) -> str:
        return f"RayPeer({self.key})"


def node_id() -> str:
    """The Ray node this process runs on (a replica's directory is per node)."""
    return ray.get_runtime_context().get_node_id()


def node_ip() -> str:
    """This node's IP address as Ray knows it."""
    return ray.util.get_node_ip_address()


def peer_by_name(namespace: str):
    """A function name -> RayPeer of that named actor, or None if it does not exist (yet)."""
    def connect(name: str):
        try:
            return RayPeer(ray.get_actor(name, namespace=namespace), name)
        except ValueError:
            return None
    return connect


def controller_peer(spec) -> RayPeer:
    """The cluster's controller (it is created before any replica)."""
    return RayPeer(ray.get_actor(spec.controller_name, namespace=spec.namespace), spec.controller_name)


def actor_options(name: str, namespace: str, **extra) -> dict:
    """Options of every long-lived cluster actor: named, detached, restarted by Ray forever after a crash;
    a call is never retried by Ray (the protocol retries what is safe to repeat)."""
    return {"name": name, "namespace": namespace, "lifetime": "detached", "max_restarts": -1,
            "max_task_retries": 0, "max_concurrency": ACTOR_CONCURRENCY, **extra}


def connect(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Join a running Ray cluster (`address`), or start a local one for this process."""
    if ray.is_initialized():
        return
    from index.distributed.driver import OBJECT_STORE_BYTES
    if address:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    else:  # "local": a new instance, never one some other process started on this machine
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, object_store_memory=OBJECT_STORE_BYTES)
