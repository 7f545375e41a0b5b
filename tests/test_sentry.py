"""buttress.sentry against the real sentry-sdk, with an in-memory transport (no network).

A FastAPI app and a bare ASGI app behind `harden`: 500s and pipeline failures reach
Sentry once, tagged; 404, 422, 429, shed 503s and deadline 504s do not.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sentry_sdk
from fastapi import FastAPI, Request
from sentry_sdk.consts import DEFAULT_OPTIONS
from sentry_sdk.envelope import Envelope
from sentry_sdk.integrations.dedupe import DedupeIntegration
from sentry_sdk.integrations.logging import LoggingIntegration
from sentry_sdk.transport import Transport

from buttress import Pipeline, Retry
from buttress.asgi import HardenSettings, harden
from buttress.errors import (
    BulkheadFull,
    CircuitOpen,
    ConfigurationError,
    DeadlineExceeded,
    ErrorCode,
    RateLimited,
)
from buttress.sentry import ButtressIntegration, error_code
from buttress.testing import FakeClock
from tests.conftest import captured_logs

KEY = b"k" * 32
DSN = "https://public@o1.ingest.sentry.io/1"


class MemoryTransport(Transport):
    """Keeps every envelope; ``events`` are the error events among them."""

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.envelopes: list[Envelope] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)

    @property
    def events(self) -> list[dict[str, Any]]:
        found = []
        for envelope in self.envelopes:
            for item in envelope.items:
                if item.type == "event" and item.payload.json is not None:
                    found.append(item.payload.json)
        return found


Init = Callable[..., MemoryTransport]

# sentry-sdk 2 names it include_local_variables; 3 moved it under data_collection
_NO_LOCALS: dict[str, Any] = (
    {"include_local_variables": False}
    if "include_local_variables" in DEFAULT_OPTIONS
    else {"data_collection": {"stack_frame_variables": False}}
)


@pytest.fixture(autouse=True)
def json_logs() -> Iterator[None]:
    """buttress's log format, into a buffer (structlog's default renders rich tracebacks)."""
    with captured_logs(json=True):
        yield


@pytest.fixture
def init_sentry() -> Iterator[Init]:
    """``init_sentry(**options)``: sentry_sdk.init with ButtressIntegration, closed afterwards.

    Sentry's logging integration is named with ``event_level=ERROR``: sentry-sdk 2 enables
    it so by default, 3 neither enables it by default nor turns log records into events.
    """

    def init(integration: ButtressIntegration | None = None, **options: Any) -> MemoryTransport:
        transport = MemoryTransport()
        options.setdefault("auto_enabling_integrations", False)
        options.update(_NO_LOCALS)  # fast: no repr of every frame
        sentry_sdk.init(
            dsn=DSN,
            transport=transport,
            integrations=[
                integration or ButtressIntegration(principal_key=KEY),
                LoggingIntegration(event_level=logging.ERROR),
            ],
            **options,
        )
        return transport

    yield init
    sentry_sdk.get_client().close()
    sentry_sdk.get_global_scope().set_client(None)
    sentry_sdk.get_isolation_scope().clear()


def _fail(clock: FakeClock) -> Pipeline:
    return Pipeline(Retry(attempts=2, budget=False, clock=clock), name="prices")


def fastapi_app(
    clock: FakeClock, gate: asyncio.Event | None = None, entered: asyncio.Event | None = None
) -> FastAPI:
    app = FastAPI()
    pipeline = _fail(clock)

    async def unreachable() -> None:
        raise ConnectionError("prices service refused the connection")

    @app.get("/orders/{order_id}")
    async def order(order_id: int, request: Request) -> dict[str, int]:
        request.state.principal = "alice@example.com"
        raise RuntimeError("kaboom")

    @app.get("/price/{sku}")
    async def price(sku: str) -> dict[str, str]:
        await pipeline.acall(unreachable)
        return {"sku": sku}

    @app.get("/items/{n}")
    async def item(n: int) -> dict[str, int]:
        return {"n": n}

    @app.get("/limited")
    async def limited() -> None:
        raise RateLimited("slow down", retry_after=1.0)

    @app.get("/held")
    async def held() -> dict[str, bool]:
        if entered is not None:
            entered.set()
        if gate is not None:
            await gate.wait()
        return {"ok": True}

    @app.get("/slow")
    async def slow() -> None:
        await asyncio.Event().wait()

    return app


async def bare_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Raises what its path names: no router, no Sentry integration sees inside it."""
    if scope["type"] != "http":
        return
    errors: dict[str, BaseException] = {
        "/boom": RuntimeError("bare kaboom"),
        "/limited": RateLimited("slow down", retry_after=1.0),
        "/busy": BulkheadFull("full"),
        "/open": CircuitOpen("open"),
        "/deadline": DeadlineExceeded("too slow"),
    }
    raise errors[scope["path"]]


