"""Starting, inspecting and stopping a cluster on Ray, and snapshots of a cluster's collection.

`up` creates the controller (pinned to the head node, where its state file lives), one placement group per
shard (R bundles; STRICT_SPREAD puts each on its own node) with a replica actor in each bundle, and any routers.
All are detached, named actors restarted by Ray after a crash, so the cluster outlives the `vdbctl` process
that started it; `down` removes them. A cluster is found again by its name (the controller keeps its spec).

A cluster snapshot (layout: clustersnap.py) holds one collection snapshot per shard, each taken online on that
shard's primary and pulled off its node in chunks; restoring pushes each shard's snapshot to the primary of the
same shard of a cluster with as many shards, whose followers are then seeded from it like any new replica.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from pathlib import Path

import ray
from ray.util.placement_group import get_placement_group, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from vdb.cluster import clustersnap, rayside, transfer
from vdb.cluster.peer import PeerUnreachable
from vdb.cluster.controller import Controller
from vdb.cluster.replica import Replica
from vdb.cluster.routing import RouterServer
from vdb.cluster.spec import SPREADS, ClusterSpec
from vdb.engine.snapshot import MANIFEST, is_archive, pack, unpacked, verify_snapshot
from vdb.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError, UnavailableError

log = logging.getLogger(__name__)
HEAD = {"node:__internal_head__": 0.001}   # Ray's resource of the head node


def up(spec: ClusterSpec, *, routers: int = 0, router_port: int = 50050, wait_s: float = 120.0) -> dict:
    """Deploy `spec` on the connected Ray cluster; returns once every shard has a primary and every replica
    is in sync (the routers' addresses included)."""
    spec = spec.resolved_root()
    if rayside.peer_by_name(spec.namespace)(spec.controller_name) is not None:
        raise AlreadyExistsError(f"a cluster named {spec.name!r} is running in this Ray cluster")
    ray.remote(Controller).options(**rayside.actor_options(spec.controller_name, spec.namespace, num_cpus=0,
                                                           resources=HEAD)).remote(spec.to_dict())
    for s in range(spec.shards):
        pg = placement_group([{"CPU": spec.replica_cpus}] * spec.replicas, strategy=SPREADS[spec.spread],
                             name=_pg_name(spec, s), lifetime="detached")
        try:
            ray.get(pg.ready(), timeout=wait_s)
        except ray.exceptions.GetTimeoutError:
            down(spec)
            raise UnavailableError(f"cannot place {spec.replicas} replicas of {spec.replica_cpus} CPU each "
                                   f"({spec.spread} spread) on this Ray cluster: {len(ray.nodes())} node(s), "
                                   f"{ray.available_resources().get('CPU', 0)} CPUs free (on one node: "
                                   f"--spread soft or --replicas 1)") from None
        for r in range(spec.replicas):
            strategy = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=r)
            ray.remote(Replica).options(**rayside.actor_options(
                spec.replica_name(s, r), spec.namespace, num_cpus=spec.replica_cpus,
                scheduling_strategy=strategy)).remote(spec.to_dict(), s, r)
    wait_ready(spec, wait_s)
    addresses = []
    for i in range(routers):
        port = router_port + i if router_port else 0
        h = ray.remote(RouterServer).options(**rayside.actor_options(spec.router_name(i), spec.namespace,
                                                                     num_cpus=0, resources=HEAD)
                                             ).remote(spec.to_dict(), port)
        try:
            addresses.append(ray.get(h.address.remote(), timeout=wait_s))
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as e:
            ray.kill(h, no_restart=True)  # a port in use would fail every restart the same way
            raise UnavailableError(f"router {i} did not start on port {port} (in use?): {e}") from None
    return {**status(spec), "routers": addresses}


def wait_ready(spec: ClusterSpec, timeout: float) -> dict:
    """Block until every shard has a primary and R readable replicas in the shard map."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            m = controller(spec).call("shard_map", timeout=spec.call_timeout_s)
        except PeerUnreachable as e:  # a controller still starting (a busy node) is waited for, like the rest
            m = f"the controller does not answer yet ({e})"
        else:
            if len(m["shards"]) == spec.shards and all(
                    sh["primary"] and len(sh["readers"]) == spec.replicas for sh in m["shards"]):
                return m
        if time.monotonic() > deadline:
            raise UnavailableError(f"cluster {spec.name!r} not ready after {timeout:.0f} s: {m}")
        time.sleep(0.2)


def controller(spec: ClusterSpec):
    """The controller's peer (NotFoundError if no such cluster runs)."""
    peer = rayside.peer_by_name(spec.namespace)(spec.controller_name)
    if peer is None:
        raise NotFoundError(f"no cluster named {spec.name!r} in namespace {spec.namespace!r} of this Ray cluster")
    return peer


def find(name: str, namespace: str = "vdb") -> ClusterSpec:
    """The spec of a running cluster, by name."""
    probe = ClusterSpec(data_root="-", name=name, namespace=namespace)
    return ClusterSpec.from_dict(controller(probe).call("spec_dict", timeout=probe.call_timeout_s))


