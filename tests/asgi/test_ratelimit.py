"""RateLimitMiddleware: rules, headers, exact Retry-After, policies, events and fallback.

Driven through ``httpx.ASGITransport`` over a bare ASGI app and a Starlette app, and with
raw ASGI messages for the property tests. Every store gets a FakeClock: nothing sleeps.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from buttress.asgi._metrics import HttpMetrics
from buttress.asgi._ratelimit import Limit, RateLimitMiddleware, RateLimitRule
from buttress.asgi.keys import api_key, jwt_subject, principal, route, tenant
from buttress.errors import BackendError, ConfigurationError
from buttress.resilience import CircuitBreaker
from buttress.stores import MemoryStore, Rate, RateDecision, RateRequest, open_store
from buttress.telemetry import (
    LoggingHook,
    PrometheusHook,
    QuotaWarningEvent,
    RateLimitedEvent,
    RateLimitFallbackEvent,
)
from buttress.testing import FakeClock
from tests.asgi.test_keys import SECRET, make_jwt
from tests.conftest import EventLog

CLIENT = ("203.0.113.9", 5000)


async def bare_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-app", b"1")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def orders(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"order {request.path_params['id']}")


starlette_app = Starlette(
    routes=[
        Route("/orders/{id}", orders, methods=["GET", "POST"]),
        Route("/health", lambda r: PlainTextResponse("up")),
        Route("/health/ready", lambda r: PlainTextResponse("up")),
        Route("/healthz", lambda r: PlainTextResponse("up")),
    ]
)


def has_sqlite() -> bool:
    return importlib.util.find_spec("buttress.stores._sqlite") is not None


STORES = ["memory", *(["sqlite"] if has_sqlite() else [])]


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, clock: FakeClock, tmp_path: Any) -> Iterator[Any]:
    if request.param == "memory":
        opened: Any = MemoryStore(clock=clock)
    else:
        opened = open_store(f"sqlite:///{tmp_path}/rl.db", clock=clock)
    yield opened
    opened.close()


def client_for(app: Any, client: tuple[str, int] = CLIENT) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=client), base_url="http://test"
    )


@pytest.fixture
async def make(
    clock: FakeClock, store: Any
) -> AsyncIterator[Callable[..., tuple[RateLimitMiddleware, httpx.AsyncClient]]]:
    clients: list[httpx.AsyncClient] = []

    def build(
        rules: Sequence[RateLimitRule | Limit], app: Any = bare_app, **options: Any
    ) -> tuple[RateLimitMiddleware, httpx.AsyncClient]:
        options.setdefault("store", store)
        options.setdefault("clock", clock)
        mw = RateLimitMiddleware(app, rules, **options)
        client = client_for(mw)
        clients.append(client)
        return mw, client

    yield build
    for client in clients:
        await client.aclose()


# ---------------------------------------------------------------- headers and Retry-After
async def test_allowed_responses_carry_the_ietf_fields(make: Any) -> None:
    _, client = make([RateLimitRule([Limit("burst", "3/second"), Limit("daily", "100/day")])])
    r = await client.get("/x")
    assert r.status_code == 200
    assert r.headers["x-app"] == "1"
    assert r.headers["ratelimit-policy"] == '"burst";q=3;w=1, "daily";q=100;w=86400'
    assert r.headers["ratelimit"] == '"burst";r=2;t=1, "daily";r=99;t=864'
    assert "x-ratelimit-limit" not in r.headers
    assert "retry-after" not in r.headers


async def test_denied_responses_are_problem_json_naming_the_policy(make: Any) -> None:
    _, client = make([RateLimitRule([Limit("burst", "2/10s"), Limit("daily", "100/day")])])
    for _ in range(2):
        assert (await client.get("/x")).status_code == 200
    r = await client.get("/x")
    assert r.status_code == 429
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["retry-after"] == "5"
    assert r.headers["ratelimit-policy"] == '"burst";q=2;w=10, "daily";q=100;w=86400'
    assert r.headers["ratelimit"] == '"burst";r=0;t=5'  # only the violated policy
    body = r.json()
    assert body["type"].endswith("/rate-limited")
    assert body["status"] == 429
    assert body["code"] == "rate_limited"
    assert body["policy"] == "burst"
    assert body["violated_policies"] == ["burst"]
    assert body["retry_after"] == 5
    assert "burst" in body["detail"]


async def test_retry_after_is_exact_rounded_up(make: Any, clock: FakeClock) -> None:
    _, client = make([Limit("slow", "3/10s")])  # one every 3.33 s
    for _ in range(3):
        await client.get("/x")
    r = await client.get("/x")
    assert r.status_code == 429
    assert r.headers["retry-after"] == "4"  # 3.33 s, rounded up
    clock.advance(3.0)
    assert (await client.get("/x")).status_code == 429  # one second early: still refused
    clock.advance(1.0)
    assert (await client.get("/x")).status_code == 200  # obeyed: admitted


async def test_legacy_headers_describe_the_tightest_policy(make: Any) -> None:
    _, client = make(
        [RateLimitRule([Limit("burst", "5/second"), Limit("hourly", "2/hour")])],
        legacy_headers=True,
    )
    r = await client.get("/x")
    assert r.headers["x-ratelimit-limit"] == "2"
    assert r.headers["x-ratelimit-remaining"] == "1"
    assert r.headers["x-ratelimit-reset"] == "1800"
    await client.get("/x")
    r = await client.get("/x")
    assert r.status_code == 429
    assert (r.headers["x-ratelimit-remaining"], r.headers["x-ratelimit-reset"]) == ("0", "1800")


async def test_headers_can_be_switched_off(make: Any) -> None:
    _, client = make([Limit("one", "1/minute")], headers=None)
    r = await client.get("/x")
    assert "ratelimit" not in r.headers
    r = await client.get("/x")
    assert r.status_code == 429
    assert "ratelimit" not in r.headers
    assert r.headers["retry-after"] == "60"


async def test_fractional_periods_are_scaled_to_whole_seconds(make: Any) -> None:
    _, client = make([Limit("fast", Rate(5, 0.5))])
    r = await client.get("/x")
    assert r.headers["ratelimit-policy"] == '"fast";q=10;w=1'


async def test_head_requests_get_a_bodiless_429(make: Any) -> None:
    _, client = make([Limit("one", "1/minute")])
    await client.head("/x")
    r = await client.head("/x")
    assert r.status_code == 429
    assert r.content == b""


# ---------------------------------------------------------------- several policies
async def test_a_denial_spends_nothing_all_or_nothing(make: Any, clock: FakeClock) -> None:
    _, client = make([RateLimitRule([Limit("burst", "1/second"), Limit("daily", "2/day")])])
    assert (await client.get("/x")).status_code == 200
    r = await client.get("/x")  # refused by the burst: the daily quota is not spent
    assert r.json()["violated_policies"] == ["burst"]
    clock.advance(1.0)
    r = await client.get("/x")
    assert r.status_code == 200
    assert '"daily";r=0' in r.headers["ratelimit"]
    # now the daily quota refuses: hammering it never spends (or trips) the burst
    clock.advance(1.0)
    for _ in range(5):
        r = await client.get("/x")
        assert r.status_code == 429
        assert r.json()["violated_policies"] == ["daily"]


async def test_per_org_above_per_user(make: Any) -> None:
    async def authenticated(scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = dict(scope["headers"])
        scope["state"] = {"principal": headers[b"x-user"].decode(), "tenant": "acme"}
        await limited(scope, receive, send)

    limited, client = make(
        [
            RateLimitRule(
                [
                    Limit("per-user", "2/minute", key=principal()),
                    Limit("per-org", "3/minute", key=tenant()),
                ]
            )
        ]
    )
    client = client_for(authenticated)
    try:
        alice = {"x-user": "alice"}
        bob = {"x-user": "bob"}
        assert (await client.get("/x", headers=alice)).status_code == 200
        assert (await client.get("/x", headers=alice)).status_code == 200
        r = await client.get("/x", headers=alice)
        assert r.json()["policy"] == "per-user"
        assert (await client.get("/x", headers=bob)).status_code == 200
        r = await client.get("/x", headers=bob)  # bob has quota left, the org has not
        assert r.status_code == 429
        assert r.json()["violated_policies"] == ["per-org"]
    finally:
        await client.aclose()


# ---------------------------------------------------------------- rules
async def test_per_route_and_per_method_rules(make: Any) -> None:
    _, client = make(
        [
            RateLimitRule(Limit("create", "1/minute"), path="/orders/{id}", methods=["POST"]),
            RateLimitRule(Limit("read", "2/minute"), path="/orders/{id}", methods=["GET"]),
        ],
        app=starlette_app,
    )
    assert (await client.post("/orders/1")).status_code == 200
    r = await client.post("/orders/2")  # same client, same rule: one budget for all ids
    assert r.status_code == 429
    assert r.json()["policy"] == "create"
    r = await client.get("/orders/1")
    assert r.text == "order 1"
    assert r.headers["ratelimit"] == '"read";r=1;t=30'
    assert (await client.head("/orders/1")).status_code == 200  # HEAD counts as GET
    assert (await client.get("/orders/1")).status_code == 429
    r = await client.get("/health")
    assert "ratelimit" not in r.headers  # no rule matches


async def test_route_key_gives_one_budget_per_route(make: Any) -> None:
    mw, client = make(
        [RateLimitRule(Limit("export", "1/minute", key=route()), path="/orders/{id}")],
        app=starlette_app,
    )
    other = client_for(mw, client=("198.51.100.1", 1))
    try:
        assert (await client.get("/orders/1")).status_code == 200
        assert (await other.get("/orders/2")).status_code == 429  # shared by everyone
    finally:
        await other.aclose()


@pytest.mark.parametrize(
    ("pattern", "matches", "misses"),
    [
        ("/api/*", ["/api", "/api/", "/api/v1/x"], ["/apix", "/", "/other/api"]),
        ("/login", ["/login"], ["/login/", "/logins"]),
        ("/orders/{id}", ["/orders/1", "/orders/abc"], ["/orders", "/orders/1/items"]),
        ("/files/{p:path}", ["/files/a/b/c"], ["/files/", "/files"]),
        ("/users/{id:int}", ["/users/42"], ["/users/bob"]),
        ("/t/{id}/*", ["/t/1", "/t/1/x/y"], ["/t"]),
    ],
)
async def test_path_patterns(
    make: Any, pattern: str, matches: list[str], misses: list[str]
) -> None:
    _, client = make([RateLimitRule(Limit("p", "1000/second"), path=pattern)])
    for path in matches:
        assert "ratelimit" in (await client.get(path)).headers, path
    for path in misses:
        assert "ratelimit" not in (await client.get(path)).headers, path


async def test_exempt_paths_cover_everything_below(make: Any) -> None:
    _, client = make([Limit("all", "1/minute")], app=starlette_app)
    for _ in range(3):
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/health/ready")).status_code == 200
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/healthz")).status_code == 429  # not an exempt path


async def test_non_http_scopes_and_unmatched_requests_pass_straight_through(
    make: Any,
) -> None:
    mw, client = make([RateLimitRule(Limit("w", "1/minute"), methods=["POST"])])
    r = await client.get("/x")
    assert r.status_code == 200
    assert "ratelimit" not in r.headers
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.startup"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await mw({"type": "lifespan"}, receive, send)
    assert sent == [{"type": "lifespan.startup.complete"}]


async def test_keys_that_resolve_to_none_do_not_limit(make: Any) -> None:
    _, client = make([Limit("per-key", "1/minute", key=api_key())])
    for _ in range(3):
        r = await client.get("/x")  # no API key: the limit does not apply
        assert r.status_code == 200
        assert "ratelimit" not in r.headers
    assert (await client.get("/x", headers={"x-api-key": "k1"})).status_code == 200
    assert (await client.get("/x", headers={"x-api-key": "k1"})).status_code == 429
    assert (await client.get("/x", headers={"x-api-key": "k2"})).status_code == 200


async def test_a_failing_resolver_skips_its_limit_not_the_request(
    make: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(scope: Any) -> str:
        raise RuntimeError("resolver bug")

    _, client = make(
        [RateLimitRule([Limit("bad", "1/minute", key=broken), Limit("ok", "1/minute")])]
    )
    assert (await client.get("/x")).status_code == 200
    r = await client.get("/x")
    assert r.json()["violated_policies"] == ["ok"]
    assert sum("key resolver failed" in rec.getMessage() for rec in caplog.records) == 1


# ---------------------------------------------------------------- key resolvers end to end
async def test_jwt_users_get_their_own_budget_and_forged_tokens_share_one(make: Any) -> None:
    _, client = make([Limit("per-user", "1/minute", key=jwt_subject(SECRET))])

    def auth(token: str) -> dict[str, str]:
        return {"authorization": f"Bearer {token}"}

    alice = make_jwt({"sub": "alice"})
    bob = make_jwt({"sub": "bob"})
    assert (await client.get("/x", headers=auth(alice))).status_code == 200
    assert (await client.get("/x", headers=auth(alice))).status_code == 429
    assert (await client.get("/x", headers=auth(bob))).status_code == 200
    forged = [make_jwt({"sub": f"u{i}"}, secret=b"z" * 32) for i in range(3)]
    assert (await client.get("/x", headers=auth(forged[0]))).status_code == 200
    for token in forged[1:]:  # a fresh forged token is not a fresh budget
        assert (await client.get("/x", headers=auth(token))).status_code == 429
    expired = make_jwt({"sub": "carol", "exp": 1})
    assert (await client.get("/x", headers=auth(expired))).status_code == 429


async def test_client_ip_behind_trusted_proxies(make: Any) -> None:
    mw, _ = make([Limit("per-ip", "1/minute")], trusted_proxies=["10.0.0.0/8"])
    proxy = client_for(mw, client=("10.0.0.5", 1))
    try:
        a = {"x-forwarded-for": "198.51.100.1"}
        b = {"x-forwarded-for": "198.51.100.2"}
        assert (await proxy.get("/x", headers=a)).status_code == 200
        assert (await proxy.get("/x", headers=a)).status_code == 429
        assert (await proxy.get("/x", headers=b)).status_code == 200
        spoofed = {"x-forwarded-for": "1.1.1.1, 198.51.100.1"}  # left-most is ignored
        assert (await proxy.get("/x", headers=spoofed)).status_code == 429
    finally:
        await proxy.aclose()


# ---------------------------------------------------------------- events
async def test_the_audit_event_carries_a_hash_never_the_key(make: Any, events: EventLog) -> None:
    mw, client = make([Limit("per-key", "1/minute", key=api_key())], key_secret=b"k" * 32)
    headers = {"x-api-key": "sk_live_SECRET123"}
    await client.get("/x", headers=headers)
    await client.post("/orders", headers=headers)
    [event] = [e for e in events if isinstance(e, RateLimitedEvent)]
    assert event.policy == "per-key"
    assert event.route == "/orders"
    assert event.method == "POST"
    assert event.retry_after == 60
    assert event.key_hash == mw.key_hash("apikey:sk_live_SECRET123")
    assert len(event.key_hash) == 16
    assert "SECRET123" not in repr(event)
    assert "SECRET123" not in json.dumps(event.as_dict())

    logged: list[tuple[int, str, dict[str, Any]]] = []

    class Recorder:
        def log(self, level: int, name: str, **data: Any) -> None:
            logged.append((level, name, data))

    hook = LoggingHook()
    hook._logger = Recorder()
    hook._structured = True
    hook(event)
    [(_, name, data)] = logged
    assert name == "rate_limited"
    assert data["audit"] is True
    assert data["key_hash"] == event.key_hash
    assert "SECRET123" not in repr(data)


async def test_key_hashes_are_stable_with_a_configured_secret(
    make: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUTTRESS_KEY_SECRET", "an-env-secret-of-some-length")
    a, _ = make([Limit("x", "1/second")])
    b, _ = make([Limit("x", "1/second")])
    assert a.key_hash("ip:1.2.3.4") == b.key_hash("ip:1.2.3.4")
    monkeypatch.delenv("BUTTRESS_KEY_SECRET")
    c, _ = make([Limit("x", "1/second")])
    assert c.key_hash("ip:1.2.3.4") != a.key_hash("ip:1.2.3.4")  # random per process


async def test_prometheus_counts_by_policy_without_key_labels(make: Any) -> None:
    registry = CollectorRegistry()
    hook = PrometheusHook(registry=registry)
    metrics = HttpMetrics(registry=registry, resilience=False)
    _, client = make(
        [Limit("per-key", "1/minute", key=api_key())], hooks=[hook], on_limited=metrics.limited
    )
    headers = {"x-api-key": "sk_live_SECRET123"}
    for _ in range(3):
        await client.get("/x", headers=headers)
    # one name per fact: the 429s are HTTP answers, counted by HttpMetrics only
    assert (
        registry.get_sample_value("buttress_http_requests_limited_total", {"policy": "per-key"})
        == 2
    )
    assert registry.get_sample_value("buttress_rate_limited_total", {"policy": "per-key"}) is None
    metrics.close()
    for metric in registry.collect():
        for sample in metric.samples:
            assert "SECRET" not in repr(sample.labels)
            assert "key" not in sample.labels


async def test_the_quota_warning_fires_once_per_crossing(
    make: Any, clock: FakeClock, events: EventLog
) -> None:
    _, client = make([Limit("quota", "10/minute")])  # warns at remaining <= 2
    for _ in range(10):
        assert (await client.get("/x")).status_code == 200
    warnings = [e for e in events if isinstance(e, QuotaWarningEvent)]
    assert len(warnings) == 1
    [w] = warnings
    assert (w.policy, w.remaining, w.limit, w.used_ratio) == ("quota", 2, 10, 0.8)
    # hovering around the threshold (refill to 3 left, spend to 2) does not warn again
    for _ in range(2):
        clock.advance(18.0)
        r = await client.get("/x")
        assert '"quota";r=2' in r.headers["ratelimit"]
        await client.get("/x")
        await client.get("/x")  # back to 0 left
    assert sum(isinstance(e, QuotaWarningEvent) for e in events) == 1
    # once the key has refilled for a whole window, the next crossing warns again
    clock.advance(60.0)
    for _ in range(8):
        await client.get("/x")
    assert sum(isinstance(e, QuotaWarningEvent) for e in events) == 2


async def test_the_warning_table_is_bounded_and_never_scanned(
    make: Any, events: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    import buttress.asgi._ratelimit as ratelimit_module

    monkeypatch.setattr(ratelimit_module, "_WARNED_MAX", 4)
    mw, client = make([Limit("quota", "10/minute", key=api_key())])
    for n in range(10):  # ten keys cross the threshold; only four can be remembered
        for _ in range(8):
            assert (await client.get("/x", headers={"x-api-key": f"key-{n}"})).status_code == 200
    assert sum(isinstance(e, QuotaWarningEvent) for e in events) == 10  # each warned once
    assert len(mw._warned) <= 4


async def test_warnings_can_be_switched_off(make: Any, events: EventLog) -> None:
    _, client = make([Limit("quota", "2/minute")], warn_ratio=None)
    for _ in range(3):
        await client.get("/x")
    assert not [e for e in events if isinstance(e, QuotaWarningEvent)]


async def test_prometheus_counts_warnings_and_fallbacks() -> None:
    registry = CollectorRegistry()
    hook = PrometheusHook(registry=registry)
    hook(QuotaWarningEvent(policy="q", key_hash="ab", used_ratio=0.8, remaining=2, limit=10))
    hook(RateLimitFallbackEvent(policy="ratelimit", engaged=True, mode="open"))
    value = registry.get_sample_value
    assert value("buttress_quota_warnings_total", {"policy": "q"}) == 1
    assert (
        value("buttress_rate_limit_fallbacks_total", {"policy": "ratelimit", "mode": "open"}) == 1
    )
    assert value("buttress_rate_limit_fallback_engaged", {"policy": "ratelimit"}) == 1
    hook(RateLimitFallbackEvent(policy="ratelimit", engaged=False, mode="open"))
    assert value("buttress_rate_limit_fallback_engaged", {"policy": "ratelimit"}) == 0


# ---------------------------------------------------------------- store failures
class FlakyStore:
    """A shared store that fails on demand (a unit test of the fallback logic)."""

    def __init__(self, clock: FakeClock) -> None:
        self.inner = MemoryStore(clock=clock)
        self.failing = False
        self.calls = 0
        self.error: BaseException = BackendError("redis down")

    def acquire(self, requests: Sequence[RateRequest]) -> list[RateDecision]:
        raise AssertionError("the middleware uses the async API")

    async def aacquire(self, requests: Sequence[RateRequest]) -> list[RateDecision]:
        self.calls += 1
        if self.failing:
            raise self.error
        return self.inner.acquire(requests)


def fallback_kinds(events: EventLog) -> list[tuple[bool, str]]:
    return [(e.engaged, e.reason) for e in events if isinstance(e, RateLimitFallbackEvent)]


async def test_fail_open_decides_locally_and_recovers(
    make: Any, clock: FakeClock, events: EventLog
) -> None:
    flaky = FlakyStore(clock)
    mw, client = make([Limit("burst", "3/minute")], store=flaky)
    assert (await client.get("/x")).status_code == 200
    flaky.failing = True
    statuses = [(await client.get("/x")).status_code for _ in range(5)]
    # the local store enforces the same rules (it starts from scratch: 3 more admitted)
    assert statuses == [200, 200, 200, 429, 429]
    assert fallback_kinds(events) == [(True, "store error")]
    [engaged] = [e for e in events if isinstance(e, RateLimitFallbackEvent)]
    assert isinstance(engaged.error, BackendError)
    # the breaker opened after 3 consecutive failures: the store is left alone
    assert flaky.calls == 4
    assert mw.breaker.state == "open"
    flaky.failing = False
    clock.advance(5.0)  # the break elapses: the half-open probe goes to the store again
    r = await client.get("/x")
    assert r.status_code == 200
    assert flaky.calls == 5
    assert mw.breaker.state == "closed"
    assert fallback_kinds(events) == [(True, "store error"), (False, "store recovered")]
    assert mw.engaged is False


async def test_fail_closed_answers_503_until_the_store_recovers(
    make: Any, clock: FakeClock, events: EventLog
) -> None:
    flaky = FlakyStore(clock)
    _, client = make([Limit("burst", "3/minute")], store=flaky, fail_mode="closed")
    flaky.failing = True
    for _ in range(4):
        r = await client.get("/x")
        assert r.status_code == 503
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["code"] == "backend_error"
    assert r.headers["retry-after"] == "5"  # the breaker's remaining break
    flaky.failing = False
    clock.advance(5.0)
    assert (await client.get("/x")).status_code == 200
    assert [e.engaged for e in events if isinstance(e, RateLimitFallbackEvent)] == [True, False]
    assert all(e.mode == "closed" for e in events if isinstance(e, RateLimitFallbackEvent))


@pytest.mark.parametrize(
    "error", [TimeoutError(), RuntimeError("driver bug"), ConnectionResetError()]
)
async def test_any_store_error_falls_back_never_a_500(
    make: Any, clock: FakeClock, error: BaseException
) -> None:
    flaky = FlakyStore(clock)
    flaky.failing = True
    flaky.error = error
    _, client = make([Limit("burst", "3/minute")], store=flaky)
    assert (await client.get("/x")).status_code == 200


async def test_a_hanging_store_times_out_and_falls_back(make: Any, clock: FakeClock) -> None:
    class HangingStore(FlakyStore):
        async def aacquire(self, requests: Sequence[RateRequest]) -> list[RateDecision]:
            self.calls += 1
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

    _, client = make([Limit("burst", "3/minute")], store=HangingStore(clock), store_timeout=0.01)
    assert (await client.get("/x")).status_code == 200


async def test_a_store_answering_the_wrong_number_of_decisions_is_a_failure(
    make: Any, clock: FakeClock, events: EventLog
) -> None:
    class Confused(FlakyStore):
        async def aacquire(self, requests: Sequence[RateRequest]) -> list[RateDecision]:
            return []

    _, client = make([Limit("burst", "3/minute")], store=Confused(clock))
    assert (await client.get("/x")).status_code == 200
    assert fallback_kinds(events) == [(True, "store error")]


async def test_a_custom_breaker_and_an_open_circuit(
    make: Any, clock: FakeClock, events: EventLog
) -> None:
    flaky = FlakyStore(clock)
    breaker = CircuitBreaker(break_duration=30.0, clock=clock)
    breaker.force_open()
    mw, client = make([Limit("burst", "3/minute")], store=flaky, breaker=breaker)
    assert (await client.get("/x")).status_code == 200
    assert flaky.calls == 0
    assert fallback_kinds(events) == [(True, "circuit open")]
    assert mw.breaker is breaker


# ---------------------------------------------------------------- configuration
@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: Limit("bad name", "1/second"), "name"),
        (lambda: Limit('q"uote', "1/second"), "name"),
        (lambda: Limit("x", "ten per fortnight"), "rate"),
        (lambda: Limit("x", 10), "rate"),  # type: ignore[arg-type]
        (lambda: Limit("x", "1/second", cost=2), "cost"),
        (lambda: Limit("x", "1/second", cost=0), "cost"),
        (lambda: Limit("x", "1/second", key="ip"), "key"),  # type: ignore[arg-type]
        (lambda: RateLimitRule([]), "limits"),
        (lambda: RateLimitRule([Limit("a", "1/s"), Limit("a", "2/s")]), "duplicate"),
        (lambda: RateLimitRule(Limit("a", "1/s"), path="orders"), "path"),
        (lambda: RateLimitRule(Limit("a", "1/s"), path="/a/*/b"), "path"),
        (lambda: RateLimitRule(Limit("a", "1/s"), path="/a/{id"), "path"),
        (lambda: RateLimitRule(Limit("a", "1/s"), methods=["get it"]), "methods"),
        (lambda: RateLimitRule(Limit("a", "1/s"), methods=[]), "methods"),
        (
            lambda: RateLimitMiddleware(
                bare_app, [RateLimitRule(Limit("a", "1/s")), RateLimitRule(Limit("a", "5/s"))]
            ),
            "duplicate limit names",
        ),
        (lambda: RateLimitMiddleware(bare_app, []), "rules"),
        (lambda: RateLimitMiddleware(bare_app, ["x"]), "rules"),  # type: ignore[list-item]
        (lambda: RateLimitMiddleware(bare_app, [Limit("a", "1/s")], fail_mode="half"), "fail_mode"),  # type: ignore[arg-type]
        (lambda: RateLimitMiddleware(bare_app, [Limit("a", "1/s")], headers="draft"), "headers"),  # type: ignore[arg-type]
        (lambda: RateLimitMiddleware(bare_app, [Limit("a", "1/s")], warn_ratio=1.5), "warn_ratio"),
        (
            lambda: RateLimitMiddleware(bare_app, [Limit("a", "1/s")], store_timeout=0),
            "store_timeout",
        ),
        (
            lambda: RateLimitMiddleware(bare_app, [Limit("a", "1/s")], key_secret=b"short"),
            "16 bytes",
        ),
        (lambda: RateLimitMiddleware(bare_app, [Limit("a", "1/s")], store=object()), "store"),  # type: ignore[arg-type]
        (lambda: RateLimitMiddleware(bare_app, [Limit("a", "1/s")], store="nosuch://x"), "scheme"),
        (lambda: RateLimitMiddleware(bare_app, [Limit("a", "1/s")], breaker=1), "breaker"),  # type: ignore[arg-type]
        (
            lambda: RateLimitMiddleware(bare_app, [Limit("a", "1/s")], exempt_paths=["health"]),
            "exempt_paths",
        ),
        (
            lambda: RateLimitMiddleware(bare_app, [Limit("a", "1/s")], trusted_proxies=["x"]),
            "trusted_proxies",
        ),
        (lambda: RateLimitMiddleware(bare_app, [Limit("a", "1/s")], name=""), "name"),
    ],
)
def test_configuration_errors_name_the_option(build: Callable[[], object], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        build()


def test_store_urls_and_the_default_store() -> None:
    mw = RateLimitMiddleware(bare_app, [Limit("a", "1/s")], store="memory://")
    assert isinstance(mw.store, MemoryStore)
    assert mw.local is mw.store  # an in-process store is its own fallback
    assert isinstance(RateLimitMiddleware(bare_app, [Limit("a", "1/s")]).store, MemoryStore)


# ---------------------------------------------------------------- hostile input
async def call(mw: Any, headers: list[tuple[bytes, bytes]], path: str = "/x") -> int:
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "headers": headers,
        "client": CLIENT,
    }
    await mw(scope, receive, send)
    return status


header_values = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=100).map(lambda s: s.encode("utf-8")),
    st.integers(1, 300_000).map(lambda n: b"A" * n),
)


@settings(max_examples=150, deadline=None)
@given(
    headers=st.lists(
        st.tuples(
            st.sampled_from(
                [b"x-api-key", b"authorization", b"x-forwarded-for", b"x-tenant-id", b"x-user"]
            ),
            header_values,
        ),
        max_size=6,
    ),
    path=st.text(min_size=0, max_size=50).map(lambda s: "/" + s),
)
def test_no_500_for_random_unicode_or_huge_headers(
    headers: list[tuple[bytes, bytes]], path: str
) -> None:
    clock = FakeClock(1000.0)
    mw = RateLimitMiddleware(
        bare_app,
        [
            RateLimitRule(
                [
                    Limit("ip", "5/second", key=None),
                    Limit("key", "5/second", key=api_key(bearer=True)),
                    Limit("user", "5/second", key=jwt_subject(SECRET)),
                    Limit("org", "5/second", key=tenant()),
                    Limit("route", "50/second", key=route()),
                ]
            )
        ],
        store=MemoryStore(clock=clock),
        clock=clock,
        trusted_proxies=["0.0.0.0/0"],
        legacy_headers=True,
    )
    loop = asyncio.new_event_loop()
    try:
        for _ in range(3):
            assert loop.run_until_complete(call(mw, headers, path)) in (200, 429)
    finally:
        loop.close()
    for key in mw.local._tats:
        assert len(key) < 300  # huge values are stored as digests


# ---------------------------------------------------------------- the GCRA bound
@settings(max_examples=120, deadline=None)
@given(
    limit=st.integers(1, 20),
    period=st.sampled_from([1.0, 2.0, 10.0, 60.0]),
    burst=st.integers(1, 20),
    gaps=st.lists(st.floats(0.0, 3.0, allow_nan=False), min_size=1, max_size=80),
)
def test_admitted_requests_never_exceed_burst_plus_rate_times_elapsed(
    limit: int, period: float, burst: int, gaps: list[float]
) -> None:
    clock = FakeClock(1000.0)
    rate = Rate(limit, period, burst)
    mw = RateLimitMiddleware(
        bare_app, [Limit("p", rate)], store=MemoryStore(clock=clock), clock=clock
    )
    admitted: list[float] = []
    loop = asyncio.new_event_loop()
    try:
        for gap in gaps:
            clock.advance(gap)
            if loop.run_until_complete(call(mw, [])) == 200:
                admitted.append(clock.now())
    finally:
        loop.close()
    interval = period / limit
    for i, start in enumerate(admitted):
        for j in range(i, len(admitted)):
            elapsed = admitted[j] - start
            assert j - i + 1 <= burst + (elapsed + 1e-5) / interval


@settings(max_examples=120, deadline=None)
@given(
    limit=st.integers(1, 10),
    period=st.sampled_from([1.0, 3.0, 7.0, 60.0]),
    burst=st.integers(1, 5),
    warmup=st.integers(1, 15),
    offset=st.floats(0.0, 5.0, allow_nan=False),
)
def test_a_client_obeying_retry_after_is_admitted_and_one_second_less_is_not(
    limit: int, period: float, burst: int, warmup: int, offset: float
) -> None:
    clock = FakeClock(1000.0 + offset)
    mw = RateLimitMiddleware(
        bare_app,
        [Limit("p", Rate(limit, period, burst))],
        store=MemoryStore(clock=clock),
        clock=clock,
    )
    retry_after: list[int] = []

    async def probe() -> int:
        status = 0

        async def receive() -> dict[str, Any]:
            return {"type": "http.request"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message["headers"]:
                    if name == b"retry-after":
                        retry_after.append(int(value))

        scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "client": CLIENT}
        await mw(scope, receive, send)
        return status

    loop = asyncio.new_event_loop()
    try:
        statuses = [loop.run_until_complete(probe()) for _ in range(warmup + burst)]
        assert statuses.count(429) >= 1  # warmup + burst requests at once exceed the burst
        wait = retry_after[-1]
        if wait > 1:
            clock.advance(wait - 1)
            assert loop.run_until_complete(probe()) == 429
            clock.advance(1)
        else:
            clock.advance(wait)
        assert loop.run_until_complete(probe()) == 200
    finally:
        loop.close()


# ---------------------------------------------------------------- one global limit
async def test_one_global_limit_with_top_keys_decides_and_counts() -> None:
    """The production set-up: one global limit in process, top keys counted per client."""
    from buttress.asgi._heavy_hitters import NoisyNeighbours  # noqa: PLC0415

    clock = FakeClock(1000.0)
    noisy = NoisyNeighbours(top=3, clock=clock)
    mw = RateLimitMiddleware(
        bare_app, [Limit("burst", "3/minute")], clock=clock, key_secret=b"s" * 16, top_keys=noisy
    )
    answers = []
    for address in ("203.0.113.9", "198.51.100.7"):
        async with client_for(mw, (address, 5000)) as client:
            for path in ("/x", "/x", "/health/ready", "/y", "/x", "/x"):
                answers.append((await client.get(path)).status_code)
            clock.advance(25.0)
    assert answers == [200, 200, 200, 200, 429, 429] * 2  # /health/ready is exempt
    top = [(t.key, t.count) for t in noisy.heaviest("burst", True)]
    refused = [(t.key, t.count) for t in noisy.heaviest("burst", False)]
    assert sorted(top) == [("ip:198.51.100.7", 3), ("ip:203.0.113.9", 3)]
    assert sorted(refused) == [("ip:198.51.100.7", 2), ("ip:203.0.113.9", 2)]


async def test_a_failing_resolver_of_a_global_limit_lets_requests_through_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(scope: Any) -> str:
        raise RuntimeError("resolver bug")

    mw = RateLimitMiddleware(bare_app, [Limit("only", "1/minute", key=broken)])
    async with client_for(mw) as client:
        for _ in range(3):
            r = await client.get("/x")
            assert r.status_code == 200
            assert "ratelimit" not in r.headers
    assert sum("key resolver failed" in rec.getMessage() for rec in caplog.records) == 1
