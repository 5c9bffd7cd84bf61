"""One copy of one shard: a Database in the replica's own directory on its node, a gRPC endpoint serving it
(vdb/cluster/replicadb.py), and its part in replication: primary (a shipping.Leader) or follower.

It runs as a Ray actor (vdb/cluster/rayside.py wraps this class; Ray restarts it after a crash, on the same
node with its directory, or elsewhere with an empty one), and in-process in tests with LocalPeers. Its
methods are what the controller and the shard's primary call; nothing here blocks on the controller while
serving one of the controller's own calls.

Serving reads needs a lease: a primary's from the controller's pings (lease_s), a follower's from its
primary's in-sync messages (follower_lease_s). So a replica cut off from the cluster stops answering before
anyone acknowledges a write without it.
"""
from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass

import vdb
from vdb.cluster.backlog import Backlog
from vdb.cluster.peer import PeerGone, PeerUnreachable, StaleTerm
from vdb.cluster.shipping import Leader
from vdb.cluster.spec import ClusterSpec
from vdb.cluster.state import ReplicaState
from vdb.cluster.transfer import Incoming, Outgoing
from vdb.config import load_settings
from vdb.engine.snapshot import content_digest, restore_snapshot, take_snapshot
from vdb.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError, UnavailableError

log = logging.getLogger(__name__)
SERVER_KEYS = ("api_key", "read_only_api_key", "tls_cert", "tls_key", "max_message_mb", "workers")


@dataclass(frozen=True)
class CollectionView:
    uuid: str
    history: list
    collection: object  # vdb.engine.collection.Collection


