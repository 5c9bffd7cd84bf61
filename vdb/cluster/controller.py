"""The controller: one per cluster (a detached Ray actor), the authority on each shard's term, primary and
in-sync set, and the source of the shard map routers read.

Membership, placement and restarts come from Ray: replicas are named actors in placement groups; Ray restarts
a crashed one on its bundle (same node, same directory) and reschedules the bundles of a lost node onto another
(a new, empty directory there, which its primary then seeds). The controller starts nothing. It finds the
replicas by name, pings them every ping_s (a ping carries the term and renews the primary's lease), asks Ray
whether a silent one's process ended (Peer.gone), and decides roles:

* Failover: a primary whose process is gone, or that has not answered for lease_s (it has stopped serving
  by then), is replaced in a new term by the candidate with the most records: any live member of the in-sync
  set, or the last primary itself if it came back (its log holds every acknowledged write). The other
  members are told first (they stop serving the old term); one that cannot be told makes the new primary
  hold its first acknowledgement until that member's read lease has run out.
* The in-sync set changes only through the primary, fenced by term: joining after the primary let the
  follower in, leaving (drop_in_sync) before the primary stops waiting for it.

Its state (per shard: term, primary and its incarnation, in-sync set) is saved on every change, so a
restarted controller resumes where it was.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from storage.fileio import atomic_write_bytes
from vdb.cluster.peer import PeerGone, PeerUnreachable, StaleTerm
from vdb.cluster.spec import ClusterSpec

log = logging.getLogger(__name__)


@dataclass
class Member:
    peer: object
    status: dict = field(default_factory=dict)
    ok: bool = False          # the last ping was answered
    gone: bool = False        # Ray says the incarnation we knew ended
    last_ok: float = 0.0      # when a ping was last answered
    lease_bound: float = 0.0  # (a primary) its lease surely ended by then, from the renewing pings we sent


class Controller:
    def __init__(self, spec: dict, *, connect=None, monitor: bool = True):
        self.spec = ClusterSpec.from_dict(spec)
        if connect is None:
            from vdb.cluster import rayside
            connect = rayside.peer_by_name(self.spec.namespace)
        self._connect = connect
        self._lock = threading.RLock()
        self._path = self.spec.controller_dir() / "state.json"
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fresh = [{"term": 0, "primary": None, "incarnation": None, "in_sync": [], "in_sync_term": 0}
                 for _ in range(self.spec.shards)]
        self.shards = json.loads(self._path.read_text())["shards"] if self._path.exists() else fresh
        self.members: dict[tuple[int, int], Member] = {}
        self._map = {"version": 0, "name": self.spec.name, "shards": []}
        self._stop, self._wake = threading.Event(), threading.Event()
        self._ping_timeout = self.spec.lease_s / 2  # a ping older than this renews nothing (Replica.ping)
        self._pool = ThreadPoolExecutor(max_workers=max(4, len(self.spec.slots())), thread_name_prefix="vdb-ctl")
        self._thread = threading.Thread(target=self._monitor, daemon=True, name="vdb-controller")
        if monitor:
            self._thread.start()

    # -- called by replicas -------------------------------------------------------------------------------
    def register(self, shard: int, slot: int, status: dict) -> dict:
        """A replica (re)started: look at it now rather than at the next tick."""
        log.info("controller: %s registered (incarnation %s)", status.get("key"), status.get("incarnation"))
        self._wake.set()
        with self._lock:
            sh = self.shards[shard]
            return {"term": sh["term"], "primary": sh["primary"]}

    def set_in_sync(self, shard: int, slot: int, term: int, in_sync: bool) -> bool:
        """The primary of `term` let follower `slot` into its in-sync set, or asks to let it go."""
        with self._lock:
            sh = self.shards[shard]
            if term != sh["term"]:  # only the primary chosen for a term ever acts in it
                raise StaleTerm(f"shard {shard} is in term {sh['term']}, not {term}")
            if sh["in_sync_term"] != term:  # the first report of a term replaces the last term's set
                sh["in_sync"], sh["in_sync_term"] = [], term
            members = set(sh["in_sync"]) | {slot} if in_sync else set(sh["in_sync"]) - {slot}
            if members != set(sh["in_sync"]):
                sh["in_sync"] = sorted(members)
                self._save()
                self._publish()
            return True

    def drop_in_sync(self, shard: int, slot: int, term: int) -> bool:
        """Consent for the primary of `term` to stop waiting for follower `slot` (StaleTerm if it is not)."""
        return self.set_in_sync(shard, slot, term, False)

    # -- called by routers and operators --------------------------------------------------------------------
    def shard_map(self) -> dict:
        """{"version", "shards": [{"term", "primary": address or None, "readers": [addresses]}]}"""
        return self._map

    def status(self) -> dict:
        """Every shard's term, primary and in-sync set, and every member's last status."""
        with self._lock:
            shards = []
            for s, sh in enumerate(self.shards):
                members = []
                for r in range(self.spec.replicas):
                    m = self.members.get((s, r))
                    st = m.status if m else {}
                    members.append({"slot": r, "ok": bool(m and m.ok), "gone": bool(m and m.gone),
                                    **{k: st.get(k) for k in ("address", "node_id", "pid", "role", "term",
                                                              "readable", "positions", "links")}})
                shards.append({**sh, "members": members})
            return {"name": self.spec.name, "map_version": self._map["version"], "shards": shards}

    def spec_dict(self) -> dict:
        """The cluster's spec (vdbctl finds a cluster by name and learns the rest here)."""
        return self.spec.to_dict()

    def primary_slot(self, shard: int) -> int | None:
        """The slot leading `shard` now (None while it has none)."""
        pm = self.members.get((shard, self.shards[shard]["primary"]))
        return self.shards[shard]["primary"] if pm is not None and self._reachable(pm) else None

    def stop(self) -> None:
        """Stop the monitor (cluster down)."""
        self._stop.set()
        self._wake.set()

    # -- the loop ---------------------------------------------------------------------------------------
    def _monitor(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("controller tick failed")
            self._wake.wait(self.spec.ping_s)
            self._wake.clear()

    def tick(self) -> None:
        """Ping every member, then bring each shard to a primary with links to all its followers."""
        for s, r in self.spec.slots():
            if (s, r) not in self.members:
                peer = self._connect(self.spec.replica_name(s, r))
                if peer is not None:
                    self.members[(s, r)] = Member(peer)
        futures = {key: self._pool.submit(self._ping, key, m) for key, m in list(self.members.items())}
        for f in futures.values():
            f.result()
        for s in range(self.spec.shards):
            self._reconcile(s)
        self._publish()

    def _ping(self, key, m: Member) -> None:
        with self._lock:
            sh = self.shards[key[0]]
            term, primary = sh["term"], sh["primary"]
        # Only a primary that answered the last ping gets its lease renewed. A renewing ping whose answer never
        # comes may still have renewed it, when it arrived up to ping_timeout after sending: hence the bound.
        renew = key[1] == primary and m.ok
        if renew:
            m.lease_bound = time.monotonic() + self._ping_timeout + self.spec.lease_s
        try:
            status = m.peer.call("ping", term, primary, time.time() if renew else None,
                                 timeout=self._ping_timeout)
        except (PeerGone, PeerUnreachable) as e:
            m.ok = False
            m.gone = isinstance(e, PeerGone) or m.peer.gone() is True
            return
        m.peer.know(status)
        m.status, m.ok, m.gone, m.last_ok = status, True, False, time.monotonic()

    def _reconcile(self, s: int) -> None:
        sh = self.shards[s]
        pm = self.members.get((s, sh["primary"])) if sh["primary"] is not None else None
        if pm is not None and pm.ok and pm.status.get("incarnation") == sh["incarnation"] and \
                pm.status.get("role") == "primary" and pm.status.get("term") == sh["term"]:
            self._link_followers(s, sh, pm)
            return
        if pm is not None and not pm.ok and not pm.gone and pm.status.get("incarnation") == sh["incarnation"] \
                and time.monotonic() < pm.lease_bound:
            return  # silent, maybe only slow: it stops serving when its lease runs out; wait for that
        self._elect(s, sh)

    def _link_followers(self, s: int, sh: dict, pm: Member) -> None:
        links = pm.status.get("links", {})
        for r in range(self.spec.replicas):
            m = self.members.get((s, r))
            if r != sh["primary"] and m is not None and r not in links and str(r) not in links:
                try:
                    pm.peer.call("follow", sh["term"], r, m.peer, timeout=self.spec.call_timeout_s)
                except (PeerGone, PeerUnreachable) as e:
                    log.warning("controller: cannot link shard %d's follower r%d yet (%r)", s, r, e)

    def _elect(self, s: int, sh: dict) -> None:
        """Promote the best candidate of shard `s` in a new term (nothing if none is up)."""
        alive = {r: m for (ss, r), m in self.members.items() if ss == s and self._reachable(m)}
        if sh["term"] == 0:  # a new cluster: every replica is empty; the designated slot leads
            first = self.spec.first_primary(s)
            candidates = [first] if first in alive else []
        else:
            candidates = [r for r in set(sh["in_sync"]) | {sh["primary"]} if r in alive]
        if not candidates:
            return
        best = max(candidates, key=lambda r: (alive[r].ok, sum(alive[r].status.get("positions", {}).values()),
                                              r == sh["primary"], -r))
        with self._lock:  # the in-sync set of the last term stays: the candidates of a retry, if this fails
            sh["term"] += 1
            term = sh["term"]
            self._save()  # a term is used at most once, even if this promotion fails half way
        hold = 0.0
        for (ss, r), m in list(self.members.items()):
            if ss != s or r == best:
                continue
            try:
                if not m.gone:
                    m.peer.call("become_follower", term, timeout=self.spec.call_timeout_s)
            except (PeerGone, PeerUnreachable, StaleTerm) as e:
                log.warning("controller: could not fence r%d of shard %d (%r): holding acknowledgements", r, s, e)
                hold = self.spec.follower_lease_s
        followers = {r: m.peer for (ss, r), m in self.members.items() if ss == s and r != best}
        try:
            status = alive[best].peer.call("become_primary", term, followers, hold, timeout=self.spec.call_timeout_s)
        except (PeerGone, PeerUnreachable, StaleTerm) as e:
            log.warning("controller: promoting r%d of shard %d in term %d failed (%r)", best, s, term, e)
            return
        with self._lock:  # (its links may already have reported followers in sync in this term)
            sh.update(primary=best, incarnation=status["incarnation"])
            if sh["in_sync_term"] != term:
                sh["in_sync"], sh["in_sync_term"] = [], term
            self._save()
        alive[best].status, alive[best].ok = status, True
        self._wake.set()  # its lease comes with the next ping: send that one now
        log.warning("controller: shard %d is led by r%d in term %d (candidates %s)", s, best, term, candidates)

    def _reachable(self, m: Member) -> bool:
        """Answered lately and not known gone: may be promoted or routed to (a busy replica misses a ping)."""
        return not m.gone and m.last_ok > 0 and time.monotonic() - m.last_ok < self.spec.follower_lease_s

    # -- state ------------------------------------------------------------------------------------------
    def _save(self) -> None:
        atomic_write_bytes(self._path, json.dumps({"shards": self.shards}, indent=1).encode())

    def _publish(self) -> None:
        with self._lock:
            shards = []
            for s, sh in enumerate(self.shards):
                pm = self.members.get((s, sh["primary"])) if sh["primary"] is not None else None
                primary_ok = pm is not None and self._reachable(pm) and \
                    pm.status.get("incarnation") == sh["incarnation"]
                primary = pm.status["address"] if primary_ok else None
                readers = ([primary] if primary else []) + [
                    self.members[(s, r)].status["address"] for r in sh["in_sync"]
                    if (s, r) in self.members and self._reachable(self.members[(s, r)])]
                shards.append({"shard": s, "term": sh["term"], "primary": primary, "readers": readers})
            if shards != self._map["shards"]:
                self._map = {"version": self._map["version"] + 1, "name": self.spec.name, "shards": shards}
