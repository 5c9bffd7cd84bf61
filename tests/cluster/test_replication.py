"""The replication protocol in one process (LocalPeers, no Ray): acknowledgement rule, read-your-writes on
any replica, catch-up of a restarted follower from the primary's log, failover that discards the records an
old primary never got acknowledged, re-seeding on another node, and fencing by term."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import vdb
from localcluster import LocalCluster
from vdb.cluster.peer import PeerUnreachable, StaleTerm
from vdb.cluster.state import log_matches, term_at
from vdb.errors import UnavailableError

DIM = 8
OPTIONS = dict(bootstrap_rows=100, head_ratio=0.1)


def _vecs(ids, salt=0):
    return np.stack([np.random.default_rng(int(i) * 7919 + salt).normal(size=DIM).astype(np.float32)
                     for i in ids])


def _digests(cluster, s, name="c"):
    return {r: cluster.replica(s, r).digest(name) for r in range(cluster.spec.replicas)}


@pytest.fixture
def cluster(tmp_path):
    c = LocalCluster(tmp_path, shards=1, replicas=2)
    c.wait_in_sync()
    yield c
    c.close()


def test_acknowledged_writes_are_on_every_in_sync_replica_and_read_back_anywhere(cluster):
    router = cluster.router()
    router.create_collection("c", DIM, **OPTIONS)
    for s in range(0, 300, 30):
        ids = np.arange(s, s + 30)
        lsn = router.upsert("c", ids, _vecs(ids), [{"s": int(s)}] * 30)
        # acknowledged: both replicas hold it now (no waiting), at the same LSN
        positions = [cluster.replica(0, r).db.stats("c")["applied_lsn"] for r in range(2)]
        assert positions == [lsn, lsn]
        for _ in range(2):  # reads alternate between the replicas; each sees the write
            assert router.get("c", [s + 29])[0].payload == {"s": int(s)}
            assert router.search("c", _vecs([s + 5])[0], 1, use_cache=False).ids[0] == s + 5
    router.delete("c", np.arange(0, 300, 3))
    assert router.count("c") == 200
    d = _digests(cluster, 0)
    assert d[0] == d[1] and d[0]["count"] == 200


def test_full_text_and_hybrid_search_answer_from_every_replica(cluster):
    router = cluster.router()
    router.create_collection("t", DIM, text_field="body", **OPTIONS)
    words = ["apple", "banana", "cherry", "damson"]
    router.upsert("t", np.arange(200), _vecs(np.arange(200)),
                  [{"body": f"{words[i % 4]} pie number {i}"} for i in range(200)])
    for _ in range(2):  # alternately on each replica: followers index the text of the records they apply
        ids = router.hybrid_search("t", text="cherry", top_k=5).ids
        assert len(ids) == 5 and all(i % 4 == 2 for i in ids)
        both = router.hybrid_search("t", text="damson", vector=_vecs([3])[0], top_k=3).ids
        assert both[0] == 3


def test_a_killed_follower_comes_back_from_the_primarys_log_and_ends_equal(cluster):
    router = cluster.router()
    router.create_collection("c", DIM, **OPTIONS)
    router.upsert("c", np.arange(200), _vecs(np.arange(200)))
    follower = 1 - cluster.primary_of(0)
    link = cluster.replica(0, cluster.primary_of(0)).leader.links[follower]
    seeded = link.sources["snapshots"]  # the create seeded the follower with the empty collection
    cluster.kill(0, follower)
    for s in range(200, 400, 20):  # acknowledged by the primary alone once the follower left the set
        router.upsert("c", np.arange(s, s + 20), _vecs(np.arange(s, s + 20), 1))
    router.delete("c", np.arange(0, 100))
    cluster.start(0, follower)
    cluster.wait_in_sync()
    d = _digests(cluster, 0)
    assert d[0] == d[1] and d[0]["count"] == 300
    assert link.sources["snapshots"] == seeded and link.sources["wal"] + link.sources["backlog"] > 0


def test_failover_keeps_acknowledged_writes_and_discards_what_the_old_primary_never_shipped(cluster):
    router = cluster.router()
    router.create_collection("c", DIM, **OPTIONS)
    acked = router.upsert("c", np.arange(150), _vecs(np.arange(150)))
    p = cluster.primary_of(0)
    f = 1 - p
    # the follower stops taking records; the primary logs one it will never ship (never acknowledged)
    gate = threading.Event()
    follower = cluster.replica(0, f)
    real = follower.replicate
    follower.replicate = lambda *a, **k: (gate.wait(), real(*a, **k))[1]
    old = cluster.replica(0, p)
    with old.writing():
        stray = old.db.upsert("c", [10_000], _vecs([10_000]))
    assert stray == acked + 1
    cluster.kill(0, p)
    gate.set()
    cluster.wait(lambda: cluster.primary_of(0) == f, "failover to the follower")
    assert router.count("c") == 150 and router.get("c", [10_000]) == []
    lsn = router.upsert("c", [20_000], _vecs([20_000]))
    assert lsn == acked + 1  # the new primary's LSN space continues from the acknowledged log
    cluster.start(0, p)  # the old primary returns with LSN acked+1 holding another record: re-seeded
    cluster.wait_in_sync()
    d = _digests(cluster, 0)
    assert d[0] == d[1] and d[0]["count"] == 151
    assert cluster.replica(0, f).leader.links[p].sources["snapshots"] == 1  # the new leader's link
    assert cluster.replica(0, p).db.get("c", [10_000]) == []


def test_a_follower_behind_a_purged_wal_is_reseeded_from_a_snapshot(tmp_path):
    c = LocalCluster(tmp_path, shards=1, replicas=2, backlog_mb=0.01)  # a 10 KB backlog: the WAL must serve
    try:
        c.wait_in_sync()
        router = c.router()
        router.create_collection("c", 256, wal_segment_mb=1, **OPTIONS)  # 1 KB records per vector
        x = np.random.default_rng(0).normal(size=(3100, 256)).astype(np.float32)
        router.upsert("c", np.arange(100), x[:100])
        p = c.primary_of(0)
        c.kill(0, 1 - p)
        for s in range(100, 3100, 250):  # ~3 MB of WAL: three 1 MB segments
            router.upsert("c", np.arange(s, s + 250), x[s: s + 250])
        router.flush("c")  # checkpoint: the primary purges the segments the follower would need
        primary = c.replica(0, p)
        assert primary.db.stats("c")["wal"]["first_lsn"] > 2
        seeded = primary.leader.links[1 - p].sources["snapshots"]
        c.start(0, 1 - p)
        c.wait_in_sync(timeout=60)
        assert primary.leader.links[1 - p].sources["snapshots"] == seeded + 1
        d = _digests(c, 0)
        assert d[0] == d[1] and d[0]["count"] == 3100
    finally:
        c.close()


def test_a_replica_lost_with_its_node_is_seeded_elsewhere_from_a_snapshot(cluster):
    router = cluster.router()
    router.create_collection("c", DIM, **OPTIONS)
    router.create_collection("other", 4)
    router.upsert("c", np.arange(300), _vecs(np.arange(300)), [{"i": int(i)} for i in range(300)])
    f = 1 - cluster.primary_of(0)
    cluster.kill(0, f)
    router.delete("c", [1, 2, 3])
    cluster.start(0, f, node="n-new")  # an empty directory on another node
    cluster.wait_in_sync()
    assert sorted(cluster.replica(0, f).db.list_collections()) == ["c", "other"]
    d = _digests(cluster, 0)
    assert d[0] == d[1] and d[0]["count"] == 297
    assert cluster.replica(0, cluster.primary_of(0)).leader.links[f].sources["snapshots"] == 2 + 2  # creates
    router.drop_collection("other")  # drops reach every in-sync replica before the acknowledgement
    assert [cluster.replica(0, r).db.list_collections() for r in range(2)] == [["c"], ["c"]]


def test_a_follower_that_keeps_failing_leaves_the_set_once_its_lease_ran_out(cluster):
    """Regression: a follower that answered every call with an error (a full disk, say) stayed in the in-sync
    set, and every write of the shard waited for it until its deadline."""
    router = cluster.router()
    router.create_collection("c", DIM, **OPTIONS)
    f = 1 - cluster.primary_of(0)
    follower = cluster.replica(0, f)

    def broken(*args, **kwargs):
        raise OSError("No space left on device")
    follower.replicate = broken
    router.upsert("c", [1], _vecs([1]))  # acknowledged once the follower is out (after its read lease)
    assert cluster.controller.shards[0]["in_sync"] == [] and not follower.readable()
    assert router.get("c", [1])[0].id == 1


def test_terms_fence_a_deposed_primary(cluster):
    p = cluster.primary_of(0)
    term = cluster.controller.shards[0]["term"]
    follower = cluster.replica(0, 1 - p)
    with pytest.raises(StaleTerm):
        follower.replicate(term - 1, {}, True)
    with pytest.raises(StaleTerm):
        cluster.controller.drop_in_sync(0, 1 - p, term - 1)
    with pytest.raises(UnavailableError, match="not the primary"):
        with follower.writing():
            pass


def test_an_in_sync_report_that_beats_the_promotion_reply_is_kept(tmp_path):
    """Regression: a new primary's link could report its follower in sync before become_primary returned to
    the controller, which then reset the in-sync set (or refused the report: no primary recorded yet) and the
    shard stayed without a readable follower, or its new primary stepped down."""
    c = LocalCluster(tmp_path, shards=1, replicas=2, monitor=False)  # no monitor thread: we drive the ticks
    try:
        first = c.spec.first_primary(0)
        rep = c.replica(0, first)
        real = rep.become_primary

        def promote_then_report(term, followers, hold_s=0.0):
            out = real(term, followers, hold_s)
            c.controller.set_in_sync(0, 1 - first, term, True)  # what the link does as soon as it can
            return out

        rep.become_primary = promote_then_report
        c.controller.tick()
        sh = c.controller.shards[0]
        assert sh["primary"] == first and sh["in_sync"] == [1 - first]
        assert rep.leader is not None and not rep.leader.deposed
    finally:
        c.close()


def test_a_restarted_controller_resumes_and_still_fails_over(tmp_path):
    from vdb.cluster.controller import Controller
    c = LocalCluster(tmp_path, shards=1, replicas=2)
    try:
        c.wait_in_sync()
        router = c.router()
        router.create_collection("c", DIM, **OPTIONS)
        router.upsert("c", np.arange(100), _vecs(np.arange(100)))
        term = c.controller.shards[0]["term"]
        c.controller.stop()
        c.controller = c.cpeer.obj = Controller(c.spec.to_dict(), connect=c.peers.get)  # reads its state file
        assert c.controller.shards[0]["term"] == term and c.controller.shards[0]["in_sync"]
        router.upsert("c", np.arange(100, 200), _vecs(np.arange(100, 200)))
        p = c.primary_of(0)
        c.kill(0, p)
        c.wait(lambda: c.primary_of(0) == 1 - p, "failover under the new controller")
        assert router.count("c") == 200
    finally:
        c.close()


def test_the_backlog_serves_only_runs_it_holds():
    from vdb.cluster.backlog import Backlog
    b = Backlog(100)
    for lsn in range(1, 6):
        b.add(lsn, 1, b"x" * 30)  # 150 bytes: the oldest go
    assert b.after(0, 1000) is None  # evicted: the WAL must serve it
    assert [r[0] for r in b.after(2, 1000)] == [3, 4, 5] and [r[0] for r in b.after(2, 1)] == [3]
    assert b.after(5, 1000) is None  # not held (yet): never "nothing newer" while the caller is behind
    b.add(9, 1, b"y")  # a gap (records it never saw): it starts over
    assert b.after(4, 1000) is None and [r[0] for r in b.after(8, 1000)] == [9]


def _drive(c, until, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, f"timed out: {what}"
        c.controller.tick()
        time.sleep(0.02)


def test_a_follower_that_missed_a_ping_can_still_take_over(tmp_path):
    """Regression: candidates had to have answered the very last ping, so a busy follower missed the failover
    and the shard waited for the dead primary's restart (14-17 s in bench_cluster under load)."""
    c = LocalCluster(tmp_path, shards=1, replicas=2, monitor=False)
    try:
        _drive(c, lambda: c.controller.shards[0]["in_sync"], "a follower in sync")
        p = c.primary_of(0)
        f = 1 - p
        peer = c.peers[c.name(0, f)]
        real, missed = peer.call, []

        def busy(method, *args, **kwargs):
            if method == "ping" and not missed:
                missed.append(1)
                raise PeerUnreachable("busy")
            return real(method, *args, **kwargs)
        peer.call = busy
        c.kill(0, p)
        c.controller.tick()  # the follower misses this ping; the primary is gone
        assert missed and c.controller.shards[0]["primary"] == f
    finally:
        c.close()


