"""The zero tail past data.mdb (storage/lmdbenv.py TailGuard) must never hide a page the file has: commits grow
the file into it. (That damage pointing past the end is an error, not SIGBUS, is tests/trust/test_damage.py's.)"""
from __future__ import annotations

import numpy as np

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
