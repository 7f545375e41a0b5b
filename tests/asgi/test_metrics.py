"""MetricsMiddleware: labels, histogram, in-flight, /metrics protection and formats,
exemplars, resilience events, multiprocess mode (in a subprocess)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from prometheus_client import CollectorRegistry, Counter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from buttress import telemetry
from buttress.asgi._context import is_loopback
from buttress.asgi._metrics import (
    DEFAULT_BUCKETS,
    UNMATCHED_ROUTE,
    HttpMetrics,
    MetricsMiddleware,
    RequestMetrics,
    _traceparent_trace_id,
)
from buttress.errors import ConfigurationError, ErrorCode
from buttress.testing import FakeClock

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"
OTHER_CLIENT = ("10.1.2.3", 1234)
REQUESTS = "buttress_http_requests_total"
DURATION = "buttress_http_request_duration_seconds"
IN_FLIGHT = "buttress_http_requests_in_flight"


# --------------------------------------------------------------------------- fixtures and apps


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def make(registry):
    """Build MetricsMiddleware on the test's fresh registry; close them all afterwards."""
    made: list[MetricsMiddleware] = []

    def factory(app, **options) -> MetricsMiddleware:
        if "metrics" not in options:
            options.setdefault("registry", registry)
        mw = MetricsMiddleware(app, **options)
        made.append(mw)
        return mw

    yield factory
    for mw in made:
        mw.close()


def client(app, *, peer=("127.0.0.1", 123), raise_app_exceptions=True, root_path=""):
    transport = httpx.ASGITransport(
        app=app, client=peer, raise_app_exceptions=raise_app_exceptions, root_path=root_path
    )
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


def count(registry, method, route, status):
    value = registry.get_sample_value(
        REQUESTS, {"method": method, "route": route, "status": str(status)}
    )
    return value or 0.0


def observed(registry, method, route):
    return registry.get_sample_value(f"{DURATION}_count", {"method": method, "route": route}) or 0.0


