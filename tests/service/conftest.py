from __future__ import annotations

import numpy as np
import pytest

from running import Running


@pytest.fixture
def running(tmp_path):
    r = Running(tmp_path / "data", checkpoint_interval_s=3600)
    yield r
    r.stop()


@pytest.fixture
def client(running):
    with running.client() as c:
        yield c


@pytest.fixture
def filled(client):
    from vdb.inputs.synthetic import ClusteredMixture
    m = ClusteredMixture(16, 8, 5)
    x = m.sample(1500, 1)
    client.create_collection("c", dim=16)
    client.upsert("c", np.arange(1500), x, payloads=[{"g": i % 3, "s": f"v{i % 5}"} for i in range(1500)])
    return x