def client(app: Any, **settings: Any) -> httpx.AsyncClient:
    settings.setdefault("configure_logging", False)
    settings.setdefault("metrics", False)
    hardened = harden(app, HardenSettings(**settings))
    transport = httpx.ASGITransport(app=hardened, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://t")


def principal_hash(principal: str) -> str:
    return hmac.new(KEY, principal.encode(), hashlib.sha256).hexdigest()[:16]


# ------------------------------------------------------------------ what reaches Sentry
async def test_a_500_is_one_event_with_the_request_tags(init_sentry: Init) -> None:
    transport = init_sentry(release="shop@1.2.3")
    async with client(fastapi_app(FakeClock())) as http:
        response = await http.get("/orders/7", headers={"x-request-id": "req-500"})
    assert response.status_code == 500
    [event] = transport.events
    assert event["exception"]["values"][-1]["type"] == "RuntimeError"
    tags = event["tags"]
    assert tags["request_id"] == "req-500"
    assert tags["trace_id"] == response.headers["traceresponse"].split("-")[1]
    assert tags["route"] == "/orders/{order_id}"
    assert tags["principal_hash"] == principal_hash("alice@example.com")
    assert "alice" not in str(event.get("tags"))
    assert event["release"] == "shop@1.2.3"


async def test_fastapi_500_is_one_event_with_sentrys_own_integrations(init_sentry: Init) -> None:
    transport = init_sentry(auto_enabling_integrations=True)
    names = set(sentry_sdk.get_client().integrations)
    assert {"starlette", "fastapi", "logging", "buttress"} <= names
    async with client(fastapi_app(FakeClock())) as http:
        await http.get("/orders/1")
        await http.get("/orders/2")
    events = transport.events
    assert len(events) == 2  # one per 500, not one per integration that saw it
    assert [e["exception"]["values"][-1]["mechanism"]["type"] for e in events] == [
        "starlette",
        "starlette",
    ]
    assert len({e["tags"]["request_id"] for e in events}) == 2


@pytest.mark.parametrize("dedupe", [True, False])
async def test_bare_asgi_500_is_one_event(init_sentry: Init, dedupe: bool) -> None:
    options: dict[str, Any] = {}
    if not dedupe:  # buttress's own one-event-per-exception rule, without Sentry's
        options["disabled_integrations"] = [DedupeIntegration]
    transport = init_sentry(**options)
    async with client(bare_app) as http:
        response = await http.get("/boom", headers={"x-request-id": "bare-1"})
    assert response.status_code == 500
    [event] = transport.events
    exception = event["exception"]["values"][-1]
    assert exception["type"] == "RuntimeError"
    mechanism = exception["mechanism"]  # sentry-sdk 3 adds an exception_id
    assert (mechanism["type"], mechanism["handled"]) == ("buttress", False)
    assert event["tags"]["request_id"] == "bare-1"
    assert event["tags"]["route"] == "<unmatched>"


async def test_bare_asgi_rejections_are_not_sent(init_sentry: Init) -> None:
    transport = init_sentry()
    async with client(bare_app) as http:
        statuses = [(await http.get(p)).status_code for p in ("/limited", "/busy", "/open")]
        statuses.append((await http.get("/deadline")).status_code)
    assert statuses == [429, 503, 503, 504]
    assert transport.events == []


async def test_client_errors_limits_shedding_and_deadlines_are_not_sent(
    init_sentry: Init,
) -> None:
    transport = init_sentry(auto_enabling_integrations=True)
    gate, entered = asyncio.Event(), asyncio.Event()
    app = fastapi_app(FakeClock(), gate, entered)
    async with client(
        app, shed_max_in_flight=1, shed_adaptive=None, rate_limits=("burst=30/minute",)
    ) as http:
        assert (await http.get("/missing")).status_code == 404
        assert (await http.get("/items/abc")).status_code == 422
        assert (await http.get("/limited")).status_code == 429
        first = asyncio.ensure_future(http.get("/held"))
        await entered.wait()  # the first request holds the only slot
        shed = await http.get("/held")
        gate.set()
        assert (await first).status_code == 200
        assert shed.status_code == 503
        deadline = await http.get("/slow", headers={"x-request-timeout": "0.05"})
        assert deadline.status_code == 504
    assert transport.events == []


async def test_a_failing_pipeline_is_sent_with_retry_breadcrumbs(init_sentry: Init) -> None:
    transport = init_sentry(auto_enabling_integrations=True)
    async with client(fastapi_app(FakeClock())) as http:
        response = await http.get("/price/sku-1", headers={"x-request-id": "price-1"})
    assert response.status_code == 500
    [event] = transport.events
    assert event["exception"]["values"][-1]["type"] == "ConnectionError"
    assert event["tags"]["route"] == "/price/{sku}"
    assert event["tags"]["request_id"] == "price-1"
    crumbs = [c for c in event["breadcrumbs"]["values"] if c["category"].startswith("buttress.")]
    kinds = [c["category"] for c in crumbs]
    assert kinds == ["buttress.retry_scheduled", "buttress.retry_gave_up"]
    scheduled = crumbs[0]
    assert scheduled["level"] == "info"
    assert scheduled["data"]["pipeline"] == "prices"
    assert scheduled["data"]["attempt"] == 1
    assert scheduled["data"]["error"] == "ConnectionError"
    assert crumbs[1]["level"] == "warning"


def test_a_pipeline_failure_outside_a_request_is_sent_untagged(init_sentry: Init) -> None:
    transport = init_sentry()
    pipeline = _fail(FakeClock())

    def unreachable() -> None:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError) as caught:
        pipeline.call(unreachable)
    sentry_sdk.capture_exception(caught.value)
    sentry_sdk.capture_exception(caught.value)  # the same exception: still one event
    [event] = transport.events
    assert "request_id" not in event.get("tags", {})
    kinds = [c["category"] for c in event["breadcrumbs"]["values"]]
    assert "buttress.retry_scheduled" in kinds