def status(spec: ClusterSpec) -> dict:
    """The controller's view: each shard's term, primary, in-sync set and members; the routers."""
    out = controller(spec).call("status", timeout=spec.call_timeout_s)
    routers = []
    for i in range(64):
        peer = rayside.peer_by_name(spec.namespace)(spec.router_name(i))
        if peer is None:
            break
        routers.append(peer.call("address", timeout=spec.call_timeout_s))
    return {**out, "routers": routers}


def down(spec: ClusterSpec, *, purge: bool = False) -> None:
    """Stop routers, replicas and the controller, free the placement groups; `purge` also deletes the data."""
    connect = rayside.peer_by_name(spec.namespace)
    names = [spec.router_name(i) for i in range(64)] + [spec.replica_name(s, r) for s, r in spec.slots()]
    for name in names + [spec.controller_name]:
        peer = connect(name)
        if peer is None:
            continue
        if name != spec.controller_name:
            try:
                peer.call("close", timeout=spec.call_timeout_s)
            except Exception as e:  # it is killed anyway
                log.warning("closing %s: %r", name, e)
        ray.kill(peer.handle, no_restart=True)
    for s in range(spec.shards):
        try:
            remove_placement_group(get_placement_group(_pg_name(spec, s)))
        except ValueError:
            pass
    if purge:
        root = Path(spec.data_root)
        for d in [spec.controller_dir()] + [p / f"s{s}r{r}" for p in root.glob("*") for s, r in spec.slots()]:
            shutil.rmtree(d, ignore_errors=True)


def _pg_name(spec: ClusterSpec, shard: int) -> str:
    return f"{spec.name}:pg{shard}"


def _primary(spec: ClusterSpec, shard: int):
    slot = controller(spec).call("primary_slot", shard, timeout=spec.call_timeout_s)
    if slot is None:
        raise UnavailableError(f"shard {shard} of {spec.name!r} has no primary now; retry")
    return rayside.peer_by_name(spec.namespace)(spec.replica_name(shard, slot))


# -- snapshots of a cluster's collection ---------------------------------------------------------------------
def snapshot(spec: ClusterSpec, collection: str, out) -> dict:
    """Snapshot `collection` online, shard by shard on each primary, into `out` (a new directory or .tar)."""
    out = Path(out)
    if out.exists():
        raise InvalidArgumentError(f"{out} already exists")
    staging = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}") if is_archive(out) else out
    chunk = int(spec.chunk_mb * (1 << 20))
    try:
        manifests = []
        for s in range(spec.shards):
            peer = _primary(spec, s)
            token, manifest = peer.call("snapshot_begin", collection, timeout=spec.call_timeout_s)
            try:
                shard_dir = clustersnap.shard_dir(staging, s)
                (shard_dir / "index").mkdir(parents=True)
                (shard_dir / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
                for rel, want in manifest["files"].items():
                    (shard_dir / "index" / rel).parent.mkdir(parents=True, exist_ok=True)
                    with open(shard_dir / "index" / rel, "wb") as f:
                        for offset in range(0, want["bytes"], chunk):
                            f.write(peer.call("snapshot_chunk", token, rel, offset, chunk,
                                              timeout=spec.call_timeout_s))
                verify_snapshot(shard_dir)
            finally:
                peer.call("snapshot_end", token, timeout=spec.call_timeout_s)
            manifests.append(manifest)
        summary = clustersnap.write_summary(staging, collection, manifests)
        if staging != out:
            pack(staging, out)
        return summary
    except BaseException:
        if staging == out:
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        if staging != out:
            shutil.rmtree(staging, ignore_errors=True)


def restore(spec: ClusterSpec, src, collection: str, workdir) -> dict:
    """Restore a snapshot as the new `collection` of a running cluster (each shard on its primary, which then
    seeds its followers). Returns {"lsns": [...], "collection": ...}."""
    lsns = []
    with unpacked(src, workdir) as snap:
        dirs = clustersnap.shard_dirs(snap, spec.shards)
        for shard_dir in dirs:  # every shard checks out before any is restored: never half a collection
            verify_snapshot(shard_dir)
        try:
            for s, shard_dir in enumerate(dirs):
                lsns.append(transfer.push(_primary(spec, s), shard_dir, int(spec.chunk_mb * (1 << 20)),
                                          spec.transfer_timeout_s + spec.call_timeout_s,
                                          begin=(0, collection, "", []), as_primary=True))
        except BaseException:
            _drop_restored(spec, collection, len(lsns))
            raise
    return {"collection": collection, "lsns": lsns}


def _drop_restored(spec: ClusterSpec, collection: str, shards: int) -> None:
    """Undo a restore that failed on a later shard: drop it from the first `shards` (best effort, logged)."""
    for s in range(shards):
        try:
            _primary(spec, s).call("drop_collection", collection, None, timeout=spec.call_timeout_s)
        except Exception as e:
            log.error("restore of %r failed on shard %d; dropping it from shard %d failed too (%r): drop it by "
                      "hand", collection, shards, s, e)
