"""Every store under one contract: memory, SQLite, and the real Redis and PostgreSQL.

Each test gets a fresh namespace on the shared servers, so tests never see each other's
keys, and a `FakeClock` passed as the store's clock, so nothing sleeps.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from buttress.stores import Store, open_store
from buttress.testing import FakeClock

StoreFactory = Callable[..., Store]

KINDS = ["memory", "sqlite", "redis", "postgres"]


@pytest.fixture(params=KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def store_url(store_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if store_kind == "memory":
        return "memory://"
    if store_kind == "sqlite":
        return f"sqlite:///{tmp_path / 'buttress.db'}"
    if store_kind == "redis":
        url: str = request.getfixturevalue("redis_url")
        return url
    pg_url: str = request.getfixturevalue("postgres_url")
    return pg_url


@pytest.fixture
def make_store(store_kind: str, store_url: str) -> Iterator[StoreFactory]:
    """Open stores of the parametrised kind (closed after the test)."""
    opened: list[Store] = []
    namespace = f"t{uuid.uuid4().hex[:12]}"

    def factory(**options: object) -> Store:
        if store_kind != "memory":
            options.setdefault("namespace", namespace)
        store = open_store(store_url, **options)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


@pytest.fixture
def store(make_store: StoreFactory, clock: FakeClock) -> Store:
    """A store of the parametrised kind on the test's fake clock."""
    return make_store(clock=clock)
