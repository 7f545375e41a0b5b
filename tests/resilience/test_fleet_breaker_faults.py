"""SharedBreakerState on real stores that fail: stopped, frozen, restarted, backends ended.

Instances are `SharedBreakerState` objects in this process on one private redis-server
(`PrivateRedis`, stopped, SIGSTOPped and restarted by the test) or on a PostgreSQL
database of the test's own. One `FakeClock` drives the stores' time (report expiry) and
the breakers; the tests call ``refresh_once`` themselves, so nothing sleeps.
"""

from __future__ import annotations

import os
import signal
import uuid

import psycopg
import pytest

from buttress import CircuitBreaker
from buttress.resilience import SharedBreakerState
from buttress.stores import BreakerStateStore, open_store
from buttress.testing import FakeClock
from tests.conftest import PrivateRedis, own_database


@pytest.fixture
def redis_server(private_redis: PrivateRedis) -> PrivateRedis:
    return private_redis


Fleet = list[tuple[CircuitBreaker, SharedBreakerState]]


def make_fleet(store: BreakerStateStore, clock: FakeClock, n: int = 3) -> Fleet:
    fleet = []
    for i in range(n):
        breaker = CircuitBreaker(name="payments", clock=clock, break_duration=5.0)
        fleet.append((breaker, SharedBreakerState(store, [breaker], instance=f"i{i}", clock=clock)))
    return fleet


def refresh(fleet: Fleet) -> None:
    for _ in range(2):  # everyone publishes, then everyone reads everyone
        for _, shared in fleet:
            shared.refresh_once()


def close_probe(breaker: CircuitBreaker) -> None:
    """One successful call: the probe of an open breaker whose break has passed."""
    permit = breaker.acquire()
    breaker.on_success(permit, 0.0)


def test_redis_outage_leaves_working_local_breakers_and_sharing_resumes(
    redis_server: PrivateRedis, clock: FakeClock
) -> None:
    store = open_store(
        redis_server.url, namespace=f"fb{uuid.uuid4().hex[:8]}", clock=clock, timeout=0.3
    )
    fleet = make_fleet(store, clock)
    (a, _), (b, _), (c, shared_c) = fleet
    try:
        a.force_open(60.0)
        b.force_open(60.0)
        refresh(fleet)
        assert c.state == "open"  # seen within one refresh after the others published
        redis_server.stop()
        shared_c.refresh_once()
        assert shared_c.alone
        assert shared_c.errors == 1
        assert shared_c.view("payments") is None
        clock.advance(5.0)  # not wedged open: the local breaker probes after its break
        close_probe(c)
        assert c.state == "closed"
        redis_server.start()  # the pooled connections are stale now
        for _ in range(2):
            for _, shared in fleet:
                shared.refresh_once()
        assert not shared_c.alone
        assert shared_c.errors == 1  # the restart cost no failed refresh
        assert c.state == "open"  # the quorum is still there: open again
    finally:
        store.close()


def test_redis_frozen_refresh_times_out_instead_of_hanging(
    redis_server: PrivateRedis, clock: FakeClock
) -> None:
    store = open_store(
        redis_server.url, namespace=f"fb{uuid.uuid4().hex[:8]}", clock=clock, timeout=0.3
    )
    fleet = make_fleet(store, clock, 1)
    [(breaker, shared)] = fleet
    try:
        shared.refresh_once()
        pid = redis_server.pid()
        os.kill(pid, signal.SIGSTOP)
        try:
            shared.refresh_once()  # bounded by the store timeout
        finally:
            os.kill(pid, signal.SIGCONT)
        assert shared.alone
        assert breaker.state == "closed"
        shared.refresh_once()
        assert not shared.alone
    finally:
        store.close()


def test_reports_of_dead_instances_expire(redis_server: PrivateRedis, clock: FakeClock) -> None:
    store = open_store(redis_server.url, namespace=f"fb{uuid.uuid4().hex[:8]}", clock=clock)
    fleet = make_fleet(store, clock)
    (a, _), (b, _), (c, shared_c) = fleet
    try:
        a.force_open(600.0)
        b.force_open(600.0)
        refresh(fleet)
        assert c.state == "open"
        # a and b die: they publish no more; their reports end after ttl (3 s)
        clock.advance(shared_c.ttl + 0.1)
        shared_c.refresh_once()
        assert c.state == "closed"
        view = shared_c.view("payments")
        assert view is not None
        assert (view.live, view.reporting_open) == (1, 0)
    finally:
        store.close()


def test_postgres_terminated_backends_cost_no_refresh(clock: FakeClock) -> None:
    with own_database("rs") as url:
        store = open_store(url, namespace=f"fb{uuid.uuid4().hex[:8]}", clock=clock)
        fleet = make_fleet(store, clock)
        (a, _), (b, _), (c, shared_c) = fleet
        try:
            a.force_open(60.0)
            b.force_open(60.0)
            refresh(fleet)
            assert c.state == "open"
            dbname = url.rsplit("/", 1)[1]
            with psycopg.connect(url, autocommit=True) as admin:
                ended = admin.execute(
                    "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    [dbname],
                ).fetchall()
            assert ended
            a.reset()
            b.reset()
            refresh(fleet)
            assert [s.errors for _, s in fleet] == [0, 0, 0]
            assert c.state == "closed"
        finally:
            store.close()