def test_a_silent_primary_is_replaced_only_after_its_lease_ran_out(tmp_path):
    """Pings still reach the primary (renewing its lease) but their answers are lost, and nothing else gets
    through: the new primary must not start before the old one stopped serving."""
    c = LocalCluster(tmp_path, shards=1, replicas=2, monitor=False)
    try:
        _drive(c, lambda: c.controller.shards[0]["in_sync"], "a follower in sync")
        p = c.primary_of(0)
        old, seen = c.replica(0, p), []
        peer = c.peers[c.name(0, p)]
        real = peer.call

        def one_way(method, *args, **kwargs):
            if method == "ping":
                real(method, *args, **kwargs)
            raise PeerUnreachable("answers lost")
        peer.call = one_way
        new = c.replica(0, 1 - p)
        promote = new.become_primary
        new.become_primary = lambda *a, **k: (seen.append(old.readable()), promote(*a, **k))[1]
        _drive(c, lambda: c.controller.shards[0]["primary"] == 1 - p, "the failover")
        assert seen == [False]  # the old primary had stopped serving when the new one was made
    finally:
        c.close()


def test_log_matching():
    h = [[1, 1], [3, 11], [4, 20]]
    assert term_at(h, 0) is None and term_at(h, 10) == 1 and term_at(h, 11) == 3 and term_at(h, 25) == 4
    assert log_matches([[1, 1]], 10, h, 30)          # a prefix of term 1
    assert not log_matches([[1, 1]], 11, h, 30)      # term 1 ended at 10: LSN 11 is another record here
    assert log_matches([[1, 1], [3, 11]], 15, h, 30)
    assert not log_matches([[1, 1], [2, 11]], 12, h, 30)  # a term the primary never had
    assert not log_matches([[1, 1]], 5, h, 4)        # longer than the primary's log
    assert log_matches([], 0, h, 30)


