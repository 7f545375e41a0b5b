"""Quotas under faults: the plan resolver, the cost functions and the store, each broken.

The promises (docs/quotas.md, `buttress.asgi._quotas`):

* a plan is resolved per request; an unknown or missing plan is the default plan, and so
  is a resolver that fails or does not answer in time (the last plan it gave for the key
  while it is still cached, else the default): never a 500, never a request held;
* an after-cost lands even when the store fails at that moment: counted by the local
  store, and owed to the shared one, which takes it before its next decision for that key,
  so a key served one request at a time still never stands more than one request's cost
  beyond its limit;
* a cost function that raises never fails the request;
* the noisy-neighbour view and metric show HMAC ids only, whatever the keys hold.

Real servers: a private ``redis-server`` that the handler itself stops between the
decision and the charge (the exact point of the fault), and Redis DB 12.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from buttress.asgi._heavy_hitters import NoisyNeighbours
from buttress.asgi._noisy import TopKeysView
from buttress.asgi._quotas import Cost, Plans, response_units
from buttress.asgi._ratelimit import Limit, RateLimitMiddleware
from buttress.asgi.keys import header, tenant
from buttress.stores import open_store
from buttress.testing import FakeClock
from tests.conftest import PrivateRedis, assert_problem

REDIS_DB12 = "redis://127.0.0.1:6379/12"
ACME = {"x-tenant-id": "acme"}


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path, durable=True)  # a restart keeps what it counted
    server.start()
    try:
        yield server
    finally:
        server.close()


def _client(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://t")


async def _ok(scope: dict[str, Any], receive: Any, send: Any) -> None:
    headers = [(b"content-type", b"text/plain")]
    for name, value in scope["headers"]:
        if name == b"x-rows":
            headers.append((b"x-rows", value))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


def _policy(response: httpx.Response) -> str:
    return response.headers["ratelimit-policy"].split(";")[0].strip('"')


# ----------------------------------------------------------------------------- plans
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_plan_resolver_that_raises_gives_the_default_plan_not_a_500(
    clock: FakeClock, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    def broken(scope: Any, key: str) -> str:
        nonlocal calls
        calls += 1
        raise RuntimeError("the plans table is locked")

    async def abroken(scope: Any, key: str) -> str:
        return broken(scope, key)

    plans = Plans(
        {"free": "2/day", "pro": "100/day"},
        resolve=broken if kind == "sync" else abroken,
        clock=clock,
    )
    app = RateLimitMiddleware(_ok, [Limit("daily", plans, key=tenant())], clock=clock)
    with caplog.at_level(logging.WARNING, logger="buttress"):
        async with _client(app) as client:
            answers = [await client.get("/", headers=ACME) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert _policy(answers[0]) == "daily.free"
    assert calls == 3  # a failure is not cached: the next request asks again
    assert "the plans table is locked" in caplog.text


async def test_a_failing_resolver_keeps_the_plan_it_gave_last_for_that_key(
    clock: FakeClock,
) -> None:
    broken = False

    async def plan_of(scope: Any, key: str) -> str:
        if broken:
            raise ConnectionError("database down")
        return "pro"

    plans = Plans({"free": "1/day", "pro": "100/day"}, resolve=plan_of, ttl=60, clock=clock)
    app = RateLimitMiddleware(_ok, [Limit("daily", plans, key=tenant())], clock=clock)
    async with _client(app) as client:
        assert _policy(await client.get("/", headers=ACME)) == "daily.pro"
        clock.advance(61)  # the cached answer expired: the resolver is asked again, and fails
        broken = True
        again = await client.get("/", headers=ACME)
        other = await client.get("/", headers={"x-tenant-id": "globex"})
    assert again.status_code == 200
    assert _policy(again) == "daily.pro"  # a database blip does not downgrade a tenant
    assert _policy(other) == "daily.free"  # nothing known: the default plan


async def test_a_plan_resolver_that_hangs_is_bounded_by_its_timeout(clock: FakeClock) -> None:
    asked = asyncio.Event()

    async def hangs(scope: Any, key: str) -> str:
        asked.set()
        await asyncio.Event().wait()  # a lookup that never answers
        return "pro"

    plans = Plans({"free": "5/day", "pro": "100/day"}, resolve=hangs, timeout=0.05, clock=clock)
    app = RateLimitMiddleware(_ok, [Limit("daily", plans, key=tenant())], clock=clock)
    async with _client(app) as client:
        answer = await asyncio.wait_for(client.get("/", headers=ACME), 10.0)
    assert asked.is_set()
    assert answer.status_code == 200
    assert _policy(answer) == "daily.free"


def test_a_plan_timeout_is_validated() -> None:
    from buttress.errors import ConfigurationError

    for bad in (0, -1.0, float("inf"), True, "1"):
        with pytest.raises(ConfigurationError, match="timeout"):
            Plans({"free": "1/day"}, timeout=bad)  # type: ignore[arg-type]
    assert Plans({"free": "1/day"}, timeout=None).timeout is None


# ----------------------------------------------------------------------------- costs
async def test_a_cost_function_that_raises_never_fails_the_request(clock: FakeClock) -> None:
    def before(scope: Any) -> int:
        raise ValueError("bad header")

    def after(status: int, headers: Any, size: int) -> int:
        raise ValueError("bad response header")

    limits = [
        Limit("up", "3/day", key=tenant(), cost=Cost(before=before)),
        Limit("rows", "1/day", key=tenant(), cost=Cost(after=after)),
    ]
    app = RateLimitMiddleware(_ok, limits, clock=clock)
    async with _client(app) as client:
        answers = [await client.get("/", headers=ACME) for _ in range(4)]
    # the before-cost counts 1 each; the failed after-cost charges nothing
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert answers[3].json()["policy"] == "up"


async def test_a_cancelled_request_is_still_charged_what_its_response_said(
    clock: FakeClock,
) -> None:
    started = asyncio.Event()

    async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = [(b"x-rows", b"20")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        started.set()
        await asyncio.Event().wait()  # the body never comes: the server cancels the task

    limit = Limit("rows", "10/day", key=tenant(), cost=response_units("x-rows"))
    app = RateLimitMiddleware(slow, [limit], clock=clock)
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": [(b"x-tenant-id", b"acme")],
        "query_string": b"",
        "client": ("127.0.0.1", 1),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        return None

    task = asyncio.create_task(app(scope, receive, send))
    await asyncio.wait_for(started.wait(), 10.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await app.settle()
    async with _client(RateLimitMiddleware(_ok, [limit], clock=clock, store=app.store)) as c:
        refused = await c.get("/", headers=ACME)
    assert_problem(refused, 429, "rate_limited")  # the 20 rows were counted: overdrawn


# ----------------------------------------------------------------------------- store down
async def test_an_after_charge_lost_to_a_store_outage_is_paid_before_the_next_decision(
    private_redis: PrivateRedis,
) -> None:
    """The store goes down between the decision and the charge, then comes back."""
    clock = FakeClock(1000.0)
    store = open_store(private_redis.url, clock=clock, namespace=f"qf{uuid.uuid4().hex[:8]}")
    runs = 0
    outage = False

    async def export(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal runs
        runs += 1
        if outage:  # decided: the store dies before the response ends and is charged
            await asyncio.to_thread(private_redis.stop)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-rows", b"20")]})
        await send({"type": "http.response.body", "body": b"rows"})

    limit = Limit("rows", "10/day", key=tenant(), cost=response_units("x-rows"))
    app = RateLimitMiddleware(export, [limit], store=store, clock=clock)
    try:
        async with _client(app) as client:
            outage = True
            first = await client.get("/", headers=ACME)
            await app.settle()  # the charge failed: counted locally, owed to the store
            outage = False
            await asyncio.to_thread(private_redis.start)
            second = await client.get("/", headers=ACME)
            await app.settle()
        assert first.status_code == 200
        # 20 rows of a 10/day quota were spent: the key is overdrawn, not fresh again
        assert_problem(second, 429, "rate_limited")
        assert runs == 1
    finally:
        await store.aclose()
        store.close()


async def test_after_charges_owed_during_an_outage_all_land_when_it_ends() -> None:
    """Several keys owe; the first decision after the store answers again pays them all."""
    clock = FakeClock(1000.0)
    namespace = f"qf{uuid.uuid4().hex[:8]}"
    store = open_store(REDIS_DB12, clock=clock, namespace=namespace)
    limit = Limit("rows", "10/day", key=tenant(), cost=response_units("x-rows"))
    app = RateLimitMiddleware(_ok, [limit], store=store, clock=clock)
    tenants = [f"t{i}" for i in range(5)]
    try:
        for name in tenants:
            app._owe(f"rl:rows:tenant:{name}", limit.rate, 20)  # noqa: SLF001 - the fault point
        app.engaged = True  # as the failed charges left it
        async with _client(app) as client:
            assert (await client.get("/", headers={"x-tenant-id": "other"})).status_code == 200
            await app.settle()
            answers = [await client.get("/", headers={"x-tenant-id": n}) for n in tenants]
        assert [a.status_code for a in answers] == [429] * 5
        assert app._owed == {}  # noqa: SLF001
    finally:
        await store.aclose()
        store.close()
        client = redis.Redis.from_url(REDIS_DB12)
        keys = list(client.scan_iter(f"{namespace}:*"))
        if keys:
            client.delete(*keys)
        client.close()


# ----------------------------------------------------------------------------- top keys
async def test_top_keys_show_hmac_ids_only_whatever_the_keys_hold(clock: FakeClock) -> None:
    noisy = NoisyNeighbours(top=5, clock=clock, capacity=8)
    secret = "sk_live_51HxQpassword=hunter2-é"  # an API key used as the limit's key
    limits = RateLimitMiddleware(
        _ok, [Limit("burst", "2/minute", key=header("x-api-key"))], clock=clock, top_keys=noisy
    )
    view = TopKeysView(limits, noisy, limits.key_hash, token="t0ken-for-the-view", expose="token")
    async with _client(view) as client:
        for _ in range(5):
            await client.get("/", headers={"x-api-key": secret.encode()})  # type: ignore[dict-item]
        for i in range(200):  # many distinct keys: memory stays bounded
            await client.get("/", headers={"x-api-key": f"key-{i}"})
        refused = await client.get("/health/ratelimit")
        shown = await client.get(
            "/health/ratelimit", headers={"authorization": "Bearer t0ken-for-the-view"}
        )
    assert refused.status_code == 403
    assert "sk_live" not in refused.text
    assert shown.status_code == 200
    text = shown.text
    assert "sk_live" not in text
    assert "hunter2" not in text
    assert "key-" not in text
    ids = {e["id"] for e in shown.json()["policies"]["burst"]["refused"]}
    as_read = secret.encode().decode("latin-1")  # header values are read as latin-1
    assert limits.key_hash(f"header:x-api-key:{as_read}") in ids
    for sketch in noisy._sketches.values():  # noqa: SLF001 - the memory bound itself
        assert len(sketch) <= sketch.buckets * sketch.capacity
