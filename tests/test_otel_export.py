"""buttress's spans over real OTLP/HTTP, to a receiver the test starts on the loopback.

No OpenTelemetry Collector binary is obtainable here: Debian has no ``otelcol`` package,
PyPI has no maintained wheel shipping one, and building it from its Go modules needs a Go
toolchain and a long build. The receiver is therefore built from maintained pieces: the
standard library's ``http.server`` accepting ``POST /v1/traces`` (the OTLP/HTTP path), the
body decoded with ``opentelemetry-proto``'s ``ExportTraceServiceRequest`` (what the
exporter itself encodes with, and what the Collector's OTLP receiver decodes). What it
checks is the wire: what a collector would be handed.

The provider comes from `buttress.otel.configure` with only ``OTEL_EXPORTER_OTLP_ENDPOINT``
set, as a user would run it, handed to buttress with `otel.enable` (never set globally).
"""

from __future__ import annotations

import gzip
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import httpx
import opentelemetry.exporter.otlp.proto.http.trace_exporter  # noqa: F401 - the test extra: fail loudly
import pytest
from fastapi import FastAPI
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from buttress import Pipeline, Retry, otel, telemetry
from buttress.asgi import HardenSettings, harden
from buttress.testing import instant_retries
from tests.conftest import captured_logs

QUIET = {"configure_logging": False, "graceful_shutdown": False}
ERROR = Status.StatusCode.STATUS_CODE_ERROR


@dataclass
class Received:
    """What the receiver was sent: the decoded requests, and anything it refused."""

    requests: list[ExportTraceServiceRequest] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def spans(self) -> list[tuple[dict[str, Any], Span]]:
        """Every span received, with its resource's attributes."""
        with self.lock:
            return [
                (_attributes(rs.resource.attributes), span)
                for request in self.requests
                for rs in request.resource_spans
                for ss in rs.scope_spans
                for span in ss.spans
            ]


def _attributes(values: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in values:
        assert isinstance(item, KeyValue)
        kind = item.value.WhichOneof("value")
        out[item.key] = getattr(item.value, kind) if kind else None
    return out


def _handler(received: Received) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = 5.0  # a stuck client cannot hold the server thread

        def do_POST(self) -> None:
            if self.path != "/v1/traces":
                received.refused.append(f"path {self.path}")
                self._answer(404, b"")
                return
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            encoding = self.headers.get("content-encoding", "")
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            if self.headers.get("content-type") != "application/x-protobuf":
                received.refused.append(f"content-type {self.headers.get('content-type')}")
                self._answer(415, b"")
                return
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            with received.lock:
                received.requests.append(request)
            self._answer(200, ExportTraceServiceResponse().SerializeToString())

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
            pass

    return Handler


@pytest.fixture
def receiver() -> Iterator[tuple[str, Received]]:
    """An OTLP/HTTP trace receiver on a free loopback port: (endpoint, what it got)."""
    received = Received()
    server = HTTPServer(("127.0.0.1", 0), _handler(received))
    server.timeout = 5.0
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        assert not thread.is_alive()


@pytest.fixture
def exported(
    receiver: tuple[str, Received], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Any, Received]]:
    """A provider from `otel.configure` exporting to the receiver, buttress tracing with it."""
    endpoint, received = receiver
    for name in (
        "BUTTRESS_OTEL",
        "BUTTRESS_OTEL_SAMPLE_RATIO",
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "5")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # loopback only, never a proxy
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    provider = otel.configure(service_name="t", set_global=False)
    otel.enable(provider)
    try:
        with instant_retries():
            yield provider, received
    finally:
        otel.reset()
        telemetry.remove_hook(otel.span_event)
        provider.shutdown()


def _flush(provider: Any, received: Received) -> list[tuple[dict[str, Any], Span]]:
    assert provider.force_flush(timeout_millis=10_000)
    assert received.refused == []
    return received.spans()


async def _get(app: Any, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.get(path)


class Boom(Exception):
    """Not retriable: a 500."""


def _app() -> FastAPI:
    app = FastAPI()
    pipe = Pipeline(Retry(attempts=3), name="prices")
    calls = {"n": 0}

    async def flaky(sku: str) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
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

    @app.get("/items/{item}")
    async def item(item: int) -> dict[str, int]:
        return {"item": item}

    return app


async def test_a_retried_request_reaches_the_collector_as_one_trace(
    exported: tuple[Any, Received],
) -> None:
    provider, received = exported
    response = await _get(harden(_app(), HardenSettings(**QUIET)), "/price/abc")
    assert response.status_code == 200
    found = _flush(provider, received)
    assert found, "nothing reached the receiver"
    by_name: dict[str, list[Span]] = {}
    for resource, span in found:
        assert resource["service.name"] == "t"
        by_name.setdefault(span.name, []).append(span)
    [server] = by_name["GET /price/{sku}"]
    [pipeline] = by_name["buttress.pipeline prices"]
    attempts = sorted(by_name["buttress.attempt"], key=lambda s: s.start_time_unix_nano)
    assert len(attempts) == 2
    assert server.kind == Span.SpanKind.SPAN_KIND_SERVER
    assert pipeline.kind == Span.SpanKind.SPAN_KIND_INTERNAL
    # one trace on the wire, linked server -> pipeline -> attempts
    assert {s.trace_id for s in (server, pipeline, *attempts)} == {server.trace_id}
    assert server.parent_span_id == b""
    assert pipeline.parent_span_id == server.span_id
    assert all(a.parent_span_id == pipeline.span_id for a in attempts)
    trace_id = server.trace_id.hex()
    assert response.headers["traceresponse"].split("-")[1] == trace_id
    server_attrs = _attributes(server.attributes)
    assert server_attrs["buttress.request_id"] == response.headers["x-request-id"]
    assert server_attrs["http.route"] == "/price/{sku}"
    assert server_attrs["http.response.status_code"] == 200
    assert server.status.code != ERROR
    first, second = (_attributes(a.attributes) for a in attempts)
    assert first["buttress.retry.attempt"] == 1
    assert first["error.type"] == "ConnectionError"
    assert attempts[0].status.code == ERROR
    assert second["buttress.retry.attempt"] == 2
    assert "buttress.retry.delay" in second
    assert "error.type" not in second
    assert _attributes(pipeline.attributes)["buttress.retry.attempts"] == 2
    assert [e.name for e in pipeline.events] == ["buttress.retry_scheduled"]


async def test_only_5xx_server_spans_are_errors_for_tail_sampling(
    exported: tuple[Any, Received],
) -> None:
    """What a collector's ``status_code: ERROR`` policy keys on: 5xx yes, 4xx no."""
    provider, received = exported
    app = harden(_app(), HardenSettings(**QUIET))
    with captured_logs(json=True):  # the 500's traceback as a JSON line, not rendered
        paths = ("/boom", "/nowhere", "/items/x")
        statuses = [(await _get(app, path)).status_code for path in paths]
    assert statuses == [500, 404, 422]
    servers = {
        _attributes(span.attributes)["http.response.status_code"]: span
        for _, span in _flush(provider, received)
        if span.kind == Span.SpanKind.SPAN_KIND_SERVER
    }
    assert sorted(servers) == [404, 422, 500]
    failed = servers[500]
    assert failed.status.code == ERROR
    assert _attributes(failed.attributes)["error.type"] == f"{__name__}.Boom"
    for code in (404, 422):
        assert servers[code].status.code != ERROR
        assert "error.type" not in _attributes(servers[code].attributes)
