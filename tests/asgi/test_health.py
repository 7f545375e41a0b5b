"""HealthMiddleware and the built-in checks.

Deterministic where it can be (FakeClock drives caching and timeouts); the real-dependency
tests use the shared PostgreSQL and Redis (fixtures fail loudly when they are down), plus
an HTTP server and a redis-server this module starts and stops itself on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from buttress._clock import SYSTEM_CLOCK
from buttress.asgi._health import (
    HEALTH_CONTENT_TYPE,
    BaseCheck,
    BreakersCheck,
    Check,
    CheckResult,
    DiskCheck,
    HealthMiddleware,
    HttpCheck,
    MemoryCheck,
    PostgresCheck,
    RedisCheck,
    SQLiteCheck,
)
from buttress.errors import ConfigurationError
from buttress.resilience import CircuitBreaker, Registry
from buttress.testing import FakeClock

HEALTH_JSON = HEALTH_CONTENT_TYPE.decode()
REMOTE = ("203.0.113.7", 40000)  # TEST-NET-3: never loopback


# ------------------------------------------------------------------ helpers
class FakeCheck:
    """A check whose outcome the test sets; counts its runs; can wait on a gate."""

    component_type = "component"
    measurement = "responseTime"

    def __init__(
        self,
        name: str,
        *,
        critical: bool = True,
        status: str = "pass",
        raises: BaseException | None = None,
        gate: asyncio.Event | None = None,
        timeout: float | None = None,
    ) -> None:
        self.name = name
        self.critical = critical
        self.status = status
        self.raises = raises
        self.gate = gate
        self.timeout = timeout
        self.calls = 0

    async def run(self) -> CheckResult:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.raises is not None:
            raise self.raises
        output = None if self.status == "pass" else f"{self.name} is {self.status}"
        return CheckResult(
            status=self.status,  # type: ignore[arg-type]
            observed_value=1.5,
            observed_unit="ms",
            output=output,
        )


async def bare_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"app"})


def starlette_app() -> Starlette:
    async def root(request: Request) -> PlainTextResponse:
        return PlainTextResponse("app")

    return Starlette(routes=[Route("/", root)])


def fastapi_app() -> FastAPI:
    app = FastAPI()

    @app.get("/")
    async def root() -> PlainTextResponse:
        return PlainTextResponse("app")

    return app


APPS: dict[str, Callable[[], Any]] = {
    "bare": lambda: bare_app,
    "starlette": starlette_app,
    "fastapi": fastapi_app,
}


@pytest.fixture(params=sorted(APPS))
def inner_app(request: pytest.FixtureRequest) -> Any:
    """The app behind the middleware: a bare ASGI callable, Starlette, FastAPI."""
    return APPS[request.param]()


def client_for(app: Any, client: tuple[str, int] = ("127.0.0.1", 5000)) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=client)
    return httpx.AsyncClient(transport=transport, base_url="http://service")


def health(app: Any = bare_app, **options: Any) -> HealthMiddleware:
    options.setdefault("breakers", False)  # the global registry is shared by other tests
    options.setdefault("clock", FakeClock(1000.0))
    return HealthMiddleware(app, **options)


async def wait_until(predicate: Callable[[], bool], seconds: float = 5.0) -> None:
    """Poll (bounded in time) until ``predicate`` holds."""
    limit = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < limit, "condition not reached in time"
        await asyncio.sleep(0.001)


# ------------------------------------------------------------------ the three endpoints
async def test_live_is_200_while_a_critical_dependency_is_down(inner_app: Any) -> None:
    db = FakeCheck("db", status="fail")
    mw = health(inner_app, checks=[db])
    async with client_for(mw) as client:
        live = await client.get("/health/live")
        ready = await client.get("/health/ready")
        passthrough = await client.get("/")
    assert live.status_code == 200
    assert live.json() == {"status": "pass"}
    assert live.headers["content-type"] == HEALTH_JSON
    assert ready.status_code == 503
    assert ready.json()["status"] == "fail"
    assert db.calls == 1  # only readiness ran it: liveness never touches dependencies
    assert passthrough.status_code == 200
    assert passthrough.text == "app"


async def test_ready_ignores_failing_non_critical_checks(inner_app: Any) -> None:
    db = FakeCheck("db")
    search = FakeCheck("search", critical=False, status="fail")
    mw = health(inner_app, checks=[db, search])
    async with client_for(mw) as client:
        ready = await client.get("/health/ready")
        report = await client.get("/health")
    assert ready.status_code == 200
    assert ready.json()["status"] == "pass"
    assert set(ready.json()["checks"]) == {"db:responseTime"}  # critical checks only
    assert search.calls == 1  # run by the full report, not by readiness
    assert report.status_code == 200
    assert report.headers["content-type"] == HEALTH_JSON
    assert report.json()["status"] == "warn"


@pytest.mark.parametrize(
    ("statuses", "expected", "code"),
    [
        ({"db": ("pass", True), "cache": ("pass", False)}, "pass", 200),
        ({"db": ("warn", True), "cache": ("pass", False)}, "warn", 200),
        ({"db": ("pass", True), "cache": ("fail", False)}, "warn", 200),
        ({"db": ("fail", True), "cache": ("warn", False)}, "fail", 503),
    ],
)
async def test_report_aggregates_pass_warn_fail(
    statuses: dict[str, tuple[str, bool]], expected: str, code: int
) -> None:
    checks = [FakeCheck(n, status=s, critical=c) for n, (s, c) in statuses.items()]
    mw = health(checks=checks, version="1.2.3", service_id="orders")
    async with client_for(mw) as client:
        response = await client.get("/health")
    assert response.status_code == code
    assert response.headers["content-type"] == HEALTH_JSON
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["status"] == expected
    assert body["version"] == "1.2.3"
    assert body["serviceId"] == "orders"
    assert set(body["checks"]) == {"db:responseTime", "cache:responseTime"}
    for name, (status, critical) in statuses.items():
        [entry] = body["checks"][f"{name}:responseTime"]
        assert entry["componentId"] == name
        assert entry["componentType"] == "component"
        assert entry["observedValue"] == 1.5
        assert entry["observedUnit"] == "ms"
        assert entry["status"] == status
        assert entry["critical"] is critical
        assert datetime.fromisoformat(entry["time"]).tzinfo is not None
        assert ("output" in entry) is (status != "pass")


async def test_ready_with_warn_is_200_and_without_checks_is_pass() -> None:
    async with client_for(health(checks=[FakeCheck("db", status="warn")])) as client:
        warned = await client.get("/health/ready")
    async with client_for(health()) as client:
        empty_ready = await client.get("/health/ready")
        empty_report = await client.get("/health")
    assert (warned.status_code, warned.json()["status"]) == (200, "warn")
    assert (empty_ready.status_code, empty_ready.json()) == (200, {"status": "pass"})
    assert (empty_report.status_code, empty_report.json()) == (
        200,
        {"status": "pass", "checks": {}},
    )


async def test_draining_turns_readiness_503_at_once(inner_app: Any) -> None:
    db = FakeCheck("db")
    mw = health(inner_app, checks=[db])
    async with client_for(mw) as client:
        assert (await client.get("/health/ready")).status_code == 200
        assert not mw.draining
        mw.mark_draining()
        assert mw.draining
        ready = await client.get("/health/ready")  # inside the cache TTL: no refresh needed
        live = await client.get("/health/live")
        report = await client.get("/health")
        app_still_served = await client.get("/")
    assert ready.status_code == 503
    assert ready.json() == {"status": "fail", "output": "draining"}
    assert live.status_code == 200
    assert report.status_code == 200  # draining is a deploy, not an outage: no alert
    assert report.json()["notes"] == ["draining"]
    assert app_still_served.status_code == 200


async def test_mark_dead_fails_liveness_and_readiness() -> None:
    mw = health(checks=[FakeCheck("db")])
    assert mw.alive
    mw.mark_dead("worker pool wedged")
    assert not mw.alive
    async with client_for(mw) as client:
        live = await client.get("/health/live")
        ready = await client.get("/health/ready")
        report = await client.get("/health")
    async with client_for(mw, client=REMOTE) as remote:
        live_hidden = await remote.get("/health/live")
    assert live.status_code == ready.status_code == report.status_code == 503
    assert live.json() == {"status": "fail", "output": "worker pool wedged"}
    assert report.json()["status"] == "fail"
    assert live_hidden.json() == {"status": "fail"}


async def test_head_answers_headers_only_and_other_methods_get_405(inner_app: Any) -> None:
    mw = health(inner_app, checks=[FakeCheck("db")])
    async with client_for(mw) as client:
        head = await client.head("/health/ready")
        posts = [await client.post(path) for path in ("/health/live", "/health/ready", "/health")]
        delete = await client.delete("/health")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == HEALTH_JSON
    assert int(head.headers["content-length"]) > 0
    for response in [*posts, delete]:
        assert response.status_code == 405
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["allow"] == "GET, HEAD"
        assert response.json()["code"] == "method_not_allowed"


async def test_other_paths_and_non_http_scopes_pass_through_untouched() -> None:
    seen: list[dict[str, Any]] = []

    async def recorder(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope)

    mw = health(recorder)

    async def receive() -> dict[str, Any]:  # pragma: no cover - never called
        return {}

    async def send(message: Any) -> None:  # pragma: no cover - never called
        raise AssertionError(message)

    lifespan = {"type": "lifespan", "asgi": {"version": "3.0"}}
    websocket = {"type": "websocket", "path": "/health", "headers": []}
    http_other = {"type": "http", "path": "/health/other", "method": "GET", "headers": []}
    for scope in (lifespan, websocket, http_other):
        await mw(scope, receive, send)
    assert seen == [lifespan, websocket, http_other]
    assert all(a is b for a, b in zip(seen, (lifespan, websocket, http_other), strict=True))


async def test_paths_can_be_moved_or_switched_off() -> None:
    mw = health(starlette_app(), live_path="/livez", ready_path="/readyz", health_path=None)
    async with client_for(mw) as client:
        assert (await client.get("/livez")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
        assert (await client.get("/health")).status_code == 404  # Starlette's own 404
        assert (await client.get("/health/live")).status_code == 404


async def test_works_through_starlette_add_middleware() -> None:
    app = starlette_app()
    app.add_middleware(HealthMiddleware, checks=[FakeCheck("db", status="fail")], breakers=False)
    async with client_for(app) as client:
        assert (await client.get("/health/live")).status_code == 200
        assert (await client.get("/health/ready")).status_code == 503
        assert (await client.get("/")).text == "app"


# ------------------------------------------------------------------ caching and timeouts
async def test_concurrent_probes_share_one_refresh_then_the_cache_expires() -> None:
    clock = FakeClock(1000.0)
    gate = asyncio.Event()
    db = FakeCheck("db", gate=gate)
    mw = health(checks=[db], clock=clock, cache_ttl=2.0)
    arrived = 0

    async def counting(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal arrived
        arrived += 1
        await mw(scope, receive, send)

    n = 50
    async with client_for(counting) as client:
        tasks = [asyncio.create_task(client.get("/health/ready")) for _ in range(n)]
        await wait_until(lambda: arrived == n)
        tasks[0].cancel()  # a client that hangs up must not cancel the shared refresh
        await asyncio.sleep(0)
        gate.set()
        responses = await asyncio.gather(*tasks[1:])
        with contextlib.suppress(asyncio.CancelledError):
            await tasks[0]
        assert [r.status_code for r in responses] == [200] * (n - 1)
        assert db.calls == 1  # single flight: one run for 50 concurrent probes

        clock.advance(1.9)
        assert (await client.get("/health/ready")).status_code == 200
        assert db.calls == 1  # still cached
        clock.advance(0.2)
        assert (await client.get("/health/ready")).status_code == 200
        assert db.calls == 2  # the TTL passed: one new run

        # the full report is cached separately (it is another set of checks)
        await asyncio.gather(*(client.get("/health") for _ in range(10)))
        assert db.calls == 3


async def test_cache_ttl_zero_still_shares_an_in_flight_refresh() -> None:
    gate = asyncio.Event()
    db = FakeCheck("db", gate=gate)
    mw = health(checks=[db], cache_ttl=0)
    async with client_for(mw) as client:
        tasks = [asyncio.create_task(client.get("/health")) for _ in range(5)]
        await wait_until(lambda: db.calls == 1)
        await asyncio.sleep(0.01)
        gate.set()
        await asyncio.gather(*tasks)
        assert db.calls == 1
        await client.get("/health")
        assert db.calls == 2


async def test_a_check_that_hangs_fails_after_its_timeout_fake_clock() -> None:
    clock = FakeClock(1000.0)
    stuck = FakeCheck("db", gate=asyncio.Event())  # never opened
    quick = FakeCheck("cache", critical=False)
    mw = health(checks=[stuck, quick], clock=clock, check_timeout=1.0)
    async with client_for(mw) as client:
        pending = asyncio.create_task(client.get("/health"))
        await wait_until(lambda: stuck.calls == 1 and quick.calls == 1)
        await asyncio.sleep(0.01)
        assert not pending.done()
        clock.advance(0.99)
        await asyncio.sleep(0.01)
        assert not pending.done()
        clock.advance(0.01)
        response = await asyncio.wait_for(pending, 5)
    assert response.status_code == 503
    [entry] = response.json()["checks"]["db:responseTime"]
    assert entry == {**entry, "status": "fail", "output": "timed out after 1 s"}
    assert "observedValue" not in entry
    assert response.json()["checks"]["cache:responseTime"][0]["status"] == "pass"


async def test_a_check_that_hangs_fails_after_its_own_timeout_real_clock() -> None:
    stuck = FakeCheck("db", gate=asyncio.Event(), timeout=0.05)
    mw = health(checks=[stuck], clock=SYSTEM_CLOCK, check_timeout=30.0)
    async with client_for(mw) as client:
        start = time.monotonic()
        response = await client.get("/health/ready")
        elapsed = time.monotonic() - start
    assert response.status_code == 503
    assert response.json()["checks"]["db:responseTime"][0]["output"] == "timed out after 0.05 s"
    assert 0.04 < elapsed < 2.0


async def test_timeout_does_not_wait_for_a_check_that_hangs_in_its_cleanup() -> None:
    clock = FakeClock(1000.0)
    cleanup = asyncio.Event()
    cleaned = False

    class Stubborn:
        name = "db"
        critical = True
        component_type = "datastore"

        async def run(self) -> CheckResult:
            nonlocal cleaned
            try:
                await asyncio.Event().wait()
            finally:
                await cleanup.wait()  # closing a half-open connection can hang too
                cleaned = True
            raise AssertionError("unreachable")  # pragma: no cover

    mw = health(checks=[Stubborn()], clock=clock, check_timeout=1.0)
    async with client_for(mw) as client:
        pending = asyncio.create_task(client.get("/health/ready"))
        await asyncio.sleep(0.01)
        clock.advance(1.0)
        response = await asyncio.wait_for(pending, 5)
        assert response.status_code == 503
        assert not cleaned
        cleanup.set()
        await wait_until(lambda: cleaned)


async def test_a_check_that_cancels_itself_fails() -> None:
    class SelfCancelling:
        name = "db"
        critical = True
        component_type = "datastore"

        async def run(self) -> CheckResult:
            raise asyncio.CancelledError

    async with client_for(health(checks=[SelfCancelling()])) as client:
        response = await client.get("/health")
    assert response.status_code == 503
    assert response.json()["checks"]["db"][0]["output"] == "cancelled"


async def test_a_check_that_raises_fails_with_the_exception_type_only() -> None:
    boom = FakeCheck("db", raises=RuntimeError("password=hunter2 at 10.0.0.5"))
    liar = FakeCheck("cache", critical=False)
    liar.run = _returns_garbage  # type: ignore[method-assign]
    mw = health(checks=[boom, liar])
    async with client_for(mw) as client:
        response = await client.get("/health")
    assert response.status_code == 503
    assert "hunter2" not in response.text
    assert response.json()["checks"]["db:responseTime"][0]["output"] == "RuntimeError"
    assert response.json()["checks"]["cache:responseTime"][0]["output"] == "returned str"


async def _returns_garbage() -> Any:
    return "ok"


# ------------------------------------------------------------------ who sees details
@pytest.mark.parametrize("path", ["/health", "/health/ready"])
async def test_details_are_hidden_from_a_remote_client_without_the_token(path: str) -> None:
    mw = health(checks=[FakeCheck("db", status="fail")], token="s3cr3t-t0ken", version="9")
    async with client_for(mw, client=REMOTE) as client:
        anonymous = await client.get(path)
        wrong = await client.get(path, headers={"Authorization": "Bearer nope"})
        basic = await client.get(path, headers={"Authorization": "Basic s3cr3t-t0ken"})
        right = await client.get(path, headers={"Authorization": "Bearer s3cr3t-t0ken"})
        lower = await client.get(path, headers={"authorization": "bearer s3cr3t-t0ken"})
    for hidden in (anonymous, wrong, basic):
        assert hidden.status_code == 503
        assert hidden.json() == {"status": "fail"}
    for shown in (right, lower):
        assert shown.status_code == 503
        assert shown.json()["checks"]["db:responseTime"][0]["output"] == "db is fail"


@pytest.mark.parametrize(
    ("client", "headers", "expose", "shown"),
    [
        (("127.0.0.1", 1), {}, "loopback", True),
        (("127.8.9.10", 1), {}, "loopback", True),
        (("::1", 1), {}, "loopback", True),
        (("::ffff:127.0.0.1", 1), {}, "loopback", True),
        (("10.0.0.8", 1), {}, "loopback", False),
        (("testclient", 1), {}, "loopback", False),
        (("127.0.0.1", 1), {"X-Forwarded-For": "198.51.100.4"}, "loopback", False),
        (("127.0.0.1", 1), {"Forwarded": "for=198.51.100.4"}, "loopback", False),
        (("127.0.0.1", 1), {"X-Real-IP": "198.51.100.4"}, "loopback", False),
        (("127.0.0.1", 1), {"X-Forwarded-Host": "shop.example.com"}, "loopback", False),
        (("127.0.0.1", 1), {"X-Forwarded-Proto": "https"}, "loopback", False),
        (("127.0.0.1", 1), {"X-Forwarded-Whatever": "1"}, "loopback", False),
        (("127.0.0.1", 1), {"Via": "1.1 proxy"}, "loopback", False),
        (("127.0.0.1", 1), {"CF-Connecting-IP": "198.51.100.4"}, "loopback", False),
        (("127.0.0.1", 1), {"True-Client-IP": "198.51.100.4"}, "loopback", False),
        (("127.0.0.1", 1), {"X-Client-IP": "198.51.100.4"}, "loopback", False),
        (("127.0.0.1", 1), {}, "token", False),
        (REMOTE, {}, "always", True),
    ],
)
async def test_loopback_and_expose_details_rules(
    client: tuple[str, int], headers: dict[str, str], expose: str, shown: bool
) -> None:
    mw = health(checks=[FakeCheck("db")], expose_details=expose, version="9")
    async with client_for(mw, client=client) as http:
        body = (await http.get("/health", headers=headers)).json()
    assert ("checks" in body) is shown
    assert ("version" in body) is shown


async def test_no_client_address_is_not_loopback() -> None:
    mw = health(checks=[FakeCheck("db")])
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    scope = {"type": "http", "path": "/health", "method": "GET", "headers": [], "client": None}
    await mw(scope, receive, send)
    assert messages[0]["status"] == 200
    assert messages[1]["body"] == b'{"status":"pass"}'


# ------------------------------------------------------------------ configuration
@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"cache_ttl": -1}, "cache_ttl"),
        ({"cache_ttl": float("nan")}, "cache_ttl"),
        ({"check_timeout": 0}, "check_timeout"),
        ({"check_timeout": "1"}, "check_timeout"),
        ({"token": ""}, "token"),
        ({"token": "has space"}, "token"),
        ({"expose_details": "sometimes"}, "expose_details"),
        ({"live_path": "health"}, "live_path"),
        ({"ready_path": "/health"}, "ready_path"),
        ({"health_path": "/h?x=1"}, "health_path"),
        ({"breakers": "yes"}, "breakers"),
        ({"version": ""}, "version"),
        ({"checks": [object()]}, "checks"),
        ({"checks": [FakeCheck("db"), FakeCheck("db")]}, "unique"),
        ({"checks": [FakeCheck("db", timeout=-1)]}, "timeout"),
    ],
)
def test_bad_options_are_refused_naming_the_option(options: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        HealthMiddleware(bare_app, **options)


def test_check_objects_satisfy_the_protocol_and_validate() -> None:
    assert isinstance(FakeCheck("x"), Check)
    assert isinstance(MemoryCheck(), Check)
    for bad in (
        lambda: MemoryCheck(name="has:colon"),
        lambda: MemoryCheck(name=""),
        lambda: MemoryCheck(critical=1),  # type: ignore[arg-type]
        lambda: MemoryCheck(max_rss_bytes=-1),
        lambda: MemoryCheck(max_rss_bytes=10, warn_rss_bytes=20),
        lambda: DiskCheck(min_free_bytes=20, warn_free_bytes=10),
        lambda: DiskCheck(""),
        lambda: PostgresCheck(),
        lambda: PostgresCheck(dsn="postgresql://x", pool=object()),
        lambda: PostgresCheck(pool=object()),
        lambda: PostgresCheck(engine=object()),
        lambda: PostgresCheck(dsn="x", warn_ms=0),
        lambda: RedisCheck(url="http://x"),
        lambda: RedisCheck(client=object()),
        lambda: HttpCheck("ftp://x"),
        lambda: HttpCheck("http://x", expect_status=[]),
        lambda: HttpCheck("http://x", expect_status="200"),
        lambda: SQLiteCheck(":memory:"),
        lambda: CheckResult(status="ok"),  # type: ignore[arg-type]
    ):
        with pytest.raises(ConfigurationError):
            bad()


def test_breakers_check_is_included_by_default_once() -> None:
    default = HealthMiddleware(bare_app)
    own = HealthMiddleware(bare_app, checks=[BreakersCheck(registry=Registry())])
    off = HealthMiddleware(bare_app, breakers=False)
    assert [type(c) for c in default.checks] == [BreakersCheck]
    assert [type(c) for c in own.checks] == [BreakersCheck]
    assert off.checks == ()
    assert default.checks[0].critical is False


# ------------------------------------------------------------------ built-in checks
async def test_open_breakers_show_as_warn_and_never_affect_readiness() -> None:
    clock = FakeClock(1000.0)
    reg = Registry()
    payments = CircuitBreaker(name="payments-test-health", clock=clock, break_duration=5.0)
    search = CircuitBreaker(name="search-test-health", clock=clock)
    reg.add_breaker(payments)
    reg.add_breaker(search)
    mw = health(checks=[FakeCheck("db"), BreakersCheck(registry=reg)], clock=clock, cache_ttl=0)
    async with client_for(mw) as client:
        before = (await client.get("/health")).json()
        payments.force_open()
        after = await client.get("/health")
        ready = await client.get("/health/ready")
    assert before["status"] == "pass"
    assert before["checks"]["circuitBreakers:open"][0]["observedValue"] == 0
    assert after.status_code == 200
    [entry] = after.json()["checks"]["circuitBreakers:open"]
    assert after.json()["status"] == "warn"
    assert entry["status"] == "warn"
    assert entry["observedValue"] == 1
    assert entry["output"] == "payments-test-health open (5.0 s left)"
    assert ready.status_code == 200
    clock.advance(5.0)  # the break is over: half-open, still worth a look
    assert (await BreakersCheck(registry=reg).run()).output == "payments-test-health half_open"


async def test_postgres_check_with_dsn_and_psycopg_pool(postgres_url: str) -> None:
    from psycopg_pool import AsyncConnectionPool

    by_dsn = await PostgresCheck(dsn=postgres_url).run()
    assert by_dsn.status == "pass"
    assert isinstance(by_dsn.observed_value, float)
    assert by_dsn.observed_unit == "ms"
    async with AsyncConnectionPool(postgres_url, min_size=1, max_size=2, open=False) as pool:
        by_pool = await PostgresCheck(pool=pool).run()
    assert by_pool.status == "pass"

    down = PostgresCheck(dsn=f"postgresql://postgres@127.0.0.1:{closed_port()}/test")
    mw = health(checks=[down], check_timeout=5.0)
    async with client_for(mw) as client:
        response = await client.get("/health/ready")
    assert response.status_code == 503
    assert response.json()["checks"]["postgres:responseTime"][0]["output"] == "OperationalError"


async def test_postgres_check_duck_types_asyncpg_sqlalchemy_and_execute() -> None:
    seen: list[str] = []

    class AsyncpgLike:
        async def fetchval(self, sql: str) -> int:
            seen.append(f"fetchval {sql}")
            await asyncio.sleep(0.01)
            return 1

    class ExecuteLike:
        async def execute(self, sql: str) -> None:
            seen.append(f"execute {sql}")

    class SAConnection:
        async def __aenter__(self) -> SAConnection:
            return self

        async def __aexit__(self, *exc: object) -> None:
            seen.append("closed")

        async def exec_driver_sql(self, sql: str) -> None:
            seen.append(f"exec_driver_sql {sql}")

    class EngineLike:
        def connect(self) -> SAConnection:
            return SAConnection()

    assert (await PostgresCheck(pool=ExecuteLike()).run()).status == "pass"
    assert (await PostgresCheck(engine=EngineLike()).run()).status == "pass"
    slow = await PostgresCheck(pool=AsyncpgLike(), warn_ms=1).run()
    assert slow.status == "warn"
    assert slow.output is not None
    assert slow.output.startswith("slow: ")
    assert seen == [
        "execute SELECT 1",
        "exec_driver_sql SELECT 1",
        "closed",
        "fetchval SELECT 1",
    ]


async def test_redis_check_with_url_and_client(redis_url: str) -> None:
    import redis.asyncio

    by_url = await RedisCheck(url=redis_url).run()
    assert by_url.status == "pass"
    assert by_url.observed_unit == "ms"
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        assert (await RedisCheck(client=client).run()).status == "pass"
    finally:
        await client.aclose()
    down = RedisCheck(url=f"redis://127.0.0.1:{closed_port()}/0")
    mw = health(checks=[down], check_timeout=5.0)
    async with client_for(mw) as http:
        response = await http.get("/health/ready")
    assert response.status_code == 503
    assert response.json()["checks"]["redis:responseTime"][0]["output"] == "ConnectionError"


async def test_sqlite_check(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE t (x)")
    ok = await SQLiteCheck(db).run()
    assert ok.status == "pass"
    assert ok.observed_unit == "ms"
    assert (await SQLiteCheck(str(db), readonly=True).run()).status == "pass"

    missing = tmp_path / "missing.db"
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database file, not at all" * 100)
    mw = health(checks=[SQLiteCheck(missing, name="a"), SQLiteCheck(garbage, name="b")])
    async with client_for(mw) as client:
        body = (await client.get("/health")).json()
    assert body["checks"]["a:responseTime"][0]["output"] == "OperationalError"
    assert body["checks"]["b:responseTime"][0]["output"] == "DatabaseError"
    assert not missing.exists()  # a health check never creates the database


async def test_disk_check(tmp_path: Path) -> None:
    ok = await DiskCheck(tmp_path, min_free_bytes=0, warn_free_bytes=0).run()
    assert ok.status == "pass"
    assert isinstance(ok.observed_value, int)
    assert ok.observed_value > 0
    assert ok.observed_unit == "bytes"
    warn = await DiskCheck(tmp_path, min_free_bytes=0, warn_free_bytes=2**62).run()
    assert warn.status == "warn"
    assert warn.output is not None
    assert "free <" in warn.output
    fail = await DiskCheck(tmp_path, min_free_bytes=2**62, warn_free_bytes=2**62).run()
    assert fail.status == "fail"
    mw = health(checks=[DiskCheck(tmp_path / "nope")])
    async with client_for(mw) as client:
        body = (await client.get("/health")).json()
    [entry] = body["checks"]["disk:free"]
    assert (entry["status"], entry["output"], entry["componentType"]) == (
        "fail",
        "FileNotFoundError",
        "system",
    )
    assert body["status"] == "warn"  # the disk check is not critical by default


async def test_memory_check() -> None:
    plain = await MemoryCheck().run()
    assert plain.status == "pass"
    assert isinstance(plain.observed_value, int)
    assert plain.observed_value > 1_000_000
    assert (await MemoryCheck(warn_rss_bytes=1).run()).status == "warn"
    assert (await MemoryCheck(max_rss_bytes=1).run()).status == "fail"


async def test_a_blocked_thread_probe_is_not_started_twice() -> None:
    release = threading.Event()

    class Blocking(BaseCheck):
        component_type = "system"

        async def run(self) -> CheckResult:
            await self._in_thread(lambda: release.wait(10))
            return CheckResult(status="pass")

    check = Blocking(name="nfs", critical=True, timeout=0.05)
    mw = health(checks=[check], clock=SYSTEM_CLOCK, cache_ttl=0)
    try:
        async with client_for(mw) as client:
            first = (await client.get("/health")).json()
            second = (await client.get("/health")).json()
            release.set()
            await wait_until(lambda: not check._busy.locked())
            third = (await client.get("/health")).json()
    finally:
        release.set()
    assert first["checks"]["nfs:responseTime"][0]["output"] == "timed out after 0.05 s"
    assert second["checks"]["nfs:responseTime"][0]["output"] == "previous probe still running"
    assert third["status"] == "pass"


# ------------------------------------------------------------------ a dependency that stops
def closed_port() -> int:
    """A loopback port nobody listens on (bound then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class TinyHttpServer:
    """A loopback HTTP server: answers 200, 500, or never, and can be stopped."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.server: asyncio.Server | None = None
        self.port = 0
        self.release = asyncio.Event()
        self.requests = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.release.set()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            self.requests += 1
            if self.mode == "hang":
                await asyncio.wait_for(self.release.wait(), 10)
            else:
                status = b"200 OK" if self.mode == "ok" else b"500 Internal Server Error"
                writer.write(
                    b"HTTP/1.1 " + status + b"\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                )
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


@pytest.fixture
async def http_server() -> AsyncIterator[TinyHttpServer]:
    server = TinyHttpServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_http_check_expected_and_unexpected_status(http_server: TinyHttpServer) -> None:
    url = f"http://127.0.0.1:{http_server.port}/ping"
    ok = await HttpCheck(url).run()
    assert (ok.status, ok.observed_unit) == ("pass", "ms")
    http_server.mode = "error"
    bad = await HttpCheck(url).run()
    assert (bad.status, bad.output) == ("fail", "unexpected status 500")
    assert (await HttpCheck(url, expect_status={500}).run()).status == "pass"


async def test_an_http_dependency_that_stops_answering_turns_ready_503_live_stays_200(
    http_server: TinyHttpServer, inner_app: Any
) -> None:
    check = HttpCheck(f"http://127.0.0.1:{http_server.port}/ping", name="billing")
    mw = health(inner_app, checks=[check], clock=SYSTEM_CLOCK, cache_ttl=0, check_timeout=0.3)
    async with client_for(mw) as client:
        assert (await client.get("/health/ready")).status_code == 200

        http_server.mode = "hang"  # accepts, never answers
        start = time.monotonic()
        hung = await client.get("/health/ready")
        assert time.monotonic() - start < 3.0
        assert hung.status_code == 503
        assert hung.json()["checks"]["billing:responseTime"][0]["output"] == (
            "timed out after 0.3 s"
        )
        assert (await client.get("/health/live")).status_code == 200

        await http_server.stop()  # gone: connections refused
        gone = await client.get("/health/ready")
        assert gone.status_code == 503
        assert gone.json()["checks"]["billing:responseTime"][0]["output"] == "ConnectError"
        assert (await client.get("/health/live")).status_code == 200
        assert (await client.get("/")).status_code == 200


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A redis-server of our own on a free loopback port (never the shared one)."""
    import redis

    port = closed_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        limit = time.monotonic() + 10
        while True:
            client = redis.Redis(port=port, socket_connect_timeout=0.5)
            try:
                if client.ping():
                    break
            except redis.RedisError:
                assert proc.poll() is None, "redis-server exited"
                assert time.monotonic() < limit, "redis-server did not start"
                time.sleep(0.05)
            finally:
                client.close()
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:  # pragma: no cover - stuck server
                proc.kill()
                proc.wait(timeout=5)


@pytest.mark.process
async def test_a_redis_that_stops_turns_ready_503_while_live_stays_200(
    private_redis: tuple[subprocess.Popen[bytes], int],
) -> None:
    proc, port = private_redis
    check = RedisCheck(url=f"redis://127.0.0.1:{port}/0")
    clock = FakeClock(1000.0)
    mw = health(starlette_app(), checks=[check], clock=clock, check_timeout=5.0)
    async with client_for(mw) as client:
        up = await client.get("/health/ready")
        assert up.status_code == 200
        assert up.json()["checks"]["redis:responseTime"][0]["status"] == "pass"

        proc.terminate()
        proc.wait(timeout=5)
        cached = await client.get("/health/ready")
        assert cached.status_code == 200  # inside the TTL: no new probe yet
        clock.advance(2.0)
        down = await client.get("/health/ready")
        assert down.status_code == 503
        assert down.json()["checks"]["redis:responseTime"][0]["output"] == "ConnectionError"
        assert (await client.get("/health/live")).status_code == 200