async def bare_app(scope, receive, send):
    """A bare ASGI callable: no router, so no route template."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"bare"})


async def _item(request: Request) -> PlainTextResponse:
    return PlainTextResponse(request.path_params.get("id", "item"))


async def _boom(request: Request) -> PlainTextResponse:
    raise RuntimeError("boom")


async def _ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def starlette_app() -> Starlette:
    posts = Starlette(routes=[Route("/posts/{pid:int}", _ok)])
    return Starlette(
        routes=[
            Route("/items/{id}", _item, methods=["GET", "POST"]),
            Route("/boom", _boom),
            Route("/health/live", _ok),
            Mount("/users/{uid}", app=posts),
            Mount("/static", app=bare_app),
            Mount("/grp", routes=[Route("/a/{x}", _ok)]),
        ]
    )


def fastapi_app() -> FastAPI:
    app = FastAPI()
    v1 = APIRouter(prefix="/v1")

    @v1.get("/things/{tid}")
    def thing(tid: int) -> dict[str, int]:
        return {"tid": tid}

    app.include_router(v1)
    sub = FastAPI()

    @sub.get("/deep/{d}")
    def deep(d: str) -> str:
        return d

    app.mount("/sub", sub)

    @app.get("/items/{id}")
    def item(id: int) -> int:
        return id

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("boom")

    return app


# --------------------------------------------------------------------------- counts and labels


async def test_bare_asgi_app_shares_the_unmatched_label(make, registry):
    app = make(bare_app)
    async with client(app) as c:
        for path in ("/a", "/b/1", "/c?x=1"):
            assert (await c.get(path)).status_code == 200
    assert count(registry, "GET", UNMATCHED_ROUTE, 200) == 3
    assert observed(registry, "GET", UNMATCHED_ROUTE) == 3
    assert registry.get_sample_value(IN_FLIGHT) == 0


async def test_starlette_route_templates(make, registry):
    app = make(starlette_app())
    async with client(app) as c:
        assert (await c.get("/items/1")).status_code == 200
        assert (await c.get("/items/2")).status_code == 200
        assert (await c.post("/items/3")).status_code == 200
        assert (await c.get("/users/42/posts/7")).status_code == 200
        assert (await c.get("/users/43/posts/8")).status_code == 200
        assert (await c.get("/static/css/site.css")).status_code == 200
        assert (await c.get("/grp/a/9")).status_code == 200
        assert (await c.get("/nope")).status_code == 404
        assert (await c.get("/nope/again")).status_code == 404
        assert (await c.delete("/items/1")).status_code == 405
    assert count(registry, "GET", "/items/{id}", 200) == 2
    assert count(registry, "POST", "/items/{id}", 200) == 1
    assert count(registry, "DELETE", "/items/{id}", 405) == 1
    assert count(registry, "GET", "/users/{uid}/posts/{pid}", 200) == 2
    assert count(registry, "GET", "/static/{path}", 200) == 1
    assert count(registry, "GET", "/grp/a/{x}", 200) == 1
    assert count(registry, "GET", UNMATCHED_ROUTE, 404) == 2
    assert observed(registry, "GET", "/items/{id}") == 2
    routes = {
        s.labels["route"]
        for metric in registry.collect()
        if metric.name == "buttress_http_requests"
        for s in metric.samples
    }
    assert not any(r[-1].isdigit() for r in routes), routes  # never a raw id


async def test_fastapi_route_templates(make, registry):
    app = make(fastapi_app())
    async with client(app) as c:
        assert (await c.get("/items/1")).status_code == 200
        assert (await c.get("/items/2")).status_code == 200
        assert (await c.get("/items/abc")).status_code == 422
        assert (await c.get("/v1/things/3")).status_code == 200
        assert (await c.get("/sub/deep/x")).status_code == 200
        assert (await c.get("/nope")).status_code == 404
        assert (await c.post("/items/1")).status_code == 405
    assert count(registry, "GET", "/items/{id}", 200) == 2
    assert count(registry, "GET", "/items/{id}", 422) == 1
    assert count(registry, "GET", "/v1/things/{tid}", 200) == 1
    assert count(registry, "GET", "/sub/deep/{d}", 200) == 1
    assert count(registry, "GET", UNMATCHED_ROUTE, 404) == 1
    assert count(registry, "POST", "/items/{id}", 405) == 1


async def test_unknown_methods_share_one_label(make, registry):
    app = make(bare_app)
    async with client(app) as c:
        await c.request("BREW", "/pot")
        await c.request("PROPFIND", "/pot")
    assert count(registry, "OTHER", UNMATCHED_ROUTE, 200) == 2


async def test_histogram_observes_the_duration(make, registry):
    clock = FakeClock(1000.0)

    async def slow(scope, receive, send):
        clock.advance(float(scope["path"].strip("/")))
        await bare_app(scope, receive, send)

    app = make(slow, clock=clock)
    async with client(app) as c:
        await c.get("/0.3")
        await c.get("/0.25")  # on a bound: le means "less than or equal"
        await c.get("/60")
    labels = {"method": "GET", "route": UNMATCHED_ROUTE}

    def bucket(le):
        return registry.get_sample_value(f"{DURATION}_bucket", {**labels, "le": le})

    assert registry.get_sample_value(f"{DURATION}_sum", labels) == pytest.approx(60.55)
    assert registry.get_sample_value(f"{DURATION}_count", labels) == 3
    assert bucket("0.1") == 0
    assert bucket("0.25") == 1
    assert bucket("0.5") == 2
    assert bucket("30.0") == 2
    assert bucket("+Inf") == 3


async def test_in_flight_counts_requests_being_served(make, registry):
    seen = []

    async def app_(scope, receive, send):
        seen.append(registry.get_sample_value(IN_FLIGHT))
        await bare_app(scope, receive, send)

    app = make(app_)
    async with client(app) as c:
        await asyncio.gather(c.get("/a"), c.get("/b"))
    assert 1 in seen
    assert registry.get_sample_value(IN_FLIGHT) == 0
    assert app.metrics.in_flight == 0


async def test_a_raising_handler_counts_as_500_and_propagates(make, registry):
    async def broken(scope, receive, send):
        raise RuntimeError("boom")

    app = make(broken)
    async with client(app) as c:
        with pytest.raises(RuntimeError, match="boom"):
            await c.get("/x")
    assert count(registry, "GET", UNMATCHED_ROUTE, 500) == 1
    assert registry.get_sample_value(IN_FLIGHT) == 0


async def test_a_handler_failing_mid_response_counts_as_500(make, registry):
    async def half(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("stream broke")

    app = make(half)
    scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
    with pytest.raises(RuntimeError):
        await app(scope, _receive, _drop)
    assert count(registry, "GET", UNMATCHED_ROUTE, 500) == 1
    assert count(registry, "GET", UNMATCHED_ROUTE, 200) == 0


@pytest.mark.parametrize("factory", [starlette_app, fastapi_app])
async def test_framework_500s_count_once_under_the_route(make, registry, factory):
    app = make(factory())
    async with client(app, raise_app_exceptions=False) as c:
        assert (await c.get("/boom")).status_code == 500
    assert count(registry, "GET", "/boom", 500) == 1


async def test_an_app_that_never_answers_counts_as_500(make, registry):
    async def silent(scope, receive, send):
        return None

    app = make(silent)
    scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
    await app(scope, _receive, _drop)
    assert count(registry, "GET", UNMATCHED_ROUTE, 500) == 1


async def test_a_cancelled_request_counts_as_499_and_leaves_flight(make, registry):
    started = asyncio.Event()

    async def hang(scope, receive, send):
        started.set()
        await asyncio.Event().wait()

    app = make(hang)
    scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
    task = asyncio.ensure_future(app(scope, _receive, _drop))
    await started.wait()
    assert registry.get_sample_value(IN_FLIGHT) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert registry.get_sample_value(IN_FLIGHT) == 0
    assert count(registry, "GET", UNMATCHED_ROUTE, 499) == 1


async def test_exempt_paths_are_not_counted(make, registry):
    app = make(starlette_app(), exempt_paths=("/health/live", "/items/1"))
    async with client(app) as c:
        assert (await c.get("/health/live")).status_code == 200
        assert (await c.get("/items/1")).status_code == 200
        assert (await c.get("/items/2")).status_code == 200
        assert (await c.get("/metrics")).status_code == 200
    assert count(registry, "GET", "/health/live", 200) == 0
    assert count(registry, "GET", "/items/{id}", 200) == 1
    text = (await _scrape(app)).text
    assert 'route="/health/live"' not in text
    assert "/metrics" not in text


async def test_non_http_scopes_pass_through(make, registry):
    seen = []

    async def app_(scope, receive, send):
        seen.append(scope["type"])

    app = make(app_)
    await app({"type": "lifespan"}, _receive, _drop)
    await app({"type": "websocket", "path": "/metrics", "headers": []}, _receive, _drop)
    assert seen == ["lifespan", "websocket"]
    assert registry.get_sample_value(IN_FLIGHT) == 0


async def test_shed_and_limited_counters(make, registry):
    app = make(bare_app)
    metrics: RequestMetrics = app
    metrics.shed("max_in_flight")
    metrics.shed("max_in_flight")
    app.metrics.limited("per_ip_burst")
    assert (
        registry.get_sample_value("buttress_http_requests_shed_total", {"reason": "max_in_flight"})
        == 2
    )
    assert (
        registry.get_sample_value(
            "buttress_http_requests_limited_total", {"policy": "per_ip_burst"}
        )
        == 1
    )
    for i in range(100):  # a caller passing unbounded values cannot blow up the label set
        app.metrics.limited(f"p{i}")
    policies = {
        s.labels["policy"]
        for m in registry.collect()
        if m.name == "buttress_http_requests_limited"
        for s in m.samples
        if s.name.endswith("_total")
    }
    assert len(policies) <= 65
    assert "other" in policies


# --------------------------------------------------------------------------- /metrics


async def _scrape(app, **kwargs):
    headers = kwargs.pop("headers", {})
    async with client(app, **kwargs) as c:
        return await c.get("/metrics", headers=headers)


async def test_metrics_served_to_loopback(make):
    app = make(bare_app)
    async with client(app) as c:
        await c.get("/x")
    response = await _scrape(app)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert response.headers["cache-control"] == "no-store"
    assert f'{REQUESTS}{{method="GET",route="{UNMATCHED_ROUTE}",status="200"}} 1.0' in response.text
    assert f"# TYPE {DURATION} histogram" in response.text


@pytest.mark.parametrize(
    "forwarded",
    [
        {"x-forwarded-for": "203.0.113.9"},
        {"forwarded": "for=203.0.113.9"},
        {"x-real-ip": "203.0.113.9"},
        {"x-forwarded-host": "shop.example.com"},
        {"x-forwarded-proto": "https"},
        {"x-forwarded-port": "443"},
        {"x-forwarded-anything-else": "1"},
        {"via": "1.1 proxy"},
        {"cf-connecting-ip": "203.0.113.9"},
        {"true-client-ip": "203.0.113.9"},
        {"x-client-ip": "203.0.113.9"},
    ],
)
async def test_a_proxied_loopback_request_is_not_local(make, forwarded):
    """nginx on the same host forwards the internet's requests from 127.0.0.1."""
    response = await _scrape(make(bare_app), headers=forwarded)
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("peer", [("::1", 1), ("::ffff:127.0.0.1", 1), ("127.5.6.7", 1)])
async def test_other_loopback_addresses(make, peer):
    assert (await _scrape(make(bare_app), peer=peer)).status_code == 200


