"""Shared fixtures: small deterministic clustered data and a built index (tests generate all their data)."""
from __future__ import annotations

import numpy as np
import pytest

from vdb.inputs.synthetic import ClusteredMixture


@pytest.fixture(scope="session")
def mixture() -> ClusteredMixture:
    return ClusteredMixture(dim=32, n_clusters=40, seed=3)


@pytest.fixture(scope="session")
def base(mixture) -> np.ndarray:
    return mixture.sample(6000, 1)


@pytest.fixture(scope="session")
def queries(mixture) -> np.ndarray:
    return mixture.sample(200, 2)


@pytest.fixture(scope="session")
def built_l2(tmp_path_factory, base):
    """A small l2 index shared by read-only tests (never modify it)."""
    from index import BuildParams, build_index
    path = tmp_path_factory.mktemp("idx") / "l2"
    build_index(base, path, params=BuildParams(metric="l2", head_ratio=0.02, seed=1))
    return path
