"""`EdgeMiddleware` equals the stacked layers it replaces, and its client-address cache."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from prometheus_client import CollectorRegistry

from buttress.asgi import _logging
from buttress.asgi._context import RequestContextMiddleware, client_address, trusted_networks
from buttress.asgi._edge import EdgeMiddleware
from buttress.asgi._errors import ErrorMiddleware
from buttress.asgi._headers import CORSMiddleware, SecurityHeadersMiddleware
from buttress.asgi._logging import AccessLogMiddleware, configure_logging
from buttress.asgi._metrics import MetricsMiddleware
from buttress.asgi._types import ASGIApp, Message, Receive, Scope, Send
from buttress.errors import DeadlineExceeded, ErrorCode, RateLimited

PROXIES = ("10.0.0.0/8", "fd00::/8")
ORIGINS = ("https://shop.example.com",)
CSP = {"/docs": None, "/admin": "default-src 'none'"}


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    path = scope["path"]
    if path == "/boom":
        raise RuntimeError("secret internals")
    if path == "/rate":
        raise RateLimited("slow down", retry_after=2.5)
    if path == "/deadline":
        raise DeadlineExceeded("too slow", code=ErrorCode.DEADLINE_EXCEEDED)
    if path == "/silent":
        return
    headers = [
        (b"content-type", b"application/json"),
        (b"server", b"uvicorn"),
        (b"X-Powered-By", b"php"),
    ]
    if path == "/own":
        headers += [(b"Cache-Control", b"max-age=60"), (b"content-security-policy", b"none")]
    await send(
        {
            "type": "http.response.start",
            "status": 201 if path == "/made" else 200,
            "headers": headers,
        }
    )
    if path == "/late":
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise RuntimeError("after the start")
    state = scope.get("state", {})
    body = json.dumps({"path": path, "id": state.get("request_id")}).encode()
    await send({"type": "http.response.body", "body": body})


def stacked(registry: CollectorRegistry) -> ASGIApp:
    inner: ASGIApp = ErrorMiddleware(app)
    inner = CORSMiddleware(
        inner, allow_origins=ORIGINS, allow_credentials=True, allow_headers=("authorization",)
    )
    inner = SecurityHeadersMiddleware(inner, csp_routes=CSP)
    inner = MetricsMiddleware(inner, registry=registry)
    inner = AccessLogMiddleware(inner, trusted_proxies=PROXIES)
    return RequestContextMiddleware(inner)


def fused(registry: CollectorRegistry) -> EdgeMiddleware:
    return EdgeMiddleware(
        app,
        trusted_proxies=PROXIES,
        csp_routes=CSP,
        cors_origins=ORIGINS,
        cors_credentials=True,
        cors_headers=("authorization",),
        metrics=MetricsMiddleware(app, registry=registry),
    )


REQUESTS: list[tuple[str, str, list[tuple[bytes, bytes]], tuple[str, int] | None]] = [
    ("GET", "/ok", [], ("127.0.0.1", 5000)),
    ("HEAD", "/ok", [], ("127.0.0.1", 5000)),
    ("POST", "/made", [(b"origin", b"https://shop.example.com")], ("10.0.0.1", 1)),
    ("GET", "/ok", [(b"origin", b"https://evil.example.com")], ("10.0.0.1", 1)),
    (
        "OPTIONS",
        "/ok",
        [
            (b"origin", b"https://shop.example.com"),
            (b"access-control-request-method", b"POST"),
            (b"access-control-request-headers", b"Authorization"),
        ],
        None,
    ),
    (
        "OPTIONS",
        "/ok",
        [
            (b"origin", b"https://evil.example.com"),
            (b"access-control-request-method", b"DELETE"),
            (b"access-control-request-headers", b"x-secret"),
        ],
        None,
    ),
    ("OPTIONS", "/ok", [(b"origin", b"https://shop.example.com")], None),
    ("GET", "/ok", [(b"x-request-id", b"given-id_1.2")], None),
    ("GET", "/ok", [(b"x-request-id", b"bad id")], None),
    ("GET", "/ok", [(b"x-request-id", b"x" * 500)], None),
    (
        "GET",
        "/ok",
        [(b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")],
        None,
    ),
    ("GET", "/ok", [(b"traceparent", b"00-garbage")], None),
    (
        "GET",
        "/boom",
        [(b"origin", b"https://shop.example.com"), (b"x-request-id", b"boom-1")],
        ("10.1.2.3", 1),
    ),
    ("HEAD", "/boom", [], None),
    ("GET", "/rate", [], None),
    ("GET", "/deadline", [], None),
    ("GET", "/late", [], None),
    ("GET", "/silent", [], None),
    ("GET", "/own", [], None),
    ("GET", "/docs/index", [], None),
    ("GET", "/admin/x", [], None),
    ("GET", "/metrics", [], ("127.0.0.1", 1)),
    ("GET", "/metrics", [(b"origin", b"https://shop.example.com")], ("203.0.113.9", 1)),
    ("GET", "/health", [], None),
    ("GET", "/ok", [(b"x-forwarded-for", b"203.0.113.7, 10.0.0.2")], ("10.0.0.1", 1)),
    (
        "GET",
        "/ok",
        [(b"x-forwarded-for", b"203.0.113.7"), (b"x-forwarded-for", b"198.51.100.1")],
        ("10.0.0.1", 1),
    ),
    ("GET", "/ok", [(b"x-forwarded-for", b"garbage")], ("10.0.0.1", 1)),
]


async def call(
    asgi: ASGIApp,
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]],
    client: tuple[str, int] | None,
) -> tuple[list[Message], Exception | None]:
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": list(headers),
        "client": client or ("192.0.2.1", 4000),
        "server": ("testserver", 80),
    }
    sent: list[Message] = []
    done = False

    async def receive() -> Message:
        nonlocal done
        if done:
            return {"type": "http.disconnect"}
        done = True
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    try:
        await asgi(scope, receive, send)
    except Exception as exc:  # noqa: BLE001 - compared between the two stacks
        return sent, exc
    return sent, None


def normalized(messages: list[Message]) -> str:
    """The messages as text, with this request's random ids replaced by placeholders."""
    if messages and messages[0].get("status") == 200 and b"# HELP" in repr(messages).encode():
        # the exposition holds timings: compare its headers but the length, and no body
        messages = [
            {**m, "headers": [h for h in m["headers"] if h[0] != b"content-length"]}
            if m["type"] == "http.response.start"
            else {**m, "body": b"<exposition>"}
            for m in messages
        ]
    text = repr(messages)
    for message in messages:
        for name, value in message.get("headers", ()):
            if name == b"traceresponse":
                trace, span = value.decode().split("-")[1:3]
                text = text.replace(span, "<span>").replace(trace, "<trace>")
    return re.sub(r"[0-9a-f]{32}", "<id>", text)