async def test_metrics_refused_to_other_clients(make):
    response = await _scrape(make(bare_app), peer=OTHER_CLIENT)
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == ErrorCode.FORBIDDEN.wire
    assert REQUESTS not in response.text


async def test_metrics_with_a_token(make):
    app = make(bare_app, token="s3cret-token")
    ok = await _scrape(app, peer=OTHER_CLIENT, headers={"Authorization": "Bearer s3cret-token"})
    assert ok.status_code == 200
    lower = await _scrape(app, peer=OTHER_CLIENT, headers={"Authorization": "bearer s3cret-token"})
    assert lower.status_code == 200
    wrong = await _scrape(app, peer=OTHER_CLIENT, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.json()["code"] == ErrorCode.UNAUTHORIZED.wire
    assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
    basic = await _scrape(app, peer=OTHER_CLIENT, headers={"Authorization": "Basic s3cret-token"})
    assert basic.status_code == 401
    missing = await _scrape(app, peer=OTHER_CLIENT)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == 'Bearer realm="metrics"'
    assert (await _scrape(app)).status_code == 200  # loopback still allowed


async def test_expose_token_only_refuses_loopback_without_token(make):
    app = make(bare_app, token="s3cret-token", expose="token")
    assert (await _scrape(app)).status_code == 401
    ok = await _scrape(app, headers={"Authorization": "Bearer s3cret-token"})
    assert ok.status_code == 200


async def test_expose_public(make):
    assert (await _scrape(make(bare_app, expose="public"), peer=OTHER_CLIENT)).status_code == 200


async def test_no_client_address_is_not_loopback(make):
    app = make(bare_app)
    sent = []

    async def send(message):
        sent.append(message)

    await app({"type": "http", "method": "GET", "path": "/metrics", "headers": []}, _receive, send)
    assert sent[0]["status"] == 403
    assert not is_loopback(None)
    assert not is_loopback(("not-an-ip", 1))


async def test_metrics_methods_and_head(make):
    app = make(bare_app)
    async with client(app) as c:
        post = await c.post("/metrics")
        head = await c.head("/metrics")
    assert post.status_code == 405
    assert post.headers["allow"] == "GET, HEAD"
    assert head.status_code == 200
    assert head.content == b""
    assert int(head.headers["content-length"]) > 0


async def test_metrics_path_below_root_path_and_custom_path(make):
    app = make(bare_app, path="/internal/metrics")
    async with client(app, root_path="/api") as c:
        assert (await c.get("/api/internal/metrics")).status_code == 200
        assert (await c.get("/api/metrics")).text == "bare"  # not ours: the app answers


async def test_path_none_serves_nothing(make):
    app = make(bare_app, path=None)
    assert (await _scrape(app)).text == "bare"


async def test_openmetrics_negotiation(make):
    app = make(bare_app)
    async with client(app) as c:
        await c.get("/x")
    response = await _scrape(
        app, headers={"Accept": "application/openmetrics-text; version=1.0.0; charset=utf-8"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")
    assert f'{REQUESTS}{{method="GET",route="{UNMATCHED_ROUTE}",status="200"}} 1.0' in response.text


async def test_exemplars_carry_the_trace_id(make):
    app = make(starlette_app(), exemplars=True)
    async with client(app) as c:
        await c.get("/items/1", headers={"traceparent": TRACEPARENT})
    om = await _scrape(app, headers={"Accept": "application/openmetrics-text"})
    exemplar = f'# {{trace_id="{TRACE}"}}'
    bucket_lines = [line for line in om.text.splitlines() if "_bucket{" in line]
    assert any(exemplar in line for line in bucket_lines)
    counter_lines = [line for line in om.text.splitlines() if line.startswith(REQUESTS)]
    assert any(exemplar in line for line in counter_lines)
    plain = await _scrape(app)
    assert "trace_id" not in plain.text  # the Prometheus text format has no exemplars


async def test_exemplars_from_a_trace_id_callable_read_at_response_start(make):
    calls = []

    def trace_id(scope):
        calls.append(scope["path"])
        return "0af7651916cd43dd8448eb211c80319c"

    app = make(bare_app, exemplars=True, trace_id=trace_id)
    async with client(app) as c:
        await c.get("/x")
    assert calls == ["/x"]
    om = await _scrape(app, headers={"Accept": "application/openmetrics-text"})
    assert 'trace_id="0af7651916cd43dd8448eb211c80319c"' in om.text


async def test_no_exemplar_without_a_valid_trace(make):
    app = make(bare_app, exemplars=True)
    async with client(app) as c:
        await c.get("/x", headers={"traceparent": "garbage"})
        await c.get("/y")
    om = await _scrape(app, headers={"Accept": "application/openmetrics-text"})
    assert "trace_id" not in om.text
    assert f'{REQUESTS}{{method="GET",route="{UNMATCHED_ROUTE}",status="200"}} 2.0' in om.text


async def test_exemplars_off_by_default(make):
    app = make(bare_app)
    async with client(app) as c:
        await c.get("/x", headers={"traceparent": TRACEPARENT})
    om = await _scrape(app, headers={"Accept": "application/openmetrics-text"})
    assert "trace_id" not in om.text


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (TRACEPARENT, TRACE),
        (f" {TRACEPARENT} ", TRACE),
        (f"01-{TRACE}-00f067aa0ba902b7-01-extra", TRACE),
        (f"ff-{TRACE}-00f067aa0ba902b7-01", None),
        (f"00-{'0' * 32}-00f067aa0ba902b7-01", None),
        (f"00-{TRACE.upper()}-00f067aa0ba902b7-01", None),
        (f"00-{TRACE[:-1]}-00f067aa0ba902b7-01", None),
        ("00-xyz", None),
        ("", None),
    ],
)
def test_traceparent_trace_id(value, expected):
    scope = {"headers": [(b"traceparent", value.encode())]}
    assert _traceparent_trace_id(scope) == expected


# --------------------------------------------------------------------------- resilience events


async def test_resilience_events_appear_through_the_prometheus_hook(make, registry):
    app = make(bare_app)
    hooks_before = telemetry.global_hooks()
    assert any(isinstance(h, telemetry.PrometheusHook) for h in hooks_before)
    telemetry.emit(
        telemetry.RetryScheduledEvent(
            pipeline="orders", policy="retry", attempt=1, delay=0.1,
            code=ErrorCode.UPSTREAM_TIMEOUT,
        )
    )  # fmt: skip
    telemetry.emit(
        telemetry.RetryBudgetExhaustedEvent(pipeline="orders", policy="retry", attempt=2)
    )
    telemetry.emit(
        telemetry.CircuitStateChangedEvent(
            pipeline="orders", policy="db", from_state="closed", to_state="open", generation=1
        )
    )
    telemetry.emit(
        telemetry.CallRejectedEvent(pipeline="orders", policy="db", code=ErrorCode.CIRCUIT_OPEN)
    )
    text = (await _scrape(app)).text
    assert (
        'buttress_retries_total{code="upstream_timeout",pipeline="orders",policy="retry"} 1.0'
        in text
    )
    assert 'buttress_retry_budget_exhausted_total{pipeline="orders",policy="retry"} 1.0' in text
    assert 'buttress_circuit_state{breaker="db"} 1.0' in text
    assert (
        'buttress_rejections_total{code="circuit_open",pipeline="orders",policy="db"} 1.0' in text
    )


async def test_close_removes_the_hook_and_the_collectors(registry):
    app = MetricsMiddleware(bare_app, registry=registry)
    hook = app.metrics._families.hook
    assert hook in telemetry.global_hooks()
    app.close()
    app.close()  # idempotent
    assert hook not in telemetry.global_hooks()
    assert registry.get_sample_value(IN_FLIGHT) is None
    again = MetricsMiddleware(bare_app, registry=registry)  # names are free again
    again.close()


async def test_resilience_off(make, registry):
    before = telemetry.global_hooks()
    app = make(bare_app, resilience=False)
    assert telemetry.global_hooks() == before
    assert "buttress_retries" not in (await _scrape(app)).text


# --------------------------------------------------------------------------- sharing and options


async def test_two_middlewares_on_one_registry_share_the_series(make, registry):
    first = make(bare_app)
    second = make(bare_app)
    hooks = [h for h in telemetry.global_hooks() if isinstance(h, telemetry.PrometheusHook)]
    assert first.metrics._families is second.metrics._families
    async with client(first) as c:
        await c.get("/a")
    async with client(second) as c:
        await c.get("/b")
    assert count(registry, "GET", UNMATCHED_ROUTE, 200) == 2
    first.close()
    assert registry.get_sample_value(IN_FLIGHT) == 0  # still registered for `second`
    assert hooks[-1] in telemetry.global_hooks()


async def test_shared_http_metrics_object(registry):
    metrics = HttpMetrics(registry=registry)
    try:
        app = MetricsMiddleware(bare_app, metrics=metrics)
        async with client(app) as c:
            await c.get("/a")
        metrics.shed("adaptive")
        text = (await _scrape(app)).text
        assert 'buttress_http_requests_shed_total{reason="adaptive"} 1.0' in text
        body, content_type = metrics.render("")
        assert content_type.startswith("text/plain")
        assert REQUESTS.encode() in body
        app.close()  # not the owner: the metrics stay
        assert registry.get_sample_value(IN_FLIGHT) == 0
    finally:
        metrics.close()
    assert registry.get_sample_value(IN_FLIGHT) is None


async def test_namespace_and_buckets(make, registry):
    app = make(bare_app, namespace="shop", buckets=(0.1, 1.0))
    async with client(app) as c:
        await c.get("/a")
    assert (
        registry.get_sample_value(
            "shop_http_requests_total", {"method": "GET", "route": UNMATCHED_ROUTE, "status": "200"}
        )
        == 1
    )
    text = (await _scrape(app)).text
    assert 'le="0.1"' in text
    assert 'le="0.25"' not in text
    assert "# TYPE shop_retries_total counter" in text


def test_names_owned_by_someone_else_are_a_configuration_error(registry):
    Counter("buttress_http_requests_shed", "theirs", registry=registry)
    before = telemetry.global_hooks()
    with pytest.raises(ConfigurationError, match="already registered"):
        MetricsMiddleware(bare_app, registry=registry)
    assert telemetry.global_hooks() == before
    assert registry.get_sample_value(IN_FLIGHT) is None  # what was registered is rolled back


def test_sharing_with_other_buckets_is_a_configuration_error(make, registry):
    make(bare_app)
    with pytest.raises(ConfigurationError, match="already exist"):
        MetricsMiddleware(bare_app, registry=registry, buckets=(1.0, 2.0))


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"buckets": ()}, "empty"),
        ({"buckets": (1.0, 0.5)}, "increasing"),
        ({"buckets": (0.5, 0.5)}, "increasing"),
        ({"buckets": (-1.0, 1.0)}, "positive"),
        ({"buckets": (float("nan"),)}, "positive"),
        ({"buckets": ("fast",)}, "numbers"),
        ({"namespace": "1bad"}, "namespace"),
        ({"namespace": "a-b"}, "namespace"),
        ({"path": "metrics"}, "path"),
        ({"expose": "everyone"}, "expose"),
        ({"token": ""}, "token"),
        ({"token": "a b"}, "token"),
        ({"token": "é-unicode"}, "token"),
        ({"expose": "token"}, "needs a token"),
        ({"expose": "public", "token": "abc"}, "no effect"),
        ({"exempt_paths": "/health"}, "collection"),
        ({"exempt_paths": ("health",)}, "start with"),
        ({"trace_id": "not callable"}, "callable"),
        ({"clock": object()}, "clock"),
    ],
)
def test_options_are_validated(registry, options, match):
    with pytest.raises(ConfigurationError, match=match):
        MetricsMiddleware(bare_app, registry=registry, **options)
    assert registry.get_sample_value(IN_FLIGHT) is None  # nothing left registered


