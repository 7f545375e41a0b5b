"""The rate-limit fallback under real store faults: stopped, frozen, restarted servers.

A private redis-server (`PrivateRedis`) is stopped, frozen with SIGSTOP and restarted;
PostgreSQL ends the store's backends with ``pg_terminate_backend`` in a database of the
test's own. The middleware's breaker runs on a `FakeClock` (the probe after its break is
reached by advancing it); the stores read their server's clock. Each request is bounded
by an outer ``asyncio.timeout`` far above the store timeout, so a hang fails the test
instead of stalling it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from buttress.asgi import Limit
from buttress.asgi.middleware import RateLimitMiddleware
from buttress.errors import BackendError
from buttress.stores import Rate, RateRequest, open_store
from buttress.telemetry import Event, RateLimitFallbackEvent
from buttress.testing import FakeClock
from tests.conftest import PrivateRedis, own_database

SECRET = "store-faults-secret-0123456789abcdef"
BOUND = 10.0  # seconds: far above any store timeout here; reaching it means a hang


async def ok(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def redis_server(private_redis: PrivateRedis) -> PrivateRedis:
    return private_redis


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    with own_database("rs") as url:
        yield url


def middleware(
    store: Any, clock: FakeClock, events: list[Event], mode: str = "open", limit: str = "100/hour"
) -> RateLimitMiddleware:
    return RateLimitMiddleware(
        ok,
        [Limit("per-ip", limit)],
        store=store,
        fail_mode=mode,  # type: ignore[arg-type]
        clock=clock,
        key_secret=SECRET,
        store_timeout=0.5,
        hooks=[events.append],
    )


async def send(app: RateLimitMiddleware, n: int = 1) -> list[httpx.Response]:
    """``n`` concurrent requests from one client (concurrent: several pooled connections)."""
    transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 4000))
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        async with asyncio.timeout(BOUND):
            return list(await asyncio.gather(*(client.get("/x") for _ in range(n))))


def fallbacks(events: list[Event]) -> list[tuple[bool, str]]:
    return [(e.engaged, e.reason) for e in events if isinstance(e, RateLimitFallbackEvent)]


def remaining(response: httpx.Response) -> int:
    return int(response.headers["ratelimit"].split(";r=")[1].split(";")[0])


def redis_pid(server: PrivateRedis) -> int:
    return server.pid()


# ---------------------------------------------------------------- Redis
async def test_redis_restart_first_calls_reconnect_without_failing(
    redis_server: PrivateRedis, clock: FakeClock
) -> None:
    """Every pooled connection is stale after a restart: each is reopened, no 503."""
    events: list[Event] = []
    store = open_store(redis_server.url, namespace=f"rs{uuid.uuid4().hex[:8]}", timeout=0.5)
    app = middleware(store, clock, events, mode="closed")
    try:
        assert {r.status_code for r in await send(app, 4)} == {200}
        store.acquire([RateRequest("sync", Rate.parse("100/hour"))])  # the sync pool too
        redis_server.restart()
        assert [r.status_code for r in await send(app, 4)] == [200] * 4
        store.acquire([RateRequest("sync", Rate.parse("100/hour"))])
        assert fallbacks(events) == []
    finally:
        await store.aclose()


async def test_redis_stopped_fail_closed_is_503_then_shared_again(
    redis_server: PrivateRedis, clock: FakeClock
) -> None:
    events: list[Event] = []
    store = open_store(redis_server.url, namespace=f"rs{uuid.uuid4().hex[:8]}", timeout=0.5)
    app = middleware(store, clock, events, mode="closed")
    try:
        assert remaining((await send(app))[0]) == 99
        redis_server.stop()
        down = await send(app, 4)
        assert {r.status_code for r in down} == {503}
        assert all(r.headers["retry-after"] for r in down)
        assert down[0].headers["content-type"] == "application/problem+json"
        assert down[0].json()["code"] == "backend_error"
        assert fallbacks(events) == [(True, "store error")]
        assert app.breaker.state == "open"  # 3 consecutive failures
        redis_server.start()
        clock.advance(5.0)  # the breaker's break: its probe goes to the store
        [back] = await send(app)
        assert back.status_code == 200
        assert remaining(back) == 99  # not durable: the restarted server starts afresh
        assert fallbacks(events)[-1] == (False, "store recovered")
        assert remaining((await send(app))[0]) == 98
    finally:
        await store.aclose()


async def test_redis_frozen_is_a_timeout_then_the_shared_counts_return(
    redis_server: PrivateRedis, clock: FakeClock
) -> None:
    """SIGSTOP: each decision gives up after the store timeout and is decided locally."""
    events: list[Event] = []
    namespace = f"rs{uuid.uuid4().hex[:8]}"
    store = open_store(redis_server.url, namespace=namespace, timeout=0.3)
    other = open_store(redis_server.url, namespace=namespace, timeout=0.3)  # another worker
    app = middleware(store, clock, events, mode="open")
    peer = middleware(other, clock, [], mode="open")
    try:
        assert remaining((await send(app))[0]) == 99
        os.kill(redis_pid(redis_server), signal.SIGSTOP)
        try:
            frozen = await send(app)
            with pytest.raises(BackendError):  # the sync path times out too
                other.acquire([RateRequest("sync", Rate.parse("100/hour"))])
        finally:
            os.kill(redis_pid(redis_server), signal.SIGCONT)
        assert frozen[0].status_code == 200
        assert remaining(frozen[0]) == 99  # the local store's first decision
        assert fallbacks(events) == [(True, "timeout")]
        # the breaker is still closed (one failure): the next call is the store's again
        back = await send(app)
        assert fallbacks(events)[-1] == (False, "store recovered")
        shared = remaining(back[0])
        assert shared in (97, 98)  # the frozen call may have run once the server woke
        assert remaining((await send(peer))[0]) == shared - 1  # one count for both workers
    finally:
        await store.aclose()
        await other.aclose()


# ---------------------------------------------------------------- PostgreSQL
def terminate_backends(url: str) -> int:
    """End every backend of the store's database but this one (as a restart would)."""
    dbname = url.rsplit("/", 1)[1]
    with psycopg.connect(url, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            [dbname],
        ).fetchall()
    return len(rows)


