from __future__ import annotations

import numpy as np
import pytest

import vdb
from vdb.config import load_settings
from vdb.server import create_server


class Running:
    """An in-process server on port 0 over its own data directory."""

    def __init__(self, path, **settings):
        self.db = vdb.connect(path, **{k: v for k, v in settings.items() if k != "port"})
        self.server, self.port = create_server(self.db, load_settings({**settings, "port": 0}))
        self.server.start()
        self.target = f"127.0.0.1:{self.port}"

    def client(self, **kw) -> vdb.Client:
        return vdb.Client(self.target, **kw)

    def stop(self):
        self.server.stop(0).wait()
        self.db.close()


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
    from vdb.synthetic import ClusteredMixture
    m = ClusteredMixture(16, 8, 5)
    x = m.sample(1500, 1)
    client.create_collection("c", dim=16)
    client.upsert("c", np.arange(1500), x, payloads=[{"g": i % 3, "s": f"v{i % 5}"} for i in range(1500)])
    return x