def log_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    out = []
    for line in stream.getvalue().splitlines():
        entry = json.loads(line)
        for key in ("duration_ms", "timestamp", "exception"):
            entry.pop(key, None)
        for key in ("request_id", "trace_id"):
            if isinstance(entry.get(key), str) and re.fullmatch(r"[0-9a-f]{32}", entry[key]):
                entry[key] = "<id>"
        out.append(entry)
    stream.seek(0)
    stream.truncate()
    return out


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    sink, as_json = _logging._access_sink, _logging._access_json
    configure_logging(json=True, stream=stream)
    try:
        yield stream
    finally:
        structlog.reset_defaults()
        root.handlers, root.level = handlers, level
        _logging._access_sink, _logging._access_json = sink, as_json


@pytest.mark.parametrize("direct", [True, False], ids=["direct-log", "structlog"])
async def test_edge_equals_the_stacked_layers(log_stream: io.StringIO, direct: bool) -> None:
    if not direct:
        _logging._access_json = False  # the structlog path (still JSON rendered)
    old_registry, new_registry = CollectorRegistry(), CollectorRegistry()
    old, new = stacked(old_registry), fused(new_registry)
    for method, path, headers, client in REQUESTS:
        old_messages, old_exc = await call(old, method, path, headers, client)
        old_logs = log_lines(log_stream)
        new_messages, new_exc = await call(new, method, path, headers, client)
        new_logs = log_lines(log_stream)
        where = f"{method} {path} {headers}"
        assert normalized(new_messages) == normalized(old_messages), where
        assert repr(new_exc) == repr(old_exc), where
        assert new_logs == old_logs, where
        assert old_messages or path == "/silent", where
    counted = 0
    for family_old, family_new in zip(old_registry.collect(), new_registry.collect(), strict=True):
        if family_old.name not in ("buttress_http_requests", "buttress_http_requests_in_flight"):
            continue
        old_samples = sorted(
            (s.name, sorted(s.labels.items()), s.value)
            for s in family_old.samples
            if not s.name.endswith("_created")
        )
        new_samples = sorted(
            (s.name, sorted(s.labels.items()), s.value)
            for s in family_new.samples
            if not s.name.endswith("_created")
        )
        assert new_samples == old_samples
        counted += len(old_samples)
    assert counted > 10  # statuses 200, 201, 204, 403, 429, 500, 504... per method


def test_client_cache_matches_client_address() -> None:
    edge = EdgeMiddleware(app, trusted_proxies=PROXIES)
    nets = trusted_networks(PROXIES)
    cases = [
        ("203.0.113.1", None),
        ("10.0.0.1", None),
        ("10.0.0.1", b"203.0.113.7"),
        ("10.0.0.1", b"203.0.113.7, 10.9.9.9"),
        ("10.0.0.1", b"10.1.1.1, 10.2.2.2"),
        ("10.0.0.1", b"garbage, 10.2.2.2"),
        ("10.0.0.1", b"2001:db8::1"),
        ("fd00::1", b"2001:0db8:0000::0001"),
        ("203.0.113.1", b"198.51.100.1"),
        ("not-an-ip", b"198.51.100.1"),
    ]
    for _ in range(2):  # the second round answers from the cache
        for peer, xff in cases:
            headers = [] if xff is None else [(b"x-forwarded-for", xff)]
            scope = {"type": "http", "client": (peer, 1), "headers": headers}
            assert edge.client(scope, xff) == client_address(scope, nets), (peer, xff)
    assert edge.client({"client": None, "headers": []}, None) is None
    cached = len(edge._clients)
    assert 0 < cached <= len(cases)
    for i in range(5000):  # bounded: attacker-chosen X-Forwarded-For cannot grow it forever
        edge.client({"client": ("10.0.0.1", 1)}, f"198.51.{i // 256}.{i % 256}".encode())
    assert len(edge._clients) <= 4096


def test_client_without_trusted_proxies_is_the_peer() -> None:
    edge = EdgeMiddleware(app)
    scope = {"client": ("10.0.0.1", 1), "headers": [(b"x-forwarded-for", b"203.0.113.7")]}
    assert edge.client(scope, b"203.0.113.7") == "10.0.0.1"
    assert not edge._clients


async def test_non_http_scopes_pass_through() -> None:
    seen: list[str] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    edge = EdgeMiddleware(inner)

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        pass

    await edge({"type": "lifespan"}, receive, send)
    await edge({"type": "websocket", "path": "/ws", "headers": []}, receive, send)
    assert seen == ["lifespan", "websocket"]
