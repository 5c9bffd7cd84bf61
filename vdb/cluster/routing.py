"""The replicated router: vdb.service.router.Router (the same scatter-gather and merge, the same gRPC server)
over one `ShardGroup` per shard instead of one Client per shard address.

A ShardGroup reads from any replica the shard map lists as readable (round robin) and, when one answers
UNAVAILABLE, DATA_LOSS (its copy is damaged; the read fails so only if every replica's is) or not at all, asks
the next; writes go to the shard's primary and, when it is gone or no longer primary, are sent again once the
map shows the new one (upserts and deletes are idempotent by id; creates and drops are retried in their
idempotent form). The map comes from the controller in a background thread every ping_s, and at once after a
failure: Ray is never in the path of a query. Routers hold no other state; run any number of them.
"""
from __future__ import annotations

import itertools
import logging
import threading
import time

from vdb.cluster.peer import PeerGone, PeerUnreachable
from vdb.errors import AlreadyExistsError, DataLossError, DeadlineExceededError, NotFoundError, UnavailableError
from vdb.service.client import Client
from vdb.service.router import ClusterConfig, Router

log = logging.getLogger(__name__)
RETRYABLE = (UnavailableError, DeadlineExceededError)
BACKOFF_S = (0.02, 0.5)
# The replicas' server settings a router serves with too: the same keys, the same TLS, the same message limit
# (a router that served plaintext in front of TLS replicas would carry their clients' keys in the clear).
ROUTER_SERVER_KEYS = ("api_key", "read_only_api_key", "tls_cert", "tls_key", "max_message_mb")


def router_settings(spec, **overrides):
    """The loaded vdb settings a router of cluster `spec` serves with (host, port, ... in `overrides`)."""
    from vdb.config import load_settings
    return load_settings({**{k: v for k, v in spec.settings.items() if k in ROUTER_SERVER_KEYS}, **overrides})


def replica_channel(spec) -> dict:
    """How a router reaches the replicas (vdb.Client keywords): their TLS certificate as the trust root (a
    self-signed one, or a chain file that ends in its CA), and their message limit."""
    settings = router_settings(spec)
    out = {"max_message_bytes": int(settings["max_message_mb"]) << 20}
    if settings["tls_cert"]:
        with open(settings["tls_cert"], "rb") as f:
            out["root_certificates"] = f.read()
    return out


class ShardMapView:
    """The controller's shard map, kept fresh by a background thread; gRPC clients per replica address."""

    def __init__(self, controller, *, poll_s: float, timeout_s: float, api_key: str | None = None,
                 channel: dict | None = None):
        self.controller, self.poll_s, self.timeout_s, self.api_key = controller, poll_s, timeout_s, api_key
        self.channel = channel or {}  # replica_channel(spec)
        self.map = {"version": 0, "shards": []}
        self._clients: dict[str, Client] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._last_refresh = 0.0
        self.refresh()
        self._thread = threading.Thread(target=self._poll, daemon=True, name="vdb-shard-map")
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.refresh()

    def refresh(self) -> None:
        """Fetch the map now (at most every few milliseconds, however many callers ask)."""
        with self._lock:
            if time.monotonic() - self._last_refresh < 0.01:
                return
            try:
                m = self.controller.call("shard_map", timeout=self.timeout_s)
            except (PeerGone, PeerUnreachable) as e:
                log.warning("router: cannot read the shard map (%r); using version %d", e, self.map["version"])
                return
            finally:
                self._last_refresh = time.monotonic()
            if m["version"] >= self.map["version"]:
                self.map = m

    def shard(self, s: int) -> dict:
        shards = self.map["shards"]
        return shards[s] if s < len(shards) else {"primary": None, "readers": []}

    def client(self, address: str) -> Client:
        c = self._clients.get(address)
        if c is None:
            c = self._clients.setdefault(address, Client(address, api_key=self.api_key, timeout=self.timeout_s,
                                                         retries=0, **self.channel))
        return c

    def close(self) -> None:
        self._stop.set()
        for c in list(self._clients.values()):
            c.close()


