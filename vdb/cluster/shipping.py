"""The primary's side of replication: a `Leader` per term, and one `FollowerLink` thread per follower.

The rule (stated in docs/scaling.md): the primary orders every write (its WAL assigns the LSN), and
acknowledges it once it is durable on the primary and on every follower in the shard's in-sync set. So the
LSN in an acknowledgement means what it means on one node, every in-sync replica has every acknowledged
write applied (a search there sees it: read-your-writes from any readable replica), and any in-sync follower
can take over without losing one.

A link ships records in LSN order: from the collection's RAM backlog when the follower is close behind, from
the WAL after a restart, from a snapshot when the WAL no longer reaches back (or the follower is new, or its
log diverged: state.log_matches). Batches form by themselves (group commit): while one call is in flight the
next records queue up. A link that has shipped everything joins the in-sync set; from then writers wait for
it. It leaves the set only with the controller's consent (fenced by term, so a deposed primary can never
shrink its set and acknowledge alone), and only once the follower can no longer serve stale reads: at once
when Ray reports its process gone, otherwise after its read lease (follower_lease_s) ran out.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter

from vdb.cluster import transfer
from vdb.cluster.peer import PeerGone, PeerUnreachable, StaleTerm
from vdb.cluster.state import log_matches
from vdb.errors import DeadlineExceededError, UnavailableError

log = logging.getLogger(__name__)
BATCH_BYTES = 8 << 20      # records per replicate call, about
RETRY_S = (0.05, 1.0)      # a link's back-off after a failed call: first, longest


class Leader:
    """Replication state of a primary in one term: its links, and the waits of its writers."""

    def __init__(self, replica, term: int, hold_until: float = 0.0):
        self.replica, self.term, self.spec = replica, term, replica.spec
        self.cond = threading.Condition()
        self.links: dict[int, FollowerLink] = {}
        self.catalog_version = 0
        self.deposed = False
        self.hold_until = hold_until  # no acknowledgement before: followers of the last term may still serve

    # -- links ------------------------------------------------------------------------------------------
    def follow(self, slot: int, peer) -> None:
        """Replicate to follower `slot` through `peer` (replacing any link to that slot)."""
        with self.cond:
            if self.deposed:
                return
            old = self.links.get(slot)
            if old is not None and old.peer.key == peer.key and old.alive():
                return
            link = self.links[slot] = FollowerLink(self, slot, peer)
        if old is not None:
            old.stop()
        link.start()

    def notify_new(self) -> None:
        """A record was logged: wake the links."""
        for link in list(self.links.values()):
            link.wake.set()

    def catalog_changed(self) -> int:
        """A collection was created, dropped or restored; returns the version writers wait for."""
        with self.cond:
            self.catalog_version += 1
            version = self.catalog_version
        self.notify_new()
        return version

    def info(self) -> dict:
        """Per follower slot: in-sync, positions, where its records came from."""
        with self.cond:
            return {slot: l.info() for slot, l in self.links.items()}

    def in_sync_slots(self) -> list[int]:
        with self.cond:
            return sorted(s for s, l in self.links.items() if l.in_sync)

    # -- writers ----------------------------------------------------------------------------------------
    def wait_replicated(self, name: str, uuid: str, lsn: int, timeout: float | None) -> None:
        """Block until every in-sync follower holds `lsn` of collection (name, uuid)."""
        self._wait(lambda l: l.holds(name, uuid, lsn), timeout, f"LSN {lsn} of {name!r}")

    def wait_catalog(self, version: int, timeout: float | None) -> None:
        """Block until every in-sync follower has the collections of catalog `version`."""
        self._wait(lambda l: l.catalog_acked >= version, timeout, "the collection change")

    def _wait(self, done, timeout: float | None, what: str) -> None:
        deadline = time.monotonic() + (timeout if timeout is not None else self.spec.call_timeout_s)
        with self.cond:
            while True:
                if self.deposed:
                    raise UnavailableError(f"{self.replica.key} is no longer the primary (term {self.term}); "
                                           f"{what} may or may not have been replicated: retry")
                now = time.monotonic()
                waiting = [l for l in self.links.values() if l.in_sync and not done(l)]
                if not waiting and now >= self.hold_until:
                    return
                if now >= deadline:
                    names = ", ".join(f"r{l.slot}" for l in waiting) or "the previous primary's followers"
                    err = DeadlineExceededError if timeout is not None else UnavailableError
                    raise err(f"{what} is durable on {self.replica.key} but not yet on {names}: retry")
                until = deadline if waiting else min(deadline, self.hold_until)
                self.cond.wait(max(0.001, until - now))

    # -- ending -----------------------------------------------------------------------------------------
    def stop(self) -> None:
        """This term is over for us: writers fail (UNAVAILABLE), links stop."""
        with self.cond:
            self.deposed = True
            links = list(self.links.values())
            self.cond.notify_all()
        for link in links:
            link.stop()

    def stale(self) -> None:
        """A follower or the controller knows a newer term: step down."""
        if not self.deposed:
            log.warning("%s: term %d is stale; stepping down", self.replica.key, self.term)
            self.stop()
            self.replica.step_down(self.term)


class FollowerLink:
    """Ships one follower everything it lacks, then keeps it current (and its read lease fresh)."""

    def __init__(self, leader: Leader, slot: int, peer):
        self.leader, self.slot, self.peer = leader, slot, peer
        self.replica, self.spec, self.term = leader.replica, leader.spec, leader.term
        self.known: dict[str, list] = {}     # name -> [uuid, lsn] the follower holds (guarded by leader.cond)
        self.names: set[str] = set()         # the follower's collections
        self.attached = False
        self.incarnation: str | None = None
        self.catalog_acked = -1
        self.in_sync = False
        self.reported = False                # the controller knows about in_sync
        self.last_sent = 0.0                 # monotonic time of the last replicate call
        self.renewed = 0.0                   # ... and of its last answer: the follower's lease may run that long
        self.wake = threading.Event()
        self.sources = Counter()             # records shipped from "backlog" / "wal", "snapshots" installed
        self._wal: dict[str, list] = {}      # name -> [replay iterator, next LSN]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"vdb-ship:{self.replica.key}->r{slot}")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.wake.set()

    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set()

    def holds(self, name: str, uuid: str, lsn: int) -> bool:
        e = self.known.get(name)
        return e is not None and e[0] == uuid and e[1] >= lsn

    def info(self) -> dict:
        return {"in_sync": self.in_sync, "attached": self.attached, "incarnation": self.incarnation,
                "positions": {n: e[1] for n, e in self.known.items()}, "sources": dict(self.sources)}

    # -- the loop ---------------------------------------------------------------------------------------
    def _run(self) -> None:
        delay = RETRY_S[0]
        while not self._stop.is_set():
            try:
                if not self.attached:
                    self._attach()
                self.wake.clear()
                if not self._round():
                    self._idle()
                delay = RETRY_S[0]
                continue
            except StaleTerm:
                self.leader.stale()
                return
            except PeerGone:
                self._lost(gone=True)
            except PeerUnreachable:
                self._lost(gone=None)
            except Exception as e:  # the follower answered with an error (a gap, another incarnation, ...)
                log.warning("%s -> r%d: %r; re-attaching", self.replica.key, self.slot, e)
                self._lost(gone=False)  # it is alive; if it keeps failing, it leaves the set when its lease ends
            self._stop.wait(delay)
            delay = min(delay * 2, RETRY_S[1])
        self._close_wal()

    def _idle(self) -> None:
        self._mark_in_sync()
        left = self.last_sent + self.spec.ping_s - time.monotonic()
        if left > 0:
            self.wake.wait(left)
        else:
            self._send({})  # heartbeat: keeps the follower's read lease and tells us it is alive

    def _call(self, method: str, *args):
        return self.peer.call(method, *args, timeout=self.spec.call_timeout_s)

    def _attach(self) -> None:
        """Learn what the follower holds; keep what is a prefix of our log, the rest gets re-seeded."""
        report = self._call("report", self.term)
        self.peer.know(report)
        if self.incarnation is not None and report["incarnation"] != self.incarnation:
            self._drop("it restarted")  # a new process: it serves nothing until it is in sync again
        view = self.replica.collections_view()
        known = {}
        for name, f in report["collections"].items():
            mine = view.get(name)
            if mine is not None and mine.uuid == f["uuid"] and \
                    log_matches(f["history"], f["last_lsn"], mine.history, mine.collection.applied_lsn):
                known[name] = [f["uuid"], f["last_lsn"]]
        with self.leader.cond:
            self.known, self.names = known, set(report["collections"])
            self.incarnation, self.attached = report["incarnation"], True

    def _round(self) -> bool:
        """One step: drop, seed, or ship a batch. Returns whether anything was sent."""
        with self.leader.cond:
            version = self.leader.catalog_version
        view = self.replica.collections_view()
        for name in sorted(self.names - set(view)):
            self._call("drop_local", self.term, name)
            self.names.discard(name)
        for name in view:
            if name not in self.known:
                self._seed(name)
                return True
        with self.leader.cond:
            self.catalog_acked = version
            self.leader.cond.notify_all()
        batch, budget = {}, BATCH_BYTES
        for name, v in view.items():
            if self.known[name][1] >= v.collection.applied_lsn:
                continue
            records = self._records(name, v)
            if records:
                batch[name] = {"uuid": v.uuid, "history": v.history, "records": records}
                budget -= sum(len(r[2]) for r in records)
            if budget <= 0:
                break
        if not batch:
            return False
        self._send(batch)
        return True

    def _send(self, batch: dict) -> None:
        self.last_sent = time.monotonic()
        positions = self._call("replicate", self.term, batch, self.in_sync)
        self.renewed = time.monotonic()
        with self.leader.cond:
            for name, lsn in positions.items():
                if name in self.known:
                    self.known[name][1] = lsn
            self.leader.cond.notify_all()

    def _records(self, name: str, view) -> list:
        acked = self.known[name][1]
        records = self.replica.backlogs[name].after(acked, BATCH_BYTES)
        if records is not None:
            self.sources["backlog"] += len(records)
            return records
        it = self._wal.get(name)
        if it is None or it[1] != acked + 1:
            self._close_wal(name)
            it = self._wal[name] = [view.collection.wal.replay(acked), acked + 1]
        out, size = [], 0
        try:
            for rec in it[0]:
                out.append((rec.lsn, rec.rtype, rec.payload))
                size += len(rec.payload)
                if size >= BATCH_BYTES:
                    break
        except ValueError:  # (raised by the replay's first step) purged below what the follower holds
            self._close_wal(name)
            self._seed(name)  # only a snapshot can bring it up
            return []
        if out:
            it[1] = out[-1][0] + 1
            self.sources["wal"] += len(out)
        else:
            self._close_wal(name)
        return out

    def _seed(self, name: str) -> None:
        """Install a fresh snapshot of collection `name` on the follower (replacing whatever it holds)."""
        with self.replica.local_snapshot(name) as (snap, uuid, history):
            lsn = transfer.push(self.peer, snap, int(self.spec.chunk_mb * (1 << 20)), self.spec.transfer_timeout_s,
                                begin=(self.term, name, uuid, history))
        self._close_wal(name)
        with self.leader.cond:
            self.known[name] = [uuid, lsn]
            self.names.add(name)
        self.sources["snapshots"] += 1
        log.info("%s -> r%d: seeded %r from a snapshot at LSN %d", self.replica.key, self.slot, name, lsn)

    def _close_wal(self, name: str | None = None) -> None:
        for n in ([name] if name is not None else list(self._wal)):
            it = self._wal.pop(n, None)
            if it is not None:
                it[0].close()

    # -- the in-sync set ----------------------------------------------------------------------------------
    def _mark_in_sync(self) -> None:
        if not self.in_sync:
            view = self.replica.collections_view()
            with self.leader.cond:  # writers check the set under the same lock: none is acknowledged past us
                if self.catalog_acked < self.leader.catalog_version or set(view) != set(self.known) or \
                        any(self.known[n][1] < v.collection.applied_lsn for n, v in view.items()):
                    return
                self.in_sync, self.reported = True, False
                self.leader.cond.notify_all()
            log.info("%s: follower r%d is in sync", self.replica.key, self.slot)
        if not self.reported:
            try:
                self.replica.controller.call("set_in_sync", self.replica.shard, self.slot, self.term, True,
                                             timeout=self.spec.call_timeout_s)
                self.reported = True
            except (PeerGone, PeerUnreachable) as e:
                log.warning("%s: cannot tell the controller r%d is in sync yet (%r)", self.replica.key,
                            self.slot, e)

    def _lost(self, gone: bool | None) -> None:
        """A call failed. Leave the in-sync set when that cannot let a stale read through."""
        self.attached = False
        self._close_wal()
        if not self.in_sync:
            return
        if gone is None:
            gone = self.peer.gone()
        if gone or time.monotonic() - self.renewed >= self.spec.follower_lease_s:
            self._drop("its process is gone" if gone else "its read lease ran out")

    def _drop(self, why: str) -> None:
        if not self.in_sync:
            return
        try:
            self.replica.controller.call("drop_in_sync", self.replica.shard, self.slot, self.term,
                                         timeout=self.spec.call_timeout_s)
        except (PeerGone, PeerUnreachable) as e:  # no consent, no drop: writers keep waiting
            log.warning("%s: cannot drop r%d from the in-sync set yet (%r)", self.replica.key, self.slot, e)
            return
        except StaleTerm:
            self._stop.set()
            self.leader.stale()
            return
        with self.leader.cond:
            self.in_sync = False
            self.leader.cond.notify_all()
        log.warning("%s: follower r%d left the in-sync set (%s)", self.replica.key, self.slot, why)