def test_metrics_and_family_options_are_exclusive(registry):
    metrics = HttpMetrics(registry=registry)
    try:
        with pytest.raises(ConfigurationError, match="HttpMetrics"):
            MetricsMiddleware(bare_app, metrics=metrics, namespace="other")
    finally:
        metrics.close()


def test_inf_bucket_is_accepted_and_not_doubled(registry):
    metrics = HttpMetrics(registry=registry, buckets=(0.1, float("inf")), resilience=False)
    try:
        assert metrics._families.buckets == (0.1,)
    finally:
        metrics.close()


def test_default_buckets_are_sane():
    assert list(DEFAULT_BUCKETS) == sorted(set(DEFAULT_BUCKETS))
    assert DEFAULT_BUCKETS[0] <= 0.005
    assert DEFAULT_BUCKETS[-1] >= 10


# --------------------------------------------------------------------------- multiprocess

_WORKER = textwrap.dedent(
    """
    import asyncio, json, logging, sys
    import httpx
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from buttress.asgi._metrics import MetricsMiddleware
    from buttress.telemetry import RetryBudgetExhaustedEvent, emit

    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stdout)

    async def item(request):
        return PlainTextResponse("ok")

    async def main(n, scrape):
        app = MetricsMiddleware(Starlette(routes=[Route("/items/{id}", item)]), exemplars=True)
        assert app.metrics.multiprocess and not app.metrics.exemplars
        emit(RetryBudgetExhaustedEvent(pipeline="p", policy="retry", attempt=1))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            for i in range(n):
                assert (await c.get(f"/items/{i}")).status_code == 200
            if scrape:
                r = await c.get("/metrics")
                print(json.dumps({"status": r.status_code, "text": r.text}))

    asyncio.run(main(int(sys.argv[1]), sys.argv[2] == "scrape"))
    """
)


