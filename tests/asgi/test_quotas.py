"""Quotas that fit real plans: per-plan rates, costs before and after the handler, storage.

The after-charge bound (`buttress._gcra.charge_request`) is checked as a property, on the
GCRA core and on every store kind: a key whose requests are admitted only while it is not
overdrawn, each charged its cost afterwards, never stands more than one request's cost
beyond its limit.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from buttress._gcra import EPSILON, Rate, RateRequest, charge_request, decide, gcra
from buttress.asgi import HardenSettings, harden
from buttress.asgi._quotas import (
    Cost,
    Plans,
    charge,
    plan_from_header,
    plan_rates,
    request_units,
    response_units,
)
from buttress.asgi._ratelimit import Limit, RateLimitMiddleware, RateLimitRule
from buttress.asgi.keys import tenant
from buttress.errors import ConfigurationError
from buttress.stores import Store, open_store
from buttress.testing import FakeClock
from tests.conftest import KINDS, POSTGRES_URL, assert_problem

REDIS_DB6 = "redis://127.0.0.1:6379/6"


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture
def redis_url() -> str:
    """Redis DB 6 (this file's own), failing loudly when Redis does not answer."""
    import redis

    client = redis.Redis.from_url(REDIS_DB6, socket_connect_timeout=2)
    try:
        client.ping()
    finally:
        client.close()
    return REDIS_DB6


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A database of this file's own (test_q_quotas), dropped afterwards."""
    name = "test_q_quotas"
    with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=2) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    yield POSTGRES_URL.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=2) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _app(barrier: asyncio.Barrier | None = None) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if barrier is not None:  # every request admitted before any answers (and is charged)
            await asyncio.wait_for(barrier.wait(), 10.0)
        headers = [(b"content-type", b"text/plain")]
        for name, value in scope["headers"]:
            if name == b"x-rows":  # the handler reports what it did (rows it exported)
                headers.append((b"x-rows", value))
            elif name == b"x-freed":  # (bytes a delete freed, in KiB)
                headers.append((b"x-freed-kib", str(int(value) // 1024).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def _client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


# ----------------------------------------------------------------------------- plans
async def test_each_plan_gets_its_rate_and_names_its_policy(clock: FakeClock) -> None:
    plans = Plans({"free": "10/day", "pro": "1000/day"}, resolve=plan_from_header("x-plan"), ttl=0)
    app = RateLimitMiddleware(_app(), [Limit("daily", plans, key=tenant())], clock=clock)
    async with _client(app) as client:
        free = {"x-tenant-id": "acme"}
        answers = [await client.get("/", headers=free) for _ in range(11)]
        assert [a.status_code for a in answers] == [200] * 10 + [429]
        assert answers[0].headers["ratelimit-policy"] == '"daily.free";q=10;w=86400'
        assert answers[9].headers["ratelimit"].startswith('"daily.free";r=0;')
        assert assert_problem(answers[10], 429, "rate_limited")["policy"] == "daily.free"
        # the same tenant upgraded: the pro rate, on the pro plan's own counter
        pro = await client.get("/", headers={**free, "x-plan": "pro"})
        assert pro.status_code == 200
        assert pro.headers["ratelimit-policy"] == '"daily.pro";q=1000;w=86400'
        assert pro.headers["ratelimit"].startswith('"daily.pro";r=999;')
        # an unknown plan is the default plan
        other = await client.get("/", headers={"x-tenant-id": "b", "x-plan": "gold"})
        assert other.headers["ratelimit-policy"] == '"daily.free";q=10;w=86400'


async def test_an_async_plan_resolver_is_cached_per_key_with_a_ttl_and_a_bound(
    clock: FakeClock,
) -> None:
    calls: list[str] = []
    db = {"tenant:acme": "pro", "tenant:bob": "free"}

    async def plan_of(scope: dict[str, Any], key: str) -> str | None:
        calls.append(key)
        await asyncio.sleep(0)
        return db.get(key)

    plans = Plans(
        {"free": "2/minute", "pro": "100/minute"},
        resolve=plan_of,
        ttl=30,
        max_entries=2,
        clock=clock,
    )
    app = RateLimitMiddleware(_app(), [Limit("minute", plans, key=tenant())], clock=clock)
    async with _client(app) as client:
        for _ in range(3):
            answer = await client.get("/", headers={"x-tenant-id": "acme"})
            assert answer.headers["ratelimit-policy"].startswith('"minute.pro"')
        assert calls == ["tenant:acme"]  # cached
        clock.advance(31)
        db["tenant:acme"] = "free"  # downgraded: seen once the entry expired
        answer = await client.get("/", headers={"x-tenant-id": "acme"})
        assert answer.headers["ratelimit-policy"].startswith('"minute.free"')
        assert calls == ["tenant:acme", "tenant:acme"]
        for name in ("bob", "carol", "dave"):
            await client.get("/", headers={"x-tenant-id": name})
        assert len(plans) == 2  # bounded: the oldest forgotten
    plans.forget()
    assert len(plans) == 0


def test_plans_and_plan_maps_are_validated() -> None:
    with pytest.raises(ConfigurationError, match="plan name"):
        Plans({"free plan": "1/s"})
    with pytest.raises(ConfigurationError, match="default"):
        Plans({"free": "1/s"}, default="pro")
    with pytest.raises(ConfigurationError, match="plan:rate"):
        plan_rates("free:1/s|free:2/s")
    with pytest.raises(ConfigurationError, match="rate_limit_plan"):
        HardenSettings(rate_limit_plan="cookie:plan")
    with pytest.raises(ConfigurationError, match="also the name of a limit"):
        RateLimitMiddleware(_app(), [Limit("d", Plans({"x": "1/s"})), Limit("d.x", "1/s")])
    assert plan_rates("10/day") == "10/day"  # the old syntax, unchanged


async def test_settings_plan_map_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "BUTTRESS_RATE_LIMITS": "burst=100/second,daily=free:2/day|pro:1000/day",
        "BUTTRESS_RATE_LIMIT_PLAN": "header:x-plan",
        "BUTTRESS_RATE_LIMIT_KEY": "tenant",
        "BUTTRESS_STORE_URL": "memory://",
    }
    settings = HardenSettings.from_env(env, base=HardenSettings(configure_logging=False))
    app = harden(_app(), settings)
    async with _client(app) as client:
        codes = [
            (await client.get("/", headers={"x-tenant-id": "t1"})).status_code for _ in range(3)
        ]
        assert codes == [200, 200, 429]
        pro = await client.get("/", headers={"x-tenant-id": "t2", "x-plan": "pro"})
        assert pro.headers["ratelimit-policy"] == '"burst";q=100;w=1, "daily.pro";q=1000;w=86400'


# ----------------------------------------------------------------------------- cost
async def test_storage_quota_uploads_spend_and_deletes_refund(clock: FakeClock) -> None:
    """A tenant's storage: 10 KiB, uploads cost their size, deletes give it back."""
    year100 = 100 * 365 * 86400.0
    storage = Rate(10, year100)  # 10 KiB, refilling by 1 KiB per ten years: a level
    cost = Cost(
        before=request_units(unit=1024, missing=0).before,  # PUT: its size
        after=response_units("x-freed-kib", refund=True).after,  # DELETE: what it freed
    )
    rule = RateLimitRule(
        Limit("storage", storage, key=tenant(), cost=cost),
        path="/files/*",
        methods=["PUT", "DELETE"],
    )
    app = RateLimitMiddleware(_app(), [rule], clock=clock)
    tenant_a = {"x-tenant-id": "a"}
    async with _client(app) as client:
        ok = [
            await client.put(f"/files/{i}", content=b"x" * 4096, headers=tenant_a) for i in range(2)
        ]
        assert [r.status_code for r in ok] == [200, 200]
        assert ok[1].headers["ratelimit"].startswith('"storage";r=2;')
        full = await client.put("/files/3", content=b"x" * 4096, headers=tenant_a)
        assert assert_problem(full, 429, "rate_limited")["policy"] == "storage"
        huge = await client.put("/files/big", content=b"x" * 11 * 1024, headers=tenant_a)
        body = assert_problem(huge, 413, "payload_too_large")
        assert (body["cost"], body["limit"]) == (11, 10)
        freed = await client.delete("/files/0", headers={**tenant_a, "x-freed": "4096"})
        assert freed.status_code == 200
        again = await client.put("/files/3", content=b"x" * 4096, headers=tenant_a)
        assert again.status_code == 200


async def test_after_cost_is_charged_from_the_response_and_refuses_once_overdrawn(
    clock: FakeClock,
) -> None:
    limit = Limit("rows", "100/day", key=tenant(), cost=response_units("x-rows"))
    app = RateLimitMiddleware(_app(), [limit], clock=clock)
    headers = {"x-tenant-id": "acme"}
    async with _client(app) as client:
        first = await client.get("/export", headers={**headers, "x-rows": "60"})
        assert first.status_code == 200
        second = await client.get("/export", headers={**headers, "x-rows": "70"})
        assert second.status_code == 200  # 60 spent: not overdrawn, admitted; now 130
        third = await client.get("/export", headers={**headers, "x-rows": "1"})
        body = assert_problem(third, 429, "rate_limited")
        # 30 rows over: 30/100 of a day before it is back under its limit
        assert body["retry_after"] == 25920
        clock.advance(25920)
        assert (await client.get("/export", headers={**headers, "x-rows": "0"})).status_code == 200


# ----------------------------------------------------------------------------- the bound
_STEPS = st.lists(
    st.tuples(st.floats(0.0, 30.0, allow_nan=False), st.integers(0, 12)), min_size=1, max_size=40
)


@given(burst=st.integers(1, 20), period=st.sampled_from([10.0, 60.0, 3600.0]), steps=_STEPS)
def test_after_charges_never_exceed_the_limit_by_more_than_one_cost_gcra(
    burst: int, period: float, steps: list[tuple[float, int]]
) -> None:
    rate = Rate(burst, period)
    tau = rate.interval * burst
    now, tat = 1000.0, None
    for dt, cost in steps:
        now += dt
        # before the handler: a cost-0 check (refused only when overdrawn)
        decision, _ = decide(tat, now, rate.interval, tau, burst, 0)
        if not decision.allowed:
            continue
        # after it: the charge always lands, the key ends at most `cost` beyond its limit
        request = charge_request("k", rate, cost)
        [landed], new = gcra([tat], now, [request])
        assert landed.allowed
        assert new is not None
        tat = new[0]
        assert tat - now <= tau + cost * rate.interval + EPSILON * 10


@pytest.fixture(params=KINDS)
def any_store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Store, FakeClock]]:
    kind = request.param
    clock = FakeClock(1000.0)
    options: dict[str, Any] = {"clock": clock}
    if kind == "memory":
        url = "memory://"
    else:
        options["namespace"] = f"tq{uuid.uuid4().hex[:10]}"
        if kind == "sqlite":
            url = f"sqlite:///{tmp_path_factory.mktemp('q') / 'q.db'}"
        elif kind == "redis":
            url = request.getfixturevalue("redis_url")
        else:
            url = request.getfixturevalue("postgres_url")
    store = open_store(url, **options)
    yield store, clock
    store.close()


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(burst=st.integers(1, 10), steps=_STEPS)
def test_after_charges_never_exceed_the_limit_by_more_than_one_cost_on_every_store(
    any_store: tuple[Store, FakeClock], burst: int, steps: list[tuple[float, int]]
) -> None:
    store, clock = any_store
    rate = Rate(burst, 60.0)
    key = f"bound:{uuid.uuid4().hex}"
    for dt, cost in steps:
        clock.advance(dt)
        [admitted] = store.acquire([RateRequest(key, rate, 0)])
        if not admitted.allowed:
            assert admitted.retry_after > 0
            continue
        assert charge(store, key, rate, cost).allowed
        # what the key owes now, read back with a cost-0 check: at most one cost over
        [now] = store.acquire([RateRequest(key, rate, 0)])
        overdraft = now.retry_after if not now.allowed else 0.0
        assert overdraft <= cost * rate.interval + 1e-6


async def test_concurrent_after_charges_all_land_on_a_shared_store(redis_url: str) -> None:
    """Charges that race (the key is overdrawn by the time one lands) are never lost."""
    store = open_store(redis_url, namespace=f"tq{uuid.uuid4().hex[:10]}")
    limit = Limit("rows", "100/day", key=tenant(), cost=response_units("x-rows"))
    app = RateLimitMiddleware(_app(asyncio.Barrier(5)), [limit], store=store)
    try:
        async with _client(app) as client:
            headers = {"x-tenant-id": "acme", "x-rows": "30"}
            answers = await asyncio.gather(*(client.get("/", headers=headers) for _ in range(5)))
            assert all(a.status_code == 200 for a in answers)  # all in flight at once
            await app.settle()
            refused = await client.get("/", headers={"x-tenant-id": "acme"})
            # 150 rows counted: 50 over, half a day
            assert abs(refused.json()["retry_after"] - 43200) <= 2
    finally:
        await store.aclose()
        store.close()
