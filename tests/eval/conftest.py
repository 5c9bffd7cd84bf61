"""Small labelled datasets generated in the tests (the suite never needs /work/shared)."""
from __future__ import annotations

import pytest

from labelled import make_labelled  # noqa: F401 (shared with the tests)


@pytest.fixture
def toy():
    return make_labelled()


@pytest.fixture
def make_toy():
    return make_labelled
