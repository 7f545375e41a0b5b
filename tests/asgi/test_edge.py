"""`EdgeMiddleware` equals the stacked layers it replaces, and its client-address cache."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from prometheus_client import CollectorRegistry

from buttress.asgi import HardenSettings, _logging, harden
from buttress.asgi._context import RequestContextMiddleware, client_address, trusted_networks
from buttress.asgi._edge import EdgeMiddleware
from buttress.asgi._errors import ErrorMiddleware
from buttress.asgi._headers import SECURITY_PROFILES, CORSMiddleware, SecurityHeadersMiddleware
from buttress.asgi._logging import AccessLogMiddleware, configure_logging
from buttress.asgi._metrics import MetricsMiddleware
from buttress.asgi._types import ASGIApp, Message, Receive, Scope, Send
from buttress.errors import DeadlineExceeded, ErrorCode, RateLimited
from buttress.resilience._deadline import _DEADLINE

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


def stacked(registry: CollectorRegistry, profile: str = "api") -> ASGIApp:
    inner: ASGIApp = ErrorMiddleware(app)
    inner = CORSMiddleware(
        inner, allow_origins=ORIGINS, allow_credentials=True, allow_headers=("authorization",)
    )
    inner = SecurityHeadersMiddleware(inner, headers=SECURITY_PROFILES[profile], csp_routes=CSP)
    inner = MetricsMiddleware(inner, registry=registry)
    inner = AccessLogMiddleware(inner, trusted_proxies=PROXIES)
    return RequestContextMiddleware(inner)


def fused(registry: CollectorRegistry, profile: str = "api") -> EdgeMiddleware:
    return EdgeMiddleware(
        app,
        security_headers=profile,  # type: ignore[arg-type]
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
    # rewritten by the server (port 0) from a header: garbage never reaches the log
    ("GET", "/ok", [(b"x-forwarded-for", b"garbage")], ("garbage", 0)),
    ("GET", "/ok", [(b"forwarded", b"for=203.0.113.9")], ("203.0.113.9", 0)),
    ("GET", "/ok", [(b"x-forwarded-for", b"x" * 3000)], ("x" * 3000, 0)),
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


@pytest.mark.parametrize("profile", ["api", "full"])
@pytest.mark.parametrize("direct", [True, False], ids=["direct-log", "structlog"])
async def test_edge_equals_the_stacked_layers(
    log_stream: io.StringIO, direct: bool, profile: str
) -> None:
    if not direct:
        _logging._access_json = False  # the structlog path (still JSON rendered)
    old_registry, new_registry = CollectorRegistry(), CollectorRegistry()
    old, new = stacked(old_registry, profile), fused(new_registry, profile)
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
    for i in range(4000):  # bounded: attacker-chosen X-Forwarded-For cannot grow it forever
        xff = f"198.51.{i // 256}.{i % 256}".encode()
        assert edge.client({"client": ("10.0.0.1", 1)}, xff) == xff.decode()
    assert len(edge._clients) <= 1024
    # a full table still answers right (computed, not cached)
    assert edge.client({"client": ("10.0.0.1", 1)}, b"203.0.113.200") == "203.0.113.200"


def test_long_forwarding_values_are_never_cached() -> None:
    edge = EdgeMiddleware(app, trusted_proxies=PROXIES)
    long = b"203.0.113.9, " + b"10.0.0.2, " * 300
    assert edge.client({"client": ("10.0.0.1", 1)}, long) == "203.0.113.9"
    assert not edge._clients


def test_cors_cache_is_bounded() -> None:
    edge = EdgeMiddleware(app, cors_origin_regex=r"https://.*\.example\.com")
    cors = edge.cors
    assert cors is not None
    for i in range(4000):  # every distinct Origin a client sends
        origin = f"https://h{i}.example.com".encode()
        assert edge._cors_headers(cors, origin)[0] == (b"access-control-allow-origin", origin)
    assert len(edge._cors) <= 1024
    long = b"https://" + b"a" * 3000 + b".example.com"
    before = len(edge._cors)
    edge._cors.clear()
    assert edge._cors_headers(cors, long)[0][1] == long
    assert edge._cors_headers(cors, b"https://evil.test") == []
    assert list(edge._cors) == [b"https://evil.test"]  # the long one was not kept
    assert before <= 1024


def test_client_without_trusted_proxies_is_the_peer() -> None:
    edge = EdgeMiddleware(app)
    scope = {"client": ("10.0.0.1", 1), "headers": [(b"x-forwarded-for", b"203.0.113.7")]}
    assert edge.client(scope, b"203.0.113.7") == "10.0.0.1"
    assert not edge._clients


def test_client_rewritten_by_the_server_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    from buttress.asgi import _context  # noqa: PLC0415

    monkeypatch.setattr(_context, "_rewrite_reported", True)  # the error: test_client_address
    edge = EdgeMiddleware(app)
    for client, xff, forwarded in [
        (("203.0.113.7", 0), b"203.0.113.7", False),
        (("203.0.113.7", 0), None, True),  # Forwarded, X-Real-IP...
        (("203.0.113.7", 4444), b"203.0.113.7:4444", False),
        (("2001:db8::1", 80), b"[2001:db8::1]:80", False),
    ]:
        headers = [(b"x-forwarded-for", xff)] if xff else [(b"x-real-ip", b"203.0.113.7")]
        scope = {"client": client, "headers": headers}
        assert edge.client(scope, xff, forwarded) == "unknown"
        assert client_address(scope) == "unknown"


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


# --------------------------------------------------------------------------- fused inner layers
# harden's inner layers (shutdown, health, shedding, body limit, deadline) done in the edge
# layer's frame must answer exactly as the layers themselves do.


async def slow_app(scope: Scope, receive: Receive, send: Send) -> None:
    path = scope["path"]
    if path == "/boom":
        raise RuntimeError("secret internals")
    if path == "/rate":
        raise RateLimited("slow down", retry_after=2.5)
    if path == "/slow":
        await asyncio.sleep(5)
    size = 0
    if path == "/upload":
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
    await send({"type": "http.response.start", "status": 200, "headers": JSON})
    if path == "/late":
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        await asyncio.sleep(5)
    await send({"type": "http.response.body", "body": json.dumps({"size": size}).encode()})


JSON = [(b"content-type", b"application/json"), (b"server", b"uvicorn")]
CHUNKED = [(b"transfer-encoding", b"chunked")]

# (method, path, headers, body chunks, HTTP version)
LAYER_REQUESTS: list[tuple[str, str, list[tuple[bytes, bytes]], list[bytes], str]] = [
    ("GET", "/ok", [], [b""], "1.1"),
    ("HEAD", "/ok", [(b"origin", b"https://shop.example.com")], [b""], "1.1"),
    ("GET", "/boom", [], [b""], "1.1"),
    ("GET", "/rate", [], [b""], "1.1"),
    ("GET", "/slow", [], [b""], "1.1"),
    ("GET", "/slow", [(b"x-request-timeout", b"0.01")], [b""], "1.1"),
    (
        "GET",
        "/slow",
        [(b"x-request-timeout", b"nan"), (b"x-request-timeout", b"0.01")],
        [b""],
        "1.1",
    ),
    ("GET", "/late", [], [b""], "1.1"),
    ("POST", "/upload", [(b"content-length", b"10")], [b"x" * 10], "1.1"),
    ("POST", "/upload", [(b"content-length", b"101")], [b"x" * 101], "1.1"),
    ("POST", "/upload", [(b"content-length", b"1_0")], [b"x" * 10], "1.1"),
    ("POST", "/upload", [(b"content-length", b"ten")], [b"x" * 10], "1.1"),
    ("POST", "/upload", CHUNKED, [b"x" * 60, b"y" * 30], "1.1"),
    ("POST", "/upload", CHUNKED, [b"x" * 60, b"y" * 60], "1.1"),
    ("POST", "/upload", [], [b"x" * 60, b"y" * 60], "2"),
    ("GET", "/health/live", [], [b""], "1.1"),
    ("GET", "/health/ready", [], [b""], "1.1"),
    ("POST", "/health", [], [b""], "1.1"),
    ("GET", "/metrics", [], [b""], "1.1"),
    (
        "OPTIONS",
        "/upload",
        [(b"origin", b"https://shop.example.com"), (b"access-control-request-method", b"POST")],
        [b""],
        "1.1",
    ),
]


def hardened(fuse: bool, registry: CollectorRegistry) -> Any:
    settings = HardenSettings(
        configure_logging=False,
        request_timeout=0.05,
        max_body_bytes=100,
        cors_origins=ORIGINS,
        cors_credentials=True,
        shed_max_in_flight=50,
    )
    app = harden(slow_app, settings, registry=registry)
    if not fuse:
        app._fuse(False)  # every request through the layers themselves
    return app


async def call_layers(
    asgi: ASGIApp,
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]],
    chunks: list[bytes],
    version: str,
) -> tuple[list[Message], Exception | None]:
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": version,
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": list(headers),
        "client": ("127.0.0.1", 4000),
        "server": ("testserver", 80),
    }
    pending = list(chunks)
    sent: list[Message] = []

    async def receive() -> Message:
        if not pending:
            await asyncio.sleep(10)
            return {"type": "http.disconnect"}
        body = pending.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    async def send(message: Message) -> None:
        sent.append(message)

    try:
        await asgi(scope, receive, send)
    except Exception as exc:  # noqa: BLE001 - compared between the two stacks
        return sent, exc
    return sent, None


def untimed(messages: list[Message]) -> str:
    """`normalized`, and the elapsed time a deadline's 504 reports (with its length)."""
    text = re.sub(r"after [0-9.e-]+ s", "after <t> s", normalized(messages))
    if "after <t> s" in text:
        text = re.sub(r"\(b'content-length', b'\d+'\)", "<length>", text)
    return text


