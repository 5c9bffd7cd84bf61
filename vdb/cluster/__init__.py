"""vdb beyond one machine, on Ray: sharded collections whose shards are held by R replicas on different nodes.

    spec.py        ClusterSpec: the knobs, names and paths of a cluster (the only description of it)
    replica.py     Replica: one copy of one shard (a Database, its gRPC endpoint, its role); a Ray actor
    replicadb.py   ReplicaDB: the VectorDB a replica serves (reads while it may, writes only as primary)
    shipping.py    Leader / FollowerLink: the primary ships its WAL records; the acknowledgement rule
    backlog.py     the newest WAL records in RAM, for followers close behind
    state.py       cluster.json of a replica: terms, collection incarnations, log matching
    transfer.py    snapshots moved in chunks (seeding followers, vdbctl snapshot / restore)
    controller.py  Controller: terms, primaries, in-sync sets, failover, the shard map
    routing.py     the replicated router: vdb.service.router.Router over failing-over ShardGroups
    peer.py        the calls between members (PeerGone / PeerUnreachable / StaleTerm), LocalPeer for tests
    rayside.py     everything that touches Ray: peers over actor handles, actor options, node identity
    deploy.py      up / status / down / snapshot / restore of a cluster
    commands.py    `vdbctl cluster ...`, `vdbctl snapshot`, `vdbctl restore`

Ray is imported only by rayside.py and deploy.py, and only when a cluster is used. Spec: docs/scaling.md.
"""