class ShardGroup:
    """One shard's replicas, with the methods Router calls on a shard."""

    def __init__(self, shard: int, view: ShardMapView, timeout_s: float):
        self.shard, self.view, self.timeout_s = shard, view, timeout_s
        self._turn = itertools.count()

    def _read(self, method: str, *args, **kwargs):
        deadline = time.monotonic() + self.timeout_s
        tried, damaged, delay, last, loss = set(), set(), BACKOFF_S[0], None, None
        while True:
            readers = self.view.shard(self.shard)["readers"]
            start = next(self._turn)
            order = [readers[(start + i) % len(readers)] for i in range(len(readers))] if readers else []
            for address in (a for a in order if a not in tried and a not in damaged):
                try:
                    return getattr(self.view.client(address), method)(*args, **kwargs)
                except RETRYABLE as e:
                    tried.add(address)
                    last = e
                except DataLossError as e:  # this replica's copy is damaged; another's need not be
                    log.warning("router: shard %d replica %s: %s; asking another replica", self.shard, address, e)
                    damaged.add(address)
                    loss = e
            if order and damaged.issuperset(order):  # every replica's copy is damaged: waiting mends nothing
                raise loss
            if time.monotonic() + delay > deadline:
                raise UnavailableError(f"shard {self.shard}: no replica answered {method} ({last})")
            self.view.refresh()
            tried.clear()
            time.sleep(delay)
            delay = min(2 * delay, BACKOFF_S[1])

    def _write(self, method: str, *args, **kwargs):
        deadline = time.monotonic() + self.timeout_s
        delay, last, attempt = BACKOFF_S[0], None, 0
        while True:
            primary = self.view.shard(self.shard)["primary"]
            if primary is not None:
                try:
                    if "timeout" in kwargs:  # what is left of the router's deadline
                        kwargs["timeout"] = max(0.05, deadline - time.monotonic())
                    call = {**kwargs, **self._retry_form(attempt, method)}
                    return getattr(self.view.client(primary), method)(*args, **call)
                except RETRYABLE as e:
                    last = e
                except (AlreadyExistsError, NotFoundError):
                    if attempt and method == "drop_collection":
                        return None  # an earlier attempt dropped it
                    raise
                attempt += 1
            if time.monotonic() + delay > deadline:
                raise UnavailableError(f"shard {self.shard}: no primary took {method} ({last or 'none known'})")
            self.view.refresh()
            time.sleep(delay)
            delay = min(2 * delay, BACKOFF_S[1])

    @staticmethod
    def _retry_form(attempt: int, method: str) -> dict:
        """A create sent again may find the collection an earlier attempt made: accept it then."""
        return {"exist_ok": True} if attempt and method == "create_collection" else {}

    # -- the interface Router uses ------------------------------------------------------------------------
    def create_collection(self, name, dim, metric="l2", *, exist_ok=False, **options):
        if exist_ok:
            return self._write("create_collection", name, dim, metric, exist_ok=True, **options)
        return self._write("create_collection", name, dim, metric, **options)

    def drop_collection(self, name):
        return self._write("drop_collection", name)

    def upsert(self, name, ids, vectors, payloads=None, *, timeout=None):
        return self._write("upsert", name, ids, vectors, payloads, timeout=timeout)

    def delete(self, name, ids, *, timeout=None):
        return self._write("delete", name, ids, timeout=timeout)

    def flush(self, name):
        return self._write("flush", name)

    def list_collections(self):
        return self._read("list_collections")

    def describe_collection(self, name):
        return self._read("describe_collection", name)

    def get(self, name, ids):
        return self._read("get", name, ids)

    def search(self, name, queries, top_k=10, **kwargs):
        return self._read("search", name, queries, top_k, **kwargs)

    def hybrid_search(self, name, text=None, vector=None, top_k=10, **kwargs):
        return self._read("hybrid_search", name, text, vector, top_k, **kwargs)

    def count(self, name):
        return self._read("count", name)

    def stats(self, name):
        return self._read("stats", name)

    def close(self):
        pass


class ReplicatedRouter(Router):
    """Router over the ShardGroups of one cluster (it also closes their shard-map view)."""

    def __init__(self, config: ClusterConfig, view: ShardMapView):
        super().__init__(config, shards=[ShardGroup(s, view, config.timeout_s) for s in range(len(config.shards))])
        self.view = view

    def close(self) -> None:
        """Stop following the shard map and close the replica channels."""
        super().close()
        self.view.close()


def make_router(controller, spec, *, overfetch: float = 1.5, timeout_s: float = 30.0) -> ReplicatedRouter:
    """A Router (a VectorDB) over the cluster whose controller is `controller` (a Peer)."""
    api_key = spec.settings.get("api_key") or None
    view = ShardMapView(controller, poll_s=spec.ping_s, timeout_s=timeout_s, api_key=api_key,
                        channel=replica_channel(spec))
    limits = {k: spec.settings[k] for k in ("max_top_k", "max_batch") if k in spec.settings}  # the replicas'
    config = ClusterConfig(shards=tuple(f"shard-{s}" for s in range(spec.shards)), overfetch=overfetch,
                           timeout_s=timeout_s, **limits)
    return ReplicatedRouter(config, view)


class RouterServer:
    """A router serving vdb.v1 on host:port (a detached Ray actor under `vdbctl cluster up --routers N`)."""

    def __init__(self, spec: dict, port: int, overfetch: float = 1.5, timeout_s: float = 30.0):
        from vdb.cluster import rayside
        from vdb.cluster.spec import ClusterSpec
        from vdb.service.server import create_server
        self.spec = ClusterSpec.from_dict(spec)
        self.router = make_router(rayside.controller_peer(self.spec), self.spec, overfetch=overfetch,
                                  timeout_s=timeout_s)
        host = rayside.node_ip() if self.spec.host == "node" else self.spec.host
        self.server, bound = create_server(self.router, router_settings(self.spec, host=host, port=port))
        self.server.start()
        self._address = f"{host}:{bound}"

    def address(self) -> str:
        """Where this router listens."""
        return self._address

    def close(self) -> None:
        """Stop serving."""
        self.server.stop(1).wait()
        self.router.close()
