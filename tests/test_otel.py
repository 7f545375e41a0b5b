"""buttress and OpenTelemetry: one trace per request, spans for pipelines and attempts.

Against the real opentelemetry-sdk with an in-memory exporter (no network). The provider
is handed to buttress with `otel.enable` (never set globally: the rest of the suite runs
without OpenTelemetry), and put back with `otel.reset` after each test.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from buttress import CircuitBreaker, Pipeline, Retry, otel, telemetry
from buttress.asgi import HardenSettings, harden
from buttress.asgi._context import RequestContextMiddleware
from buttress.errors import ConfigurationError
from buttress.resilience import _drivers_async, _drivers_sync
from buttress.testing import FakeClock, instant_retries
from tests.conftest import captured_logs

INCOMING = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
QUIET = {"configure_logging": False, "graceful_shutdown": False}


class Boom(Exception):
    """Not retriable (an internal error): a 500."""


@pytest.fixture(autouse=True)
def no_sleeps() -> Iterator[None]:
    with instant_retries():
        yield


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """An SDK provider buttress traces through, its finished spans in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    otel.enable(provider)
    try:
        yield exporter
    finally:
        otel.reset()
        telemetry.remove_hook(otel.span_event)
        provider.shutdown()


def _by_name(exporter: InMemorySpanExporter) -> dict[str, list[ReadableSpan]]:
    found: dict[str, list[ReadableSpan]] = {}
    for span in exporter.get_finished_spans():
        found.setdefault(span.name, []).append(span)
    return found


def _hex(span: ReadableSpan) -> tuple[str, str]:
    ctx = span.get_span_context()
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


def _flags(span: ReadableSpan) -> str:
    """The span's trace flags as ``traceresponse`` writes them (sampled, random...)."""
    flags = int(span.get_span_context().trace_flags)
    assert flags & 1  # sampled
    return f"{flags:02x}"


def _app(pipe: Pipeline) -> FastAPI:
    app = FastAPI()
    calls = {"n": 0}

    async def flaky(sku: str) -> int:
        calls["n"] += 1
        if calls["n"] % 2:
            raise ConnectionError("upstream reset")
        return len(sku)

    async def broken() -> int:
        raise Boom("no price")

    @app.get("/price/{sku}")
    async def price(sku: str) -> dict[str, int]:
        return {"price": await pipe.acall(flaky, sku)}

    @app.get("/boom")
    async def boom() -> dict[str, int]:
        return {"price": await pipe.acall(broken)}

    return app


