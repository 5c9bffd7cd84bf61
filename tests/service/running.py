"""An in-process vdb server for the service tests."""
from __future__ import annotations

import vdb
from vdb.config import load_settings
from vdb.service.server import create_server


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
