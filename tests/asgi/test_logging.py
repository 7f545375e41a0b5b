"""Structured logs: redaction everywhere, JSON lines, one access-log line per request."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import structlog
from fastapi import FastAPI

from buttress.asgi import HardenSettings, configure_logging, harden, redact


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging(json=True, stream=stream)
    try:
        yield stream
    finally:
        structlog.reset_defaults()
        root.handlers, root.level = handlers, level


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_redact_walks_everything() -> None:
    event = {
        "user": "ann",
        "password": "hunter2",
        "nested": {"api_key": "k", "items": [{"client_secret": "s"}, "Bearer abc.def"]},
        "headers": [
            ("Authorization", "Basic dXNlcjpwYXNz"),
            (b"cookie", b"sid=1"),
            ("accept", "*/*"),
        ],
        "Set-Cookie": "sid=2",
        "note": "token is Bearer eyJhbGciOi.x.y",
    }
    clean = redact(event)
    text = json.dumps(clean, default=str)
    for secret in ("hunter2", "dXNlcjpwYXNz", "sid=1", "sid=2", "eyJhbGciOi", '"k"', '"s"'):
        assert secret not in text, secret
    assert clean["user"] == "ann"
    assert clean["headers"][2] == ("accept", "*/*")
    assert event["password"] == "hunter2"  # the original is untouched


def test_json_lines_are_redacted(log_stream: io.StringIO) -> None:
    structlog.get_logger("t").info("login", user="ann", password="hunter2", card_token="tok_1")
    logging.getLogger("stdlib").warning("via stdlib %s", "ok")
    first, second = lines(log_stream)
    assert first["password"] == "[redacted]"
    assert first["card_token"] == "[redacted]"
    assert first["level"] == "info"
    assert first["timestamp"].endswith("Z")
    assert second["event"] == "via stdlib ok"


async def test_one_access_line_per_request_with_context(log_stream: io.StringIO) -> None:
    app = FastAPI()

    @app.get("/orders/{order_id}")
    async def get_order(order_id: int) -> dict[str, int]:
        structlog.get_logger("app").info("loading", order_id=order_id)
        return {"id": order_id}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("kaput")

    hardened = harden(app, HardenSettings(configure_logging=False, trusted_proxies=("10.0.0.0/8",)))
    transport = httpx.ASGITransport(
        app=hardened, raise_app_exceptions=False, client=("10.1.1.1", 9)
    )
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        await client.get(
            "/orders/7",
            headers={
                "x-request-id": "r-1",
                "authorization": "Bearer supersecret",
                "x-forwarded-for": "203.0.113.5",
            },
        )
        await client.get("/boom", headers={"x-request-id": "r-2"})
        await client.get("/health/live")
    records = lines(log_stream)
    access = [r for r in records if r["event"] == "request"]
    assert len(access) == 2  # health is not logged
    first = access[0]
    assert first["route"] == "/orders/{order_id}"
    assert first["path"] == "/orders/7"
    assert first["status"] == 200
    assert first["request_id"] == "r-1"
    assert len(first["trace_id"]) == 32
    assert first["client"] == "203.0.113.5"
    assert first["bytes"] > 0
    assert first["duration_ms"] >= 0
    app_line = next(r for r in records if r["event"] == "loading")
    assert app_line["request_id"] == "r-1"  # merged from the request context
    assert access[1]["status"] == 500
    error = next(r for r in records if r["event"] == "unhandled_exception")
    assert error["request_id"] == "r-2"
    assert "kaput" in error["exception"]
    assert "supersecret" not in log_stream.getvalue()


@pytest.mark.parametrize(
    ("path", "client", "principal"),
    [
        ("/plain", "127.0.0.1", None),
        ("/plain", None, "ann"),
        ('/quo"te\\back', "10.0.0.1", 'bob "the" \\ admin'),
        ("/ünïcode/\u2028", "::1", "zoë"),
        ("/ctrl\x01\n", "unix:/tmp/s", None),
    ],
)
def test_access_line_is_json_whatever_the_fields(
    log_stream: io.StringIO, path: str, client: str | None, principal: str | None
) -> None:
    from buttress.asgi._context import _REQUEST_ID, _TRACE, TraceContext
    from buttress.asgi._logging import log_access

    scope = {"method": "GET", "path": path, "root_path": ""}
    id_token = _REQUEST_ID.set("r-1")
    trace_token = _TRACE.set(TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f0", None, 1))
    try:
        log_access(None, True, scope, 201, 7, 0.0, client, principal)
    finally:
        _TRACE.reset(trace_token)
        _REQUEST_ID.reset(id_token)
    (line,) = lines(log_stream)
    assert line["path"] == path
    assert line["client"] == client
    assert line["principal"] == principal
    assert line["request_id"] == "r-1"
    assert line["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert (line["status"], line["bytes"], line["route"]) == (201, 7, "<unmatched>")
    assert line["timestamp"].endswith("Z")