async def _get(app: Any, path: str, **headers: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.get(path, headers=headers)


async def test_request_and_retrying_pipeline_are_one_trace(
    spans: InMemorySpanExporter,
) -> None:
    pipe = Pipeline(Retry(attempts=3), name="prices")
    with captured_logs(json=True) as logs:
        app = harden(_app(pipe), HardenSettings(**QUIET))
        response = await _get(app, "/price/abc", traceparent=INCOMING)
    assert response.status_code == 200
    found = _by_name(spans)
    [server] = found["GET /price/{sku}"]
    [pipeline] = found["buttress.pipeline prices"]
    first, second = sorted(found["buttress.attempt"], key=lambda s: s.start_time or 0)
    # one trace, continued from the caller; the links
    trace_id, server_id = _hex(server)
    assert trace_id == INCOMING.split("-")[1]
    assert server.kind is SpanKind.SERVER
    assert server.parent is not None
    assert f"{server.parent.span_id:016x}" == "00f067aa0ba902b7"
    assert pipeline.kind is SpanKind.INTERNAL
    assert pipeline.parent is not None
    assert pipeline.parent.span_id == int(server_id, 16)
    for attempt in (first, second):
        assert attempt.parent is not None
        assert attempt.parent.span_id == pipeline.get_span_context().span_id
        assert _hex(attempt)[0] == trace_id
    # attributes
    assert server.attributes is not None
    assert server.attributes["http.request.method"] == "GET"
    assert server.attributes["url.path"] == "/price/abc"
    assert server.attributes["http.route"] == "/price/{sku}"
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["buttress.request_id"] == trace_id
    assert "error.type" not in server.attributes
    assert pipeline.attributes is not None
    assert pipeline.attributes["buttress.pipeline"] == "prices"
    assert pipeline.attributes["buttress.retry.attempts"] == 2
    assert first.attributes is not None
    assert second.attributes is not None
    assert first.attributes["buttress.retry.attempt"] == 1
    assert first.attributes["error.type"] == "ConnectionError"
    assert first.status.status_code is StatusCode.ERROR
    assert second.attributes["buttress.retry.attempt"] == 2
    assert second.attributes["buttress.retry.delay"] >= 0
    assert "error.type" not in second.attributes
    [event] = pipeline.events
    assert event.name == "buttress.retry_scheduled"
    assert event.attributes is not None
    assert event.attributes["buttress.retry.attempt"] == 1
    assert event.attributes["buttress.pipeline"] == "prices"
    assert event.attributes["error.type"] == "ConnectionError"
    assert event.attributes["buttress.retry.delay"] == second.attributes["buttress.retry.delay"]
    # the same trace everywhere buttress names one
    assert response.headers["traceresponse"] == f"00-{trace_id}-{server_id}-{_flags(server)}"
    assert response.headers["x-request-id"] == trace_id
    [line] = [json.loads(x) for x in logs.getvalue().splitlines() if '"route"' in x]
    assert line["trace_id"] == trace_id
    assert line["request_id"] == trace_id


async def test_a_500_names_the_trace_and_the_error(spans: InMemorySpanExporter) -> None:
    pipe = Pipeline(Retry(attempts=3), name="prices")
    with captured_logs(json=True) as logs:
        app = harden(_app(pipe), HardenSettings(**QUIET))
        response = await _get(app, "/boom")
    assert response.status_code == 500
    found = _by_name(spans)
    [server] = found["GET /boom"]
    [pipeline] = found["buttress.pipeline prices"]
    [attempt] = found["buttress.attempt"]  # not retriable: one attempt
    trace_id, server_id = _hex(server)
    assert server.parent is None  # no traceparent: a new trace
    assert response.json()["request_id"] == trace_id  # the problem body
    assert response.headers["traceresponse"] == f"00-{trace_id}-{server_id}-{_flags(server)}"
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 500
    assert server.attributes["error.type"] == "tests.test_otel.Boom"
    assert server.status.status_code is StatusCode.ERROR
    assert [e.name for e in server.events] == ["buttress.request_error"]
    for span in (pipeline, attempt):
        assert span.attributes is not None
        assert span.attributes["error.type"] == "tests.test_otel.Boom"
        assert span.status.status_code is StatusCode.ERROR
    lines = [json.loads(x) for x in logs.getvalue().splitlines()]
    assert lines
    assert all(x.get("trace_id") == trace_id for x in lines if "trace_id" in x)
    assert any(x.get("route") == "/boom" for x in lines)


async def test_with_the_fastapi_instrumentation_still_one_server_span(
    spans: InMemorySpanExporter,
) -> None:
    provider = otel._provider[0]
    pipe = Pipeline(Retry(attempts=3), name="prices")
    inner = _app(pipe)
    FastAPIInstrumentor.instrument_app(inner, tracer_provider=provider)
    try:
        app = harden(inner, HardenSettings(**QUIET))
        response = await _get(app, "/price/abc")
    finally:
        FastAPIInstrumentor.uninstrument_app(inner)
    assert response.status_code == 200
    finished = spans.get_finished_spans()
    servers = [s for s in finished if s.kind is SpanKind.SERVER]
    assert [s.name for s in servers] == ["GET /price/{sku}"]
    [server] = servers
    trace_id, server_id = _hex(server)
    assert {_hex(s)[0] for s in finished} == {trace_id}
    assert response.headers["traceresponse"] == f"00-{trace_id}-{server_id}-{_flags(server)}"
    assert response.headers["x-request-id"] == trace_id
    # the instrumentation's own span is a child of buttress's, the pipeline under it
    ids = {s.get_span_context().span_id: s for s in finished}
    instrumented = [
        s
        for s in finished
        if s.instrumentation_scope is not None
        and "fastapi" in s.instrumentation_scope.name
        and s.parent is not None
        and s.parent.span_id == int(server_id, 16)
    ]
    assert instrumented
    [pipeline] = [s for s in finished if s.name == "buttress.pipeline prices"]
    parent = pipeline.parent
    while parent is not None and parent.span_id != int(server_id, 16):
        parent = ids[parent.span_id].parent
    assert parent is not None  # the pipeline span descends from the server span
    assert len([s for s in finished if s.name == "buttress.attempt"]) == 2


async def test_inside_the_asgi_instrumentation_its_server_span_is_used(
    spans: InMemorySpanExporter,
) -> None:
    provider = otel._provider[0]
    pipe = Pipeline(Retry(attempts=3), name="prices")
    app = OpenTelemetryMiddleware(
        harden(_app(pipe), HardenSettings(**QUIET)), tracer_provider=provider
    )
    response = await _get(app, "/price/abc", traceparent=INCOMING)
    assert response.status_code == 200
    finished = spans.get_finished_spans()
    [server] = [s for s in finished if s.kind is SpanKind.SERVER]
    trace_id, server_id = _hex(server)
    assert trace_id == INCOMING.split("-")[1]
    assert response.headers["traceresponse"] == f"00-{trace_id}-{server_id}-{_flags(server)}"
    assert server.attributes is not None
    assert server.attributes["buttress.request_id"] == trace_id
    assert server.attributes["http.route"] == "/price/{sku}"
    [pipeline] = [s for s in finished if s.name == "buttress.pipeline prices"]
    assert pipeline.parent is not None
    assert pipeline.parent.span_id == int(server_id, 16)


async def test_without_a_provider_nothing_is_traced() -> None:
    otel.reset()
    exporter = InMemorySpanExporter()  # attached to nothing: stays empty
    pipe = Pipeline(Retry(attempts=3), name="prices")
    app = harden(_app(pipe), HardenSettings(**QUIET))
    context = app.stages[0]
    assert isinstance(context, RequestContextMiddleware)
    assert app._arrive[0][1] == context.arrive  # the W3C hooks, not the server span's
    response = await _get(app, "/price/abc", traceparent=INCOMING)
    assert response.status_code == 200
    trace_id = INCOMING.split("-")[1]
    assert response.headers["traceresponse"].startswith(f"00-{trace_id}-")
    assert exporter.get_finished_spans() == ()
    # the pipeline's chain is the drivers' own: no tracing link around or inside them
    link = pipe._async
    assert link is not None
    assert link.__module__ == _drivers_async.__name__
    sync_link = pipe._build_sync()
    assert sync_link.__module__ == _drivers_sync.__name__
    assert otel.span_event not in telemetry.global_hooks()


def test_switched_off_by_the_environment(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUTTRESS_OTEL", "off")
    pipe = Pipeline(Retry(attempts=2), name="off")
    assert pipe.call(lambda: 1) == 1
    assert spans.get_finished_spans() == ()
    monkeypatch.setenv("BUTTRESS_OTEL", "maybe")
    with pytest.raises(ConfigurationError, match="BUTTRESS_OTEL"):
        otel.tracer()


def test_tracing_false_keeps_the_w3c_hooks(spans: InMemorySpanExporter) -> None:
    app = harden(FastAPI(), HardenSettings(tracing=False, **QUIET))
    context = app.stages[0]
    assert isinstance(context, RequestContextMiddleware)
    assert app._arrive[0][1] == context.arrive


def test_sync_pipeline_events_become_span_events(
    spans: InMemorySpanExporter, clock: FakeClock
) -> None:
    breaker = CircuitBreaker(failure_rate=0.5, minimum_calls=2, window=30.0, clock=clock)
    pipe = Pipeline(breaker, name="db")

    def fail() -> None:
        raise ConnectionError("down")

    for _ in range(2):
        with pytest.raises(ConnectionError):
            pipe.call(fail)
    with pytest.raises(Exception, match="open"):
        pipe.call(fail)  # rejected: through the chain, inside the span (no up-front gate)
    found = spans.get_finished_spans()
    assert [s.name for s in found] == ["buttress.pipeline db"] * 3
    assert found[0].attributes is not None
    assert found[0].attributes["buttress.breaker.state"] == "closed"
    opened = [e for e in found[1].events if e.name == "buttress.circuit_state_changed"]
    assert opened
    assert opened[0].attributes is not None
    assert opened[0].attributes["buttress.breaker.state"] == "open"
    assert opened[0].attributes["buttress.breaker.previous_state"] == "closed"
    rejected = found[2]
    assert rejected.attributes is not None
    assert rejected.attributes["buttress.breaker.state"] == "open"
    assert rejected.attributes["error.type"] == "buttress.errors.CircuitOpen"
    assert [e.name for e in rejected.events] == ["buttress.call_rejected", "exception"]


def test_an_untraced_pipeline_records_nothing(spans: InMemorySpanExporter) -> None:
    pipe = Pipeline(Retry(attempts=2), name="quiet", traced=False)
    assert pipe.call(lambda: 1) == 1
    assert spans.get_finished_spans() == ()


async def test_inbound_decisions_on_the_server_span(spans: InMemorySpanExporter) -> None:
    app = FastAPI()

    @app.post("/orders")
    async def order() -> dict[str, int]:
        return {"id": 1}

    @app.get("/slow")
    async def slow() -> dict[str, int]:
        await asyncio.sleep(5)
        return {"id": 1}

    hardened = harden(
        app,
        HardenSettings(rate_limits=("burst=3/minute",), request_timeout=0.05, **QUIET),
    )
    transport = httpx.ASGITransport(app=hardened)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        key = {"idempotency-key": '"k-1"'}
        first = await client.post("/orders", json={"a": 1}, headers=key)
        replay = await client.post("/orders", json={"a": 1}, headers=key)
        conflict = await client.post("/orders", json={"a": 2}, headers=key)
        limited = await client.get("/slow")
    assert [first.status_code, replay.status_code, conflict.status_code] == [200, 200, 422]
    assert limited.status_code == 429
    servers = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert len(servers) == 4
    attrs = [dict(s.attributes or {}) for s in servers]
    outcomes = [a.get("buttress.idempotency.outcome") for a in attrs[:3]]
    assert outcomes == ["first", "replay", "conflict"]
    assert attrs[0]["buttress.rate_limit.policy"] == "burst"
    assert attrs[0]["buttress.rate_limit.remaining"] == 2
    assert attrs[3]["buttress.rate_limit.limited"] is True
    assert attrs[3]["http.response.status_code"] == 429
    assert [e.name for e in servers[3].events] == ["buttress.rate_limited"]
    assert not any("key" in name for a in attrs for name in a if "rate_limit" in name)


async def test_deadline_exceeded_on_the_server_span(spans: InMemorySpanExporter) -> None:
    app = FastAPI()

    @app.get("/slow")
    async def slow() -> dict[str, int]:
        await asyncio.sleep(5)
        return {"id": 1}

    hardened = harden(app, HardenSettings(request_timeout=0.05, **QUIET))
    response = await _get(hardened, "/slow")
    assert response.status_code == 504
    [server] = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert server.attributes is not None
    assert server.attributes["buttress.deadline.exceeded"] is True
    assert server.attributes["http.response.status_code"] == 504
    assert server.attributes["error.type"] == "504"
    assert not [s for s in spans.get_finished_spans() if s.name.startswith("buttress.pipeline")]


async def test_sampled_out_requests_keep_one_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    monkeypatch.setenv("BUTTRESS_OTEL_SAMPLE_RATIO", "0")
    exporter = InMemorySpanExporter()
    provider = otel.configure(exporter=exporter, set_global=False)
    otel.enable(provider)
    try:
        app = harden(FastAPI(), HardenSettings(**QUIET))
        dropped = await _get(app, "/nowhere")
        kept = await _get(app, "/nowhere", traceparent=INCOMING)  # the caller sampled it
        provider.force_flush()
    finally:
        otel.reset()
        telemetry.remove_hook(otel.span_event)
        provider.shutdown()
    trace_id = dropped.headers["x-request-id"]
    assert dropped.headers["traceresponse"].startswith(f"00-{trace_id}-")
    assert not int(dropped.headers["traceresponse"][-2:], 16) & 1  # not sampled, said so
    assert int(kept.headers["traceresponse"][-2:], 16) & 1
    [span] = exporter.get_finished_spans()
    assert _hex(span)[0] == INCOMING.split("-")[1]


def test_configure_validates_and_keeps_a_users_provider(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BUTTRESS_OTEL_SAMPLE_RATIO", "2")
    with pytest.raises(ConfigurationError, match="BUTTRESS_OTEL_SAMPLE_RATIO"):
        otel.configure(set_global=False)
    monkeypatch.delenv("BUTTRESS_OTEL_SAMPLE_RATIO")
    with pytest.raises(ConfigurationError, match="sample_ratio"):
        otel.configure(sample_ratio=1.5, set_global=False)
    provider = otel.configure(sample_ratio=0.1, service_name="shop", set_global=False)
    assert "0.1" in provider.sampler.get_description()
    assert provider.resource.attributes["service.name"] == "shop"


async def test_fastapis_own_tracing_makes_no_second_server_span() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    otel.enable(provider)
    try:
        app = FastAPI(telemetry={"tracer_provider": provider})  # FastAPI would trace too

        @app.get("/items/{item}")
        async def item(item: str) -> dict[str, str]:
            return {"item": item}

        response = await _get(harden(app, HardenSettings(**QUIET)), "/items/7")
    finally:
        otel.reset()
        telemetry.remove_hook(otel.span_event)
        provider.shutdown()
    assert response.status_code == 200
    servers = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert [s.name for s in servers] == ["GET /items/{item}"]
    trace_id, _ = _hex(servers[0])
    assert response.headers["traceresponse"].split("-")[1] == trace_id


async def test_an_outbound_retry_names_each_attempt_span_in_its_traceparent(
    spans: InMemorySpanExporter,
) -> None:
    """buttress.http with propagate_context: the server called sees each attempt as parent."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from buttress.asgi.context import propagate_context
    from buttress.http import async_client, is_retriable_response

    seen: list[str] = []

    async def stock(request: Request) -> PlainTextResponse:
        seen.append(request.headers["traceparent"])
        first = len(seen) == 1
        return PlainTextResponse("busy" if first else "7", 503 if first else 200)

    upstream = Starlette(routes=[Route("/stock", stock)])
    outbound = Pipeline(Retry(attempts=2, retry_on_result=is_retriable_response), name="inventory")
    app = FastAPI()

    @app.get("/order")
    async def order() -> dict[str, str]:
        async with async_client(
            transport=httpx.ASGITransport(app=upstream),
            base_url="http://inventory.test",
            pipeline=outbound,
            on_request=[propagate_context],
        ) as inventory:
            return {"stock": (await inventory.get("/stock")).text}

    response = await _get(harden(app, HardenSettings(**QUIET)), "/order")
    assert response.json() == {"stock": "7"}
    attempts = sorted(_by_name(spans)["buttress.attempt"], key=lambda s: s.start_time or 0)
    assert len(attempts) == 2 == len(seen)
    for header, attempt in zip(seen, attempts, strict=True):
        trace_id, span_id = _hex(attempt)
        assert header == f"00-{trace_id}-{span_id}-{_flags(attempt)}"