@pytest.mark.process
def test_multiprocess_mode_sums_across_processes(tmp_path: Path):
    mp_dir = tmp_path / "prom"
    mp_dir.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(mp_dir)}

    def run(n: int, mode: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", _WORKER, str(n), mode],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    first = run(3, "no")
    assert "exemplars are off" in first
    run(4, "no")
    last = run(1, "scrape").splitlines()[-1]
    result = json.loads(last)
    assert result["status"] == 200
    text = result["text"]
    assert f'{REQUESTS}{{method="GET",route="/items/{{id}}",status="200"}} 8.0' in text
    assert f'{DURATION}_count{{method="GET",route="/items/{{id}}"}} 8.0' in text
    assert f"{IN_FLIGHT} 0.0" in text
    assert 'buttress_retry_budget_exhausted_total{pipeline="p",policy="retry"} 3.0' in text
    assert any(name.startswith("counter_") for name in os.listdir(mp_dir))


def test_env_var_set_after_import_is_a_configuration_error(monkeypatch, tmp_path, registry):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with pytest.raises(ConfigurationError, match="before"):
        HttpMetrics(registry=registry)


# --------------------------------------------------------------------------- helpers


async def _receive():
    return {"type": "http.request", "body": b"", "more_body": False}


async def _drop(message):
    return None


# --------------------------------------------------------------------------- one name per fact


async def test_middleware_answers_are_counted_under_their_route(registry):
    from buttress.asgi import HardenSettings, harden

    app = FastAPI()

    @app.get("/orders/{order_id}")
    async def get_order(order_id: int) -> dict[str, int]:
        return {"id": order_id}

    hardened = harden(
        app,
        HardenSettings(configure_logging=False, access_log=False, rate_limits=("b=2/minute",)),
        registry=registry,
    )
    transport = httpx.ASGITransport(app=hardened, client=("127.0.0.1", 9))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        assert (await c.get("/orders/1")).status_code == 200
        assert (await c.get("/docs")).status_code == 200  # FastAPI leaves no scope["route"]
        assert (await c.get("/orders/2")).status_code == 429  # answered before routing
    assert count(registry, "GET", "/orders/{order_id}", 200) == 1
    assert count(registry, "GET", "/orders/{order_id}", 429) == 1
    assert count(registry, "GET", "/docs", 200) == 1
    assert not count(registry, "GET", UNMATCHED_ROUTE, 429)
    # a 429 is counted once: the HTTP counter, not also a resilience counter
    assert registry.get_sample_value("buttress_http_requests_limited_total", {"policy": "b"}) == 1
    assert "buttress_rate_limited_total" not in (await _scrape_registry(registry))
    hardened.parts.metrics.close()


async def test_the_inbound_deadline_is_not_an_upstream_timeout(registry):
    from buttress.asgi import HardenSettings, harden

    async def slow(request: Request) -> PlainTextResponse:
        await asyncio.sleep(5)
        return PlainTextResponse("late")

    hardened = harden(
        Starlette(routes=[Route("/slow", slow)]),
        HardenSettings(configure_logging=False, access_log=False, request_timeout=0.05),
        registry=registry,
    )
    transport = httpx.ASGITransport(app=hardened, client=("127.0.0.1", 9))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        r = await c.get("/slow")
    assert r.status_code == 504
    assert r.json()["code"] == "deadline_exceeded"
    assert r.json()["type"].endswith("/deadline-exceeded")
    labels = {"pipeline": "inbound", "policy": "request_deadline", "code": "deadline_exceeded"}
    assert registry.get_sample_value("buttress_timeouts_total", labels) == 1
    assert 'code="upstream_timeout"' not in await _scrape_registry(registry)
    assert count(registry, "GET", "/slow", 504) == 1
    hardened.parts.metrics.close()


async def _scrape_registry(registry) -> str:
    from prometheus_client import generate_latest

    return generate_latest(registry).decode()


# --------------------------------------------------------------------------- several workers


@pytest.mark.parametrize(
    ("environ", "parent", "several"),
    [
        ({}, [], False),
        ({"WEB_CONCURRENCY": "4"}, [], True),
        ({"WEB_CONCURRENCY": "1"}, [], False),
        ({"UVICORN_WORKERS": "2"}, [], True),
        ({"GUNICORN_CMD_ARGS": "--bind :8000 --workers 3"}, [], True),
        ({"GUNICORN_CMD_ARGS": "-w 1"}, [], False),
        ({}, ["/usr/bin/python3", "-m", "uvicorn", "app:app", "--workers", "2"], True),
        ({}, ["/venv/bin/uvicorn", "app:app", "--workers=4"], True),
        ({}, ["/venv/bin/gunicorn", "-w4", "-k", "uvicorn_worker.UvicornWorker", "a:b"], True),
        ({}, ["/venv/bin/gunicorn", "-w", "1", "a:b"], False),
        ({}, ["/venv/bin/uvicorn", "app:app", "--reload"], False),  # the reloader: one
        ({}, ["/bin/bash", "run.sh", "--workers", "8"], False),  # not a server
    ],
)
def test_several_workers_heuristic(environ, parent, several):
    from buttress.asgi._metrics import several_workers

    assert (several_workers(environ, parent) is not None) is several


_WORKERS_APP = textwrap.dedent(
    """
    from starlette.applications import Starlette
    from buttress.asgi import HardenSettings, harden

    app = harden(Starlette(), HardenSettings(log_json=True))
    """
)


@pytest.mark.process
def test_uvicorn_workers_without_a_multiprocess_dir_warn_once_each(tmp_path: Path):
    import signal
    import time

    from tests.conftest import free_port

    (tmp_path / "workers_app.py").write_text(_WORKERS_APP)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    for name in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir", "WEB_CONCURRENCY"):
        env.pop(name, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "workers_app:app", "--host", "127.0.0.1"]
        + ["--port", str(port), "--workers", "2", "--log-level", "warning"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2.0).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        time.sleep(2.0)  # one worker answers; give the other time to import the app too
        assert proc.poll() is None, "uvicorn exited"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate(timeout=10)
    text = (out + err).decode()
    warnings = [line for line in text.splitlines() if "PROMETHEUS_MULTIPROC_DIR is not set" in line]
    assert len(warnings) == 2, text[-3000:]  # one line per worker process, once each
    for line in warnings:
        record = json.loads(line)
        assert record["level"] == "warning"
        assert "--workers 2" in record["event"]
