"""What a cluster is made of: `ClusterSpec`, the one home of the cluster's knobs, names and paths.

Every actor of a cluster gets the same spec; nothing else describes the cluster (no file of addresses):
membership, placement and restarts come from Ray, the current primaries and in-sync sets from the controller.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vdb.errors import InvalidArgumentError

SPREADS = {"strict": "STRICT_SPREAD", "soft": "SPREAD"}  # --spread -> Ray placement group strategy


@dataclass(frozen=True)
class ClusterSpec:
    """A sharded, replicated vdb on Ray. Times are seconds."""
    data_root: str                  # per-node local path; each replica keeps DATA_ROOT/<ray node id>/s<shard>r<slot>
    name: str = "vdb"               # several clusters can share one Ray cluster (actor names carry it)
    shards: int = 1
    replicas: int = 2               # R: copies of each shard, each on its own node under spread="strict"
    spread: str = "strict"          # strict: STRICT_SPREAD placement groups; soft: SPREAD (one-node setups)
    replica_cpus: float = 1.0       # Ray CPUs reserved per replica (its placement-group bundle)
    host: str = "127.0.0.1"         # address replicas and routers bind; "node": the Ray node's IP address
    settings: dict = field(default_factory=dict)  # vdb settings of every replica's Database (vdb/config.py)
    lease_s: float = 3.0            # a primary serves only this long after the controller's last ping of it
    follower_lease_s: float = 5.0   # a follower serves reads this long after its primary's last contact
    ping_s: float = 0.25            # controller -> replicas liveness pings; the primary's heartbeats likewise
    call_timeout_s: float = 10.0    # replication and control calls between actors
    transfer_timeout_s: float = 300.0  # each call of a snapshot transfer, and a restore's replication wait
    backlog_mb: float = 32.0        # newest WAL records a primary keeps in RAM per collection for followers
    chunk_mb: float = 4.0           # snapshot transfer chunk
    namespace: str = "vdb"          # Ray namespace of the cluster's named actors

    def __post_init__(self):
        checks = ((self.shards >= 1, "shards must be >= 1"), (self.replicas >= 1, "replicas must be >= 1"),
                  (self.spread in SPREADS, f"spread must be one of {sorted(SPREADS)}"),
                  (self.replica_cpus >= 0, "replica_cpus must be >= 0"),
                  (bool(self.data_root), "data_root is required"),
                  (0 < self.ping_s < self.lease_s <= self.follower_lease_s,
                   "need 0 < ping_s < lease_s <= follower_lease_s"),
                  (self.name.replace("-", "").replace("_", "").isalnum(), "name: letters, digits, - and _"))
        for ok, why in checks:
            if not ok:
                raise InvalidArgumentError(f"cluster spec: {why}")

    # -- names and paths ----------------------------------------------------------------------------------
    @property
    def controller_name(self) -> str:
        return f"{self.name}:controller"

    def replica_name(self, shard: int, slot: int) -> str:
        return f"{self.name}:s{shard}r{slot}"

    def router_name(self, i: int) -> str:
        return f"{self.name}:router{i}"

    def slots(self):
        """Every (shard, slot) of the cluster."""
        return [(s, r) for s in range(self.shards) for r in range(self.replicas)]

    def first_primary(self, shard: int) -> int:
        """The slot that leads a shard in term 1 (spread over slots so primaries spread over nodes)."""
        return shard % self.replicas

    def replica_dir(self, shard: int, slot: int, node_id: str) -> Path:
        """A replica's data directory on its node: a replica re-created on another node starts empty there."""
        return Path(self.data_root) / node_id / f"s{shard}r{slot}"

    def controller_dir(self) -> Path:
        return Path(self.data_root) / "controller" / self.name

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ClusterSpec":
        return cls(**d)

    def resolved_root(self) -> "ClusterSpec":
        """The same spec with data_root made absolute (actors run in other working directories)."""
        return ClusterSpec(**{**self.to_dict(), "data_root": os.path.abspath(self.data_root)})
