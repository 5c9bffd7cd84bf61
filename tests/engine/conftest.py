from __future__ import annotations

import pytest

import vdb


@pytest.fixture
def db(tmp_path):
    d = vdb.connect(tmp_path / "data", checkpoint_interval_s=3600)
    yield d
    d.close()


@pytest.fixture
def reopen(tmp_path):
    """Close a database and open the same directory again."""
    def _reopen(d):
        d.close()
        return vdb.connect(tmp_path / "data", checkpoint_interval_s=3600)
    return _reopen
