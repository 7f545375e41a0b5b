"""Every store under one contract: memory, SQLite, and the real Redis and PostgreSQL.

Each test gets a fresh namespace on the shared servers (``make_store``, in the root
conftest), so tests never see each other's keys, and a `FakeClock` passed as the store's
clock, so nothing sleeps.
"""

from __future__ import annotations

import pytest

from buttress.stores import Store
from buttress.testing import FakeClock
from tests.conftest import StoreFactory


@pytest.fixture
def store(make_store: StoreFactory, clock: FakeClock) -> Store:
    """A store of the parametrised kind on the test's fake clock."""
    return make_store(clock=clock)