# ------------------------------------------------------------------ the filter itself
def test_the_taxonomy_decides_what_is_sent(init_sentry: Init) -> None:
    transport = init_sentry()
    sent = [RuntimeError("bug"), TimeoutError("upstream"), ConnectionError("refused")]
    kept_back = [
        RateLimited("429"),
        BulkheadFull("shed"),
        CircuitOpen("open"),
        DeadlineExceeded("deadline"),
        DeadlineExceeded("attempt", code=ErrorCode.UPSTREAM_TIMEOUT),  # a Rejected
        _http_error(404),
        _http_error(422),
    ]
    for exc in [*sent, *kept_back]:
        sentry_sdk.capture_exception(exc)
    sentry_sdk.capture_exception(_http_error(502))
    sentry_sdk.capture_message("a message has no exception: always sent")
    types = [e.get("exception", {}).get("values", [{}])[-1].get("type") for e in transport.events]
    assert types == ["RuntimeError", "TimeoutError", "ConnectionError", "HTTPException", None]


def test_capture_asks_for_more_codes_or_decides_alone(init_sentry: Init) -> None:
    integration = ButtressIntegration(capture={ErrorCode.DEADLINE_EXCEEDED})
    assert integration.wants(DeadlineExceeded("deadline"))
    assert not integration.wants(RateLimited("429"))
    assert integration.wants(RuntimeError())
    only_timeouts = ButtressIntegration(capture=lambda exc, code: code.http_status == 504)
    assert only_timeouts.wants(TimeoutError())
    assert not only_timeouts.wants(RuntimeError())
    transport = init_sentry(integration)
    sentry_sdk.capture_exception(DeadlineExceeded("deadline"))
    assert len(transport.events) == 1


def test_options_are_validated() -> None:
    with pytest.raises(ConfigurationError, match="capture"):
        ButtressIntegration(capture=["deadline_exceeded"])  # type: ignore[list-item]
    with pytest.raises(ConfigurationError, match="16 bytes"):
        ButtressIntegration(principal_key="short")


def test_error_code_reads_framework_http_exceptions() -> None:
    assert error_code(_http_error(404)) is ErrorCode.NOT_FOUND
    assert error_code(_http_error(503)) is ErrorCode.UPSTREAM_UNAVAILABLE
    assert error_code(asyncio.CancelledError()) is None


def test_release_from_the_environment_when_sentry_has_none(
    init_sentry: Init, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # not in a git checkout: Sentry finds no release of its own
    monkeypatch.setenv("BUTTRESS_SERVICE_VERSION", "2.0.0")
    transport = init_sentry(ButtressIntegration())
    sentry_sdk.capture_message("hello")
    assert transport.events[0]["release"] == "2.0.0"


def test_logged_exceptions_are_filtered_too(init_sentry: Init) -> None:
    transport = init_sentry()  # the logging integration: ERROR records with exc_info
    log = logging.getLogger("tests.sentry")
    for exc in (RateLimited("429"), RuntimeError("bug")):
        try:
            raise exc
        except Exception:
            log.exception("failed")
    [event] = transport.events
    assert event["exception"]["values"][-1]["type"] == "RuntimeError"


def test_without_the_integration_enabled_nothing_changes(init_sentry: Init) -> None:
    transport = MemoryTransport()
    sentry_sdk.init(dsn=DSN, transport=transport, default_integrations=False)
    sentry_sdk.capture_exception(RateLimited("429"))  # our processor stays out of the way
    assert len(transport.events) == 1


def _http_error(status: int) -> Exception:
    from starlette.exceptions import HTTPException

    return HTTPException(status_code=status)


def test_a_thread_exception_is_one_event(
    init_sentry: Init, monkeypatch: pytest.MonkeyPatch
) -> None:
    from buttress import process_errors

    monkeypatch.setattr(threading, "excepthook", threading.__excepthook__)
    transport = init_sentry()  # Sentry's threading and logging integrations both see it
    uninstall = process_errors.install()
    try:
        thread = threading.Thread(target=_raise_value_error, name="worker")
        thread.start()
        thread.join()
    finally:
        uninstall()
    [event] = transport.events
    assert event["exception"]["values"][-1]["type"] == "ValueError"


def _raise_value_error() -> None:
    raise ValueError("thread failed")