def test_a_read_that_finds_one_replicas_copy_damaged_is_answered_by_another(cluster, monkeypatch):
    # a replica whose copy fails its checksums answers DATA_LOSS (over real gRPC here; the damage is stood in
    # for: a replica restarted on postings we damaged came back with a good copy each time we tried). The router
    # once passed the DATA_LOSS to the client while the other replica held a good copy.
    router = cluster.router()
    router.create_collection("c", DIM, **OPTIONS)
    ids = np.arange(200)
    router.upsert("c", ids, _vecs(ids))
    damaged = cluster.replica(0, 1).db

    refused = []

    def fails_its_checksum(method):
        def refuse(*args, **kwargs):
            refused.append(method)
            raise vdb.DataLossError("postings.dat: posting 3 fails its checksum")
        return refuse
    for method in ("search", "get"):
        monkeypatch.setattr(damaged, method, fails_its_checksum(method))
    for _ in range(4):  # round robin: half of the searches, and half of the gets, go to the damaged one first
        assert router.search("c", _vecs([7])[0], 1, use_cache=False).ids[0] == 7
    for _ in range(4):
        assert len(router.get("c", [7])) == 1
    assert refused.count("search") >= 1 and refused.count("get") >= 1  # both were asked of it, and answered
    monkeypatch.setattr(cluster.replica(0, 0).db, "search", fails_its_checksum("search"))  # both damaged: say so
    with pytest.raises(vdb.DataLossError, match="fails its checksum"):
        router.search("c", _vecs([7])[0], 1, use_cache=False)
