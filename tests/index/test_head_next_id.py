"""HeadIndex.next_id: every head added after it was read has an id at least as large (the memtable's filing
rule relies on it, vdb/engine/memtable.py)."""
import numpy as np

from index.centroids import HeadIndex


def test_next_id_grows_with_adds_and_survives_serialization():
    rng = np.random.default_rng(0)
    for kind in ("flat", "hnsw"):
        index = HeadIndex.build(rng.standard_normal((50, 8)).astype(np.float32), angular=False, kind=kind,
                                ids=np.arange(100, 150))
        assert index.next_id == 150
        index.add(rng.standard_normal((2, 8)).astype(np.float32), np.array([150, 151]))
        assert index.next_id == 152
        assert HeadIndex.from_bytes(index.to_bytes(), angular=False).next_id == 152
        if index.remove(np.array([151])):  # flat: removing a head never lowers the bound below an id handed out
            assert index.next_id == 152
    assert HeadIndex.build(np.zeros((0, 8), np.float32), angular=False, kind="flat").next_id == 0
