"""A cluster snapshot (vdb/cluster/deploy.py snapshot / restore) brought back into a running cluster: a damaged
shard in it restores nothing anywhere (never half a collection on some shards). Ray's part (finding each
shard's primary) is replaced by the LocalCluster's peers; the chunks travel through the same calls."""
from __future__ import annotations

import numpy as np
import pytest

from localcluster import LocalCluster
from vdb.cluster import clustersnap, deploy
from vdb.engine.snapshot import INDEX
from vdb.errors import AlreadyExistsError, DataLossError

DIM = 8


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    c = LocalCluster(tmp_path / "c", shards=2, replicas=2)
    c.wait_in_sync()
    monkeypatch.setattr(deploy, "_primary", lambda spec, s: c.peers[c.name(s, c.primary_of(s))])
    yield c
    c.close()


def test_a_cluster_snapshot_with_one_damaged_shard_restores_nothing(cluster, tmp_path):
    """Regression: shards were verified one at a time just before each was pushed, so a damaged shard 1 left
    the restored collection on shard 0 only (listed by no router, NOT_FOUND on half the ids, and in the way of
    a retry)."""
    router = cluster.router()
    router.create_collection("c", DIM, bootstrap_rows=50)
    rng = np.random.default_rng(1)
    router.upsert("c", np.arange(400), rng.normal(size=(400, DIM)).astype(np.float32))
    summary = deploy.snapshot(cluster.spec, "c", tmp_path / "snap")
    assert summary["count"] == 400 and summary["shards"] == 2
    vectors = clustersnap.shard_dir(tmp_path / "snap", 1) / INDEX / "vectors.f32"
    raw = bytearray(vectors.read_bytes())
    raw[-3] ^= 0x40
    vectors.write_bytes(bytes(raw))
    with pytest.raises(DataLossError, match="vectors.f32"):
        deploy.restore(cluster.spec, tmp_path / "snap", "back", tmp_path / "work")
    for s in range(2):
        assert cluster.replica(s, cluster.primary_of(s)).db.list_collections() == ["c"]
    raw[-3] ^= 0x40  # repaired: the same name restores now, whole
    vectors.write_bytes(bytes(raw))
    deploy.restore(cluster.spec, tmp_path / "snap", "back", tmp_path / "work")
    cluster.wait_in_sync()
    assert router.count("back") == 400 and sorted(router.list_collections()) == ["back", "c"]


def test_a_restore_refused_by_a_later_shard_is_undone_on_the_earlier_ones(cluster, tmp_path):
    router = cluster.router()
    router.create_collection("c", DIM, bootstrap_rows=50)
    router.upsert("c", np.arange(100), np.random.default_rng(2).normal(size=(100, DIM)).astype(np.float32))
    deploy.snapshot(cluster.spec, "c", tmp_path / "snap.tar")
    cluster.replica(1, cluster.primary_of(1)).create_collection("back", DIM, "l2", False, {}, None)  # in the way
    with pytest.raises(AlreadyExistsError):  # (was INVALID_ARGUMENT; one node says ALREADY_EXISTS)
        deploy.restore(cluster.spec, tmp_path / "snap.tar", "back", tmp_path / "work")
    assert cluster.replica(0, cluster.primary_of(0)).db.list_collections() == ["c"]
    assert cluster.replica(1, cluster.primary_of(1)).db.count("back") == 0  # its own, untouched


def test_cluster_up_waits_for_a_controller_that_is_slow_to_start(monkeypatch):
    """Regression: wait_ready gave up at the first shard_map call that timed out (a controller actor still
    importing on a busy node), so `vdbctl cluster up` failed long before its --wait (seen: the slow node-loss
    test on a loaded machine)."""
    from vdb.cluster.peer import PeerUnreachable
    from vdb.cluster.spec import ClusterSpec
    spec = ClusterSpec(data_root="-", shards=1, replicas=2)
    ready = {"version": 3, "shards": [{"primary": "a:1", "readers": ["a:1", "b:1"]}]}
    answers = [PeerUnreachable("controller: GetTimeoutError")] * 3 + [ready]

    class Slow:
        def call(self, method, *args, timeout):
            out = answers.pop(0)
            if isinstance(out, Exception):
                raise out
            return out
    monkeypatch.setattr(deploy, "controller", lambda spec: Slow())
    monkeypatch.setattr(deploy.time, "sleep", lambda s: None)
    assert deploy.wait_ready(spec, timeout=60) == ready and answers == []


def test_abandoned_snapshot_transfers_do_not_fill_the_disk(tmp_path):
    """Regression: a pull whose `vdbctl snapshot --cluster` was killed left its whole copy in the primary's
    outgoing/ until that replica restarted, and a seed whose primary died left one in the follower's incoming/;
    killed again and again, they filled the disk. Now a transfer silent for idle_s goes at the next begin
    (idle_s 0 here: any earlier one is abandoned; a long idle_s keeps it)."""
    import vdb
    from vdb.cluster.transfer import Incoming, Outgoing
    from vdb.errors import NotFoundError
    with vdb.connect(tmp_path / "db") as db:
        db.create_collection("c", DIM)
        db.upsert("c", [1, 2], np.ones((2, DIM), np.float32))
        c = db.collection("c")
        patient = Outgoing(tmp_path / "patient", idle_s=3600)
        kept, _ = patient.begin(c)
        patient.begin(c)
        assert patient.chunk(kept, "vectors.f32", 0, 8)
        out = Outgoing(tmp_path / "out", idle_s=0)
        abandoned, _ = out.begin(c)
        token, manifest = out.begin(c)
        with pytest.raises(NotFoundError):
            out.chunk(abandoned, "vectors.f32", 0, 8)
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [token]
        incoming = Incoming(tmp_path / "in", idle_s=0)
        first = incoming.begin(manifest)
        incoming.chunk(first, "vectors.f32", 0, b"partial")  # ... and its sender is gone
        second = incoming.begin(manifest)
        with pytest.raises(NotFoundError):
            incoming.chunk(first, "vectors.f32", 7, b"more")
        assert sorted(p.name for p in (tmp_path / "in").iterdir()) == [second]