def untimed_logs(stream: io.StringIO) -> list[dict[str, Any]]:
    """`log_lines`, and the elapsed time in a deadline's message."""
    lines = log_lines(stream)
    for entry in lines:
        if isinstance(entry.get("error"), str):
            entry["error"] = re.sub(r"after [0-9.e-]+ s", "after <t> s", entry["error"])
        if entry.get("status") == 504:
            entry.pop("bytes", None)  # the body says how long it took
    return lines


def samples(registry: CollectorRegistry) -> list[Any]:
    out = []
    for family in registry.collect():
        if family.name not in (
            "buttress_http_requests",
            "buttress_http_requests_in_flight",
            "buttress_http_requests_shed",
        ):
            continue
        out += sorted(
            (s.name, sorted(s.labels.items()), s.value)
            for s in family.samples
            if not s.name.endswith(("_created", "_sum", "_bucket"))
        )
    return out


@pytest.mark.parametrize("draining", [False, True], ids=["serving", "draining"])
async def test_fused_inner_layers_equal_the_layers(log_stream: io.StringIO, draining: bool) -> None:
    old_registry, new_registry = CollectorRegistry(), CollectorRegistry()
    old, new = hardened(False, old_registry), hardened(True, new_registry)
    assert new._shutdown is new.parts.shutdown
    assert new._deadline is not None
    assert old._shutdown is None
    assert old._inner is old.app
    if draining:
        for stack in (old, new):
            stack.parts.shutdown._begin_draining()
    for method, path, headers, chunks, version in LAYER_REQUESTS:
        old_messages, old_exc = await call_layers(old, method, path, headers, chunks, version)
        old_logs = untimed_logs(log_stream)
        new_messages, new_exc = await call_layers(new, method, path, headers, chunks, version)
        new_logs = untimed_logs(log_stream)
        where = f"{method} {path} {headers} {version}"
        assert untimed(new_messages) == untimed(old_messages), where
        assert repr(new_exc) == repr(old_exc), where
        assert new_logs == old_logs, where
        for stack in (old, new):
            assert stack.parts.shutdown.in_flight == 0, where
            assert stack.parts.shedding.limiter.in_flight == 0, where
    assert samples(new_registry) == samples(old_registry)
    statuses = {dict(s[1])["status"] for s in samples(new_registry) if s[0].endswith("s_total")}
    assert {"200", "400", "413", "429", "500", "504"} <= statuses