class Replica:
    def __init__(self, spec: dict, shard: int, slot: int, *, controller=None, node_id: str | None = None):
        self.spec = ClusterSpec.from_dict(spec)
        self.shard, self.slot = shard, slot
        self.key = self.spec.replica_name(shard, slot)
        self.incarnation = uuid.uuid4().hex
        if node_id is None or controller is None:
            from vdb.cluster import rayside
            node_id = node_id or rayside.node_id()
            controller = controller or rayside.controller_peer(self.spec)
        self.node_id, self.controller = node_id, controller
        self.path = self.spec.replica_dir(shard, slot, node_id)
        # relocate_rows off on every node, the primary too: a follower's log must stay a copy of its primary's,
        # and a primary may be deposed between choosing rows and logging them (vdb/engine/relocation.py); a
        # cluster's vector files free whole blocks of dead rows only
        self.db = vdb.connect(self.path / "db", **{**self.spec.settings, "relocate_rows": False})
        self.state = ReplicaState(self.path)
        self.term = self.state.term
        self.role, self.leader = "follower", None
        self._lock = threading.RLock()           # role, term and the catalog
        self._drained = threading.Condition(self._lock)
        self._writers = 0
        self._apply_lock = threading.Lock()      # a follower takes one primary's records at a time
        self.primary_lease_until = self.follower_lease_until = 0.0
        self.backlogs: dict[str, Backlog] = {}
        self._reconcile()
        idle_s = 2 * (self.spec.transfer_timeout_s + self.spec.call_timeout_s)  # a sender's call surely gave up
        self.incoming = Incoming(self.path / "incoming", idle_s)
        self.outgoing = Outgoing(self.path / "outgoing", idle_s)
        self.host = self._host()
        self.server, port = self._serve()
        self.address = f"{self.host}:{port}"
        threading.Thread(target=self._register, daemon=True, name=f"vdb-register:{self.key}").start()
        log.info("%s up at %s (node %s, term %d)", self.key, self.address, node_id[:8], self.term)

    def _reconcile(self) -> None:
        """The Database and cluster.json must agree: what only one of them knows was never acknowledged."""
        names = set(self.db.list_collections())
        for name in names - set(self.state.collections):
            self.db.drop_collection(name)  # created (or half seeded) but not recorded
        for name in set(self.state.collections) - names:
            self.state.forget(name)
        for name in self.db.list_collections():
            self._attach_backlog(name)

    def _attach_backlog(self, name: str) -> None:
        b = self.backlogs[name] = Backlog(int(self.spec.backlog_mb * (1 << 20)), on_new=self._new_record)
        self.db.collection(name).on_logged = b.add

    def _new_record(self) -> None:
        leader = self.leader
        if leader is not None:
            leader.notify_new()

    def _host(self) -> str:
        if self.spec.host != "node":
            return self.spec.host
        from vdb.cluster import rayside
        return rayside.node_ip()

    def _serve(self):
        from vdb.cluster.replicadb import ReplicaDB
        from vdb.service.server import create_server
        server_settings = {k: v for k, v in self.spec.settings.items() if k in SERVER_KEYS}
        server, port = create_server(ReplicaDB(self), load_settings({**server_settings, "host": self.host,
                                                                     "port": 0}))
        server.start()
        return server, port

    def _register(self) -> None:
        delay = 0.05
        while True:
            try:
                self.controller.call("register", self.shard, self.slot, self.status(),
                                     timeout=self.spec.call_timeout_s)
                return
            except (PeerGone, PeerUnreachable) as e:
                log.info("%s: controller not reachable yet (%r)", self.key, e)
                time.sleep(delay)
                delay = min(2 * delay, 2.0)

    # -- what the controller calls ----------------------------------------------------------------------
    def status(self) -> dict:
        """Who and where this replica is, its role and term, and how far each collection got."""
        leader = self.leader
        return {"key": self.key, "shard": self.shard, "slot": self.slot, "incarnation": self.incarnation,
                "address": self.address, "node_id": self.node_id, "pid": os.getpid(), "term": self.term,
                "role": self.role, "readable": self.readable(),
                "positions": {n: v.collection.applied_lsn for n, v in self.collections_view().items()},
                "links": leader.info() if leader is not None else {}}

    def ping(self, term: int, primary_slot: int | None, sent_at: float | None = None) -> dict:
        """The controller's heartbeat: it carries the current term; the primary's lease is renewed by one sent
        (wall clock `sent_at`) less than lease_s / 2 ago: the controller counts on no later arrival."""
        with self._lock:
            if term > self.term:
                self._adopt(term)
            fresh = sent_at is not None and time.time() - sent_at < self.spec.lease_s / 2
            if self.role == "primary" and term == self.term and primary_slot == self.slot and fresh:
                self.primary_lease_until = time.monotonic() + self.spec.lease_s
        return self.status()

    def become_primary(self, term: int, followers: dict, hold_s: float = 0.0) -> dict:
        """Lead the shard in `term` (a new one): every collection's history gets the term's first LSN."""
        with self._lock:
            if term <= self.term:
                raise StaleTerm(f"{self.key} already saw term {self.term}; cannot lead term {term}")
            self._adopt(term)
            for name, v in self.collections_view().items():
                self.state.set_collection(name, v.uuid, v.history + [[term, v.collection.applied_lsn + 1]])
            self.role = "primary"
            self.follower_lease_until = self.primary_lease_until = 0.0  # the controller's next ping grants it
            self.leader = leader = Leader(self, term, hold_until=time.monotonic() + hold_s)
        for slot, peer in followers.items():
            leader.follow(int(slot), peer)
        log.warning("%s leads shard %d in term %d", self.key, self.shard, term)
        return self.status()

    def become_follower(self, term: int) -> None:
        """Someone else leads `term` (or will): stop serving until that primary says we are in sync."""
        with self._lock:
            if term < self.term:
                raise StaleTerm(f"{self.key} already saw term {self.term}")
            self._adopt(term)
            self.follower_lease_until = 0.0

    def follow(self, term: int, slot: int, peer) -> None:
        """(Primary) replicate to follower `slot` too, through `peer`."""
        leader = self.leader
        if leader is not None and leader.term == term:
            leader.follow(int(slot), peer)

    def step_down(self, term: int) -> None:
        """(Primary) a newer term exists: become a follower (called by our own Leader)."""
        with self._lock:
            if self.leader is not None and self.leader.term == term:
                self._end_leadership()

    def _adopt(self, term: int) -> None:
        """A newer term: remember it durably; a primary of an older one steps down. Lock held."""
        if term > self.term:
            self.state.set_term(term)
            self.term = term
            if self.leader is not None:
                self._end_leadership()

    def _end_leadership(self) -> None:
        leader, self.leader, self.role = self.leader, None, "follower"
        self.primary_lease_until = self.follower_lease_until = 0.0
        leader.stop()
        deadline = time.monotonic() + self.spec.call_timeout_s
        while self._writers and time.monotonic() < deadline:  # let in-flight writes finish locally
            self._drained.wait(0.1)

    # -- serving (replicadb.py) -------------------------------------------------------------------------
    def readable(self) -> bool:
        """May this replica answer reads now (primary with a fresh lease, or an in-sync follower)?"""
        now = time.monotonic()
        return now < (self.primary_lease_until if self.role == "primary" else self.follower_lease_until)

    def check_readable(self) -> None:
        if not self.readable():
            raise UnavailableError(f"{self.key} is not serving reads now ({self.role}, term {self.term}: catching "
                                   f"up, or its lease ran out); another replica can answer")

    @contextmanager
    def writing(self):
        """The Leader, for one write; UNAVAILABLE unless this is a primary with a fresh lease."""
        with self._lock:
            if self.leader is None or time.monotonic() >= self.primary_lease_until:
                raise UnavailableError(f"{self.key} is not the primary of shard {self.shard} (term {self.term})")
            self._writers += 1
            leader = self.leader
        try:
            yield leader
        finally:
            with self._lock:
                self._writers -= 1
                self._drained.notify_all()

    def create_collection(self, name, dim, metric, exist_ok, options, timeout) -> dict:
        """(Primary) create, record and replicate a collection; returns once every in-sync follower has it."""
        with self.writing() as leader:
            with self._lock:
                existed = name in self.state.collections
                info = self.db.create_collection(name, dim, metric, exist_ok=exist_ok, **options)
                if existed:
                    return info
                self.state.set_collection(name, uuid.uuid4().hex, [[leader.term, 1]])
                self._attach_backlog(name)
            leader.wait_catalog(leader.catalog_changed(), timeout)
            return info

    def drop_collection(self, name: str, timeout) -> None:
        """(Primary) drop a collection everywhere; returns once every in-sync follower dropped it."""
        with self.writing() as leader:
            with self._lock:
                self.db.drop_collection(name)
                self.state.forget(name)
                self.backlogs.pop(name, None)
            leader.wait_catalog(leader.catalog_changed(), timeout)

    def collections_view(self) -> dict[str, CollectionView]:
        """Every collection with its incarnation, term history and open Collection."""
        with self._lock:
            out = {}
            for name, e in self.state.collections.items():
                try:
                    c = self.db.collection(name)
                except NotFoundError:
                    continue
                if c.on_logged is None and name in self.backlogs:  # the Database reopened it after a failure
                    c.on_logged = self.backlogs[name].add
                out[name] = CollectionView(e["uuid"], [list(h) for h in e["history"]], c)
            return out

    # -- what the primary calls on its followers ----------------------------------------------------------
    def _check_term(self, term: int) -> None:
        with self._lock:
            if term < self.term:
                raise StaleTerm(f"{self.key} is in term {self.term}, the caller in {term}")
            self._adopt(term)
            if self.role == "primary":
                raise StaleTerm(f"{self.key} leads term {self.term} itself")

    def report(self, term: int) -> dict:
        """What this follower holds: per collection its incarnation, history and last LSN."""
        self._check_term(term)
        return {"incarnation": self.incarnation, "pid": os.getpid(), "node_id": self.node_id,
                "collections": {n: {"uuid": v.uuid, "history": v.history, "last_lsn": v.collection.applied_lsn}
                                for n, v in self.collections_view().items()}}

    def replicate(self, term: int, batch: dict, in_sync: bool) -> dict:
        """Apply the primary's records (skipping any already held); an in-sync follower's lease is renewed."""
        with self._apply_lock:
            self._check_term(term)
            positions = {}
            for name, part in batch.items():
                c = self.db.collection(name)
                if self.state.uuid(name) != part["uuid"]:
                    raise InvalidArgumentError(f"{self.key}: {name!r} is another incarnation than the primary's")
                if self.state.history(name) != part["history"]:
                    self.state.set_collection(name, part["uuid"], part["history"])  # before the records
                records = [r for r in part["records"] if r[0] > c.applied_lsn]
                if records and records[0][0] != c.applied_lsn + 1:
                    raise InvalidArgumentError(f"{self.key}: {name!r} is at LSN {c.applied_lsn}, the primary "
                                               f"sent {records[0][0]}..")
                positions[name] = c.apply_replicated(records) if records else c.applied_lsn
            with self._lock:
                if self.term == term:
                    self.follower_lease_until = time.monotonic() + self.spec.follower_lease_s if in_sync else 0.0
            return positions

    def drop_local(self, term: int, name: str) -> None:
        """Drop a collection the primary no longer has."""
        with self._apply_lock:
            self._check_term(term)
            self._drop_here(name)

    def _drop_here(self, name: str) -> None:
        with self._lock:
            if name in self.db.list_collections():
                self.db.drop_collection(name)
            self.state.forget(name)
            self.backlogs.pop(name, None)

    def install_begin(self, term: int, name: str, uuid_: str, history: list, manifest: dict,
                      as_primary: bool = False) -> str:
        """Start receiving a snapshot of `name` (a seed from the primary, or a restore on the primary)."""
        if not as_primary:
            self._check_term(term)
        return self.incoming.begin(manifest, name=name, uuid=uuid_, history=history, as_primary=as_primary,
                                   term=term)

    def install_chunk(self, token: str, rel: str, offset: int, data: bytes) -> None:
        """One chunk of a snapshot being received."""
        self.incoming.chunk(token, rel, offset, data)

    def install_end(self, token: str) -> int:
        """Verify and restore a received snapshot (replacing a collection of that name); returns its LSN."""
        try:
            snap, manifest, meta = self.incoming.end(token)
            if meta["as_primary"]:
                return self._restore_as_primary(meta["name"], snap)
            with self._apply_lock:
                self._check_term(meta["term"])  # a newer primary may have come meanwhile
                self._drop_here(meta["name"])
                restore_snapshot(self.db, meta["name"], snap)
                with self._lock:
                    self.state.set_collection(meta["name"], meta["uuid"], meta["history"])
                    self._attach_backlog(meta["name"])
            return manifest["lsn"]
        finally:
            self.incoming.discard(token)

    def _restore_as_primary(self, name: str, snap) -> int:
        with self.writing() as leader:
            with self._lock:
                if name in self.state.collections:  # as a restore on one node says it
                    raise AlreadyExistsError(f"collection {name!r} already exists")
                manifest = restore_snapshot(self.db, name, snap)
                self.state.set_collection(name, uuid.uuid4().hex, [[leader.term, 1]])
                self._attach_backlog(name)
            leader.wait_catalog(leader.catalog_changed(), self.spec.transfer_timeout_s)  # followers get seeded
            return manifest["lsn"]

    # -- snapshots out ------------------------------------------------------------------------------------
    @contextmanager
    def local_snapshot(self, name: str):
        """(directory, uuid, history) of a fresh snapshot of `name`, removed afterwards."""
        v = self.collections_view()[name]
        snap = self.outgoing.seed_path()
        try:
            take_snapshot(v.collection, snap)
            yield snap, v.uuid, v.history
        finally:
            shutil.rmtree(snap, ignore_errors=True)

    def snapshot_begin(self, name: str) -> tuple[str, dict]:
        """(token, manifest) of a snapshot of `name` taken now on this node, to be pulled with snapshot_chunk."""
        self.check_readable()
        return self.outgoing.begin(self.db.collection(name))

    def snapshot_chunk(self, token: str, rel: str, offset: int, size: int) -> bytes:
        """Bytes [offset, offset + size) of one file of snapshot `token`."""
        return self.outgoing.chunk(token, rel, offset, size)

    def snapshot_end(self, token: str) -> None:
        """Remove a pulled snapshot."""
        self.outgoing.end(token)

    # -- inspection and shutdown --------------------------------------------------------------------------
    def digest(self, name: str) -> dict:
        """content_digest of a collection here (equal digests: equal content)."""
        return content_digest(self.db.collection(name))

    def close(self) -> None:
        """Stop serving and close the Database (checkpointing it)."""
        with self._lock:
            if self.leader is not None:
                self._end_leadership()
        self.server.stop(0).wait()
        self.db.close()
