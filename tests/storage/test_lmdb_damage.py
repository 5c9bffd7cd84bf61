"""The zero tail past data.mdb (storage/lmdbenv.py TailGuard) must never hide a page the file has: commits grow
the file into it. (That damage pointing past the end is an error, not SIGBUS, is tests/trust/test_damage.py's.)"""
from __future__ import annotations

import numpy as np
import pytest

from storage.meta import MetaStore


def test_the_zero_tail_follows_a_growing_store(tmp_path):
    """Every commit grows the file past where the zero pages were: every page written must read back as written,
    through this process's mapping and through a second, read-only opener's."""
    store = MetaStore(tmp_path, create=True)
    try:
        for round_ in range(6):
            with store.write() as w:
                ids = np.arange(round_ * 5000, (round_ + 1) * 5000, dtype=np.int64)
                w.put_payloads(ids, [{"r": round_, "i": int(i)} for i in ids])
                w.put_array(f"a{round_}", np.full(300_000, round_, np.int32))
            assert [p["i"] for p in store.payloads(ids[::997])] == ids[::997].tolist()
            for r in range(round_ + 1):
                assert (store.get_array(f"a{r}") == r).all()
        assert sum(1 for _ in store.iter_payloads()) == 30_000
    finally:
        store.close()
    reader = MetaStore(tmp_path, readonly=True)
    try:
        assert sum(1 for _ in reader.iter_payloads()) == 30_000 and (reader.get_array("a5") == 5).all()
    finally:
        reader.close()


def _mappings() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def test_commits_that_grow_the_file_do_not_add_mappings(tmp_path):
    """Found in review: each growing commit mapped its new range from a fresh descriptor, which the kernel
    never merges, so a long-running server ran out of mappings (vm.max_map_count) after ~65K commits and then
    could not allocate memory at all. The ranges now come from one descriptor at contiguous offsets."""
    store = MetaStore(tmp_path, create=True)
    try:
        with store.write() as w:
            w.put_payloads(np.arange(10, dtype=np.int64), [{"i": i} for i in range(10)])
        before = _mappings()
        for round_ in range(400):
            with store.write() as w:
                ids = np.arange(round_ * 50, (round_ + 1) * 50, dtype=np.int64)
                w.put_payloads(ids, [{"t": "x" * 200, "i": int(i)} for i in ids])
        assert _mappings() <= before + 4, (before, _mappings())
        assert [p["i"] for p in store.payloads(np.arange(0, 20_000, 999))] == list(range(0, 20_000, 999))
    finally:
        store.close()


@pytest.mark.slow
def test_a_transaction_that_spills_pages_mid_write_commits(tmp_path):
    """Found in review: a write transaction dirtying more than LMDB's dirty list (512 MiB) writes pages
    mid-transaction and reads them back through the mapping, where the zero tail used to be: the write failed
    with MDB_CORRUPTED every time. The tail is mapped from the file while a write is open."""
    store = MetaStore(tmp_path, create=True)
    try:
        rng = np.random.default_rng(0)
        ids = rng.permutation(np.arange(1, 300_001, dtype=np.int64) * 7919)
        with store.write() as w:
            for s in range(0, len(ids), 10_000):
                w.put_payloads(ids[s:s + 10_000], [{"t": "x" * 1500, "i": int(i)} for i in ids[s:s + 10_000]])
        sample = rng.choice(ids, 2000, replace=False)
        assert [p["i"] for p in store.payloads(sample)] == sample.tolist()
    finally:
        store.close()