async def test_postgres_terminated_backends_do_not_fail_the_next_calls(
    pg_url: str, clock: FakeClock
) -> None:
    events: list[Event] = []
    store = open_store(pg_url, namespace=f"rs{uuid.uuid4().hex[:8]}", timeout=1.0)
    app = middleware(store, clock, events, mode="closed")
    rate = Rate.parse("100/hour")
    try:
        assert {r.status_code for r in await send(app, 3)} == {200}
        store.acquire([RateRequest("sync", rate)])
        assert terminate_backends(pg_url) >= 2  # the async and the sync connections
        assert [r.status_code for r in await send(app, 3)] == [200] * 3
        [d] = store.acquire([RateRequest("sync", rate)])
        assert d.remaining == 98
        assert fallbacks(events) == []
    finally:
        await store.aclose()


async def test_postgres_unreachable_fails_open_then_returns(pg_url: str, clock: FakeClock) -> None:
    """A server that refuses connections: local decisions, then the shared counts again."""
    events: list[Event] = []
    namespace = f"rs{uuid.uuid4().hex[:8]}"
    store = open_store(pg_url, namespace=namespace, timeout=1.0)
    app = middleware(store, clock, events, mode="open")
    try:
        assert remaining((await send(app))[0]) == 99
        dbname = pg_url.rsplit("/", 1)[1]
        with psycopg.connect(pg_url.rsplit("/", 1)[0] + "/test", autocommit=True) as admin:
            admin.execute(f"ALTER DATABASE {dbname} WITH ALLOW_CONNECTIONS false")
            try:
                terminate_backends_of(admin, dbname)
                down = await send(app, 4)
            finally:
                admin.execute(f"ALTER DATABASE {dbname} WITH ALLOW_CONNECTIONS true")
        assert [r.status_code for r in down] == [200] * 4
        assert fallbacks(events) == [(True, "store error")]
        assert app.breaker.state == "open"
        clock.advance(5.0)
        back = await send(app)
        assert remaining(back[0]) == 98  # the shared count, kept by the server
        assert fallbacks(events)[-1] == (False, "store recovered")
    finally:
        await store.aclose()


def terminate_backends_of(admin: psycopg.Connection[Any], dbname: str) -> None:
    admin.execute(
        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE datname = %s",
        [dbname],
    )