@pytest.mark.parametrize("outer", [0.01, 1.0, -1.0], ids=["shorter", "longer", "passed"])
async def test_fused_deadline_takes_the_deadline_in_force_like_the_layer(
    log_stream: io.StringIO, outer: float
) -> None:
    old, new = hardened(False, CollectorRegistry()), hardened(True, CollectorRegistry())
    answers = []
    for stack in (old, new):
        token = _DEADLINE.set(time.monotonic() + outer)  # a server or test harness's own
        try:
            messages, exc = await call_layers(stack, "GET", "/slow", [], [b""], "1.1")
        finally:
            _DEADLINE.reset(token)
        answers.append((untimed(messages), repr(exc)))
        assert _DEADLINE.get() is None
    assert answers[1] == answers[0]
    assert "504" in answers[0][0]


async def test_fused_shedding_samples_and_sheds_like_the_layer() -> None:
    gate = asyncio.Event()

    async def held(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/wait":
            await gate.wait()
        await slow_app(scope, receive, send)

    app = harden(held, HardenSettings(configure_logging=False, shed_max_in_flight=1))
    limiter = app.parts.shedding.limiter
    first = asyncio.ensure_future(call_layers(app, "GET", "/wait", [], [b""], "1.1"))
    await asyncio.sleep(0.01)
    assert limiter.in_flight == 1
    shed, _ = await call_layers(app, "GET", "/ok", [], [b""], "1.1")
    assert shed[0]["status"] == 503
    assert (b"retry-after", b"1") in shed[0]["headers"]
    gate.set()
    messages, _ = await first
    assert messages[0]["status"] == 200
    assert limiter.in_flight == 0
    window = limiter._w_count  # the admitted request was sampled (a window of its own)
    timed_out, _ = await call_layers(
        app, "GET", "/slow", [(b"x-request-timeout", b"0.01")], [b""], "1.1"
    )
    assert timed_out[0]["status"] == 504
    assert limiter._w_count == window + 1
    assert limiter._w_dropped
