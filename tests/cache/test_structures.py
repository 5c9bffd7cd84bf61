"""The cache's containers on their own: keys by bucket, LRU entries bounded by bytes, invalidation by balls,
and the doorkeeper that admits only returning queries."""
from __future__ import annotations

import numpy as np

from index.types import Metric
from vdb.cache.admission import Doorkeeper
from vdb.cache.buckets import Bucketing, KeyMatrix
from vdb.cache.entries import ENTRY_OVERHEAD_BYTES, Entry, EntryStore, inside_balls


def _entry(key, radius=1.0, bucket=0, sig=0, n=4):
    key = np.asarray(key, np.float32)
    return Entry(sig, key, bucket, np.arange(n), np.zeros((n, len(key)), np.float32), radius, radius / 2)


def test_key_matrix_finds_the_nearest_live_key_of_a_signature():
    m = KeyMatrix(2)
    for slot, key in enumerate([[0, 0], [1, 0], [5, 5]]):
        m.add(slot, sig=slot % 2, key=np.array(key, np.float32), aux=float(slot))
    q = np.array([0.9, 0.0], np.float32)
    slot, dist, aux = m.nearest(q, float(q @ q), sig=1)
    assert (slot, aux) == (1, 1.0) and abs(dist - 0.1) < 1e-5
    assert m.nearest(q, float(q @ q), sig=0)[0] == 0  # signature 1's key is not considered
    m.remove(1)
    assert m.nearest(q, float(q @ q), sig=1)[0] == -1


def test_key_matrix_compacts_dead_rows_and_keeps_the_live_ones():
    m = KeyMatrix(1)
    for slot in range(40):
        m.add(slot, 0, np.array([float(slot)], np.float32))
    for slot in range(30):
        m.remove(slot)
    assert m.n < 40 and m.n - m.dead == 10  # dead rows were compacted away once they were the majority
    q = np.array([31.2], np.float32)
    assert m.nearest(q, float(q @ q), 0)[0] == 31


def test_bucketing_sends_a_query_to_its_nearest_sampled_head():
    b = Bucketing(Metric.L2)
    assert (b.of(np.zeros((3, 2), np.float32)) == 0).all()  # untrained: one bucket
    heads = np.array([[0, 0], [10, 0], [0, 10]], np.float32)
    b.train(heads)
    got = b.of(np.array([[9, 1], [1, 9], [0.5, 0.5]], np.float32))
    assert [tuple(b.centroids[i]) for i in got] == [(10, 0), (0, 10), (0, 0)]


def test_entry_store_evicts_least_recently_used_within_its_byte_bound():
    one = _entry([0, 0]).nbytes
    store = EntryStore(2, max_bytes=2 * one)
    slots = []
    for i in range(2):
        store.add(_entry([i, 0]))
        slots.append(store.nearest(0, np.array([i, 0], np.float32), float(i * i), 0)[0])
    store.touch(slots[0])  # the first is now the most recent: the second goes
    assert store.add(_entry([7, 0])) == 1 and len(store) == 2 and store.bytes <= 2 * one
    q = np.array([1, 0], np.float32)
    assert store.get(store.nearest(0, q, 1.0, 0)[0]).key.tolist() != [1, 0]
    assert ENTRY_OVERHEAD_BYTES < one


def test_invalidation_removes_exactly_the_balls_a_new_vector_falls_into():
    store = EntryStore(2, max_bytes=1 << 20)
    for key in ([0, 0], [10, 0]):
        store.add(_entry(key, radius=1.0))
    slots, keys, radius = store.balls()
    inside = inside_balls(np.array([[0.5, 0.5]], np.float32), keys, radius, Metric.L2)
    assert inside.tolist() == [True, False]
    assert store.discard(np.asarray(slots)[inside].tolist()) == 1 and len(store) == 1
    assert store.discard(slots) == 1  # an entry already gone is skipped
    # ip balls are in kernel units (-dot): a vector inside has -x.key <= radius
    assert inside_balls(np.array([[1.0, 0.0]], np.float32), np.array([[1.0, 0.0]], np.float32),
                        np.array([-0.5], np.float32), Metric.IP).tolist() == [True]


def test_doorkeeper_admits_a_returning_query_once_and_ignores_strangers():
    door = Doorkeeper(2, max_ghosts=2)
    q = np.array([1.0, 1.0], np.float32)
    door.remember(q, bucket=0, sig=0, radius=0.5)
    near, far = q + 0.1, q + 3.0
    assert not door.admit(far, float(far @ far), 0, 0)
    assert not door.admit(near, float(near @ near), 0, 1)  # other knobs: another query
    assert door.admit(near, float(near @ near), 0, 0)
    assert not door.admit(near, float(near @ near), 0, 0)  # the ghost was consumed
    for i in range(3):  # the oldest ghost goes when the cap is reached
        door.remember(np.array([10.0 * i, 0], np.float32), 0, 0, 0.5)
    assert len(door) == 2 and not door.admit(np.zeros(2, np.float32), 0.0, 0, 0)


def test_doorkeeper_learns_how_far_a_fill_can_certify():
    door = Doorkeeper(2, max_ghosts=8)
    q = np.zeros(2, np.float32)
    door.remember(q, 0, 0, radius=5.0)
    for _ in range(16):
        door.learn(0.1)
    probe = np.array([0.5, 0.0], np.float32)  # within the ghost's radius, beyond the learnt margin
    assert door.certifiable == np.float32(0.1) or abs(door.certifiable - 0.1) < 1e-9
    assert not door.admit(probe, float(probe @ probe), 0, 0)
