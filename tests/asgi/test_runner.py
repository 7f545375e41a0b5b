"""The runner: `harden()` composed in one frame equals the same stages stacked as middlewares.

The property tests drive generated requests (methods, paths with the health and metrics
endpoints, request ids, trace context, CORS and preflights, forwarding headers, declared
and streamed bodies over and under the limit, client deadlines, HTTP/1.1 and 2, draining)
at an app whose behaviour the path picks (answers, raises before or after the response
starts, runs past the deadline, streams, reads the body, answers nothing), through
`harden()` and through the equivalent stack of single-stage middlewares built by hand.
Status, headers and body (minus per-request random values), the exception that escapes,
the access log and the metrics must be the same.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from buttress.asgi import HardenSettings, harden
from buttress.asgi._context import found_client
from buttress.asgi._runner import Hooks, Runner, Stage
from buttress.asgi._types import ASGIApp, Message, Receive, Scope, Send
from buttress.asgi.context import client_address, trusted_networks
from buttress.asgi.metrics import HttpMetrics
from buttress.asgi.middleware import (
    AccessLogMiddleware,
    BodyLimitMiddleware,
    CORSMiddleware,
    DeadlineMiddleware,
    ErrorMiddleware,
    GracefulShutdown,
    HealthMiddleware,
    IdempotencyMiddleware,
    LoadSheddingMiddleware,
    MetricsMiddleware,
    RateLimitMiddleware,
    RequestContextMiddleware,
    SecurityHeadersMiddleware,
)
from buttress.asgi.security import API_HEADERS
from buttress.errors import ConfigurationError, DeadlineExceeded, ErrorCode, RateLimited
from buttress.resilience._deadline import _DEADLINE
from buttress.stores import MemoryStore
from tests.conftest import captured_logs

PROXIES = ("10.0.0.0/8", "fd00::/8")
ORIGINS = ("https://shop.example.com",)
CSP = {"/docs": None, "/admin": "default-src 'none'"}
JSON = [(b"content-type", b"application/json"), (b"server", b"uvicorn"), (b"X-Powered-By", b"x")]
TRACEPARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


# --------------------------------------------------------------------------- the app
async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """What the handler does is the path's choice."""
    path = scope["path"]
    if path == "/boom":
        raise RuntimeError("secret internals")
    if path == "/rate":
        raise RateLimited("slow down", retry_after=2.5)
    if path == "/deadline":
        raise DeadlineExceeded("too slow", code=ErrorCode.DEADLINE_EXCEEDED)
    if path == "/silent":
        return
    if path == "/slow":
        await asyncio.sleep(2)
    size = 0
    if path in ("/upload", "/orders", "/catch"):
        try:
            while True:
                message = await receive()
                size += len(message.get("body", b""))
                if not message.get("more_body"):
                    break
        except Exception:
            if path != "/catch":
                raise
            # a framework turning a read error into its own answer (the body limit drops it)
            await send({"type": "http.response.start", "status": 400, "headers": JSON})
            await send({"type": "http.response.body", "body": b"unreadable"})
            return
    headers = list(JSON)
    if path == "/own":
        headers += [(b"Cache-Control", b"max-age=60"), (b"content-security-policy", b"none")]
    await send({"type": "http.response.start", "status": 201 if size else 200, "headers": headers})
    if path in ("/late", "/slow-late", "/stream"):
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        if path == "/late":
            raise RuntimeError("after the start")
        if path == "/slow-late":
            await asyncio.sleep(2)
        await send({"type": "http.response.body", "body": b"more", "more_body": True})
    state = scope.get("state", {})
    body = json.dumps({"path": path, "size": size, "id": state.get("request_id")}).encode()
    await send({"type": "http.response.body", "body": body})


SETTINGS: dict[str, Any] = {
    "configure_logging": False,
    "request_timeout": 0.05,
    "max_body_bytes": 100,
    "trusted_proxies": PROXIES,
    "csp_routes": CSP,
    "cors_origins": ORIGINS,
    "cors_credentials": True,
    "cors_headers": ("authorization",),
    "shed_max_in_flight": 50,
    "rate_limits": ("burst=4/minute",),
    "idempotency_routes": {"POST /orders": "required"},
}


def composed(registry: CollectorRegistry) -> tuple[Any, HttpMetrics, GracefulShutdown]:
    hardened = harden(app, HardenSettings(**SETTINGS), registry=registry)
    parts = hardened.parts
    assert parts.metrics is not None
    assert parts.shutdown is not None
    return hardened, parts.metrics, parts.shutdown


def stacked(registry: CollectorRegistry) -> tuple[ASGIApp, HttpMetrics, GracefulShutdown]:
    """The same features as separate middlewares, stacked by hand in harden's order."""
    s = HardenSettings(**SETTINGS)
    metrics = HttpMetrics(registry=registry)
    store = MemoryStore()
    rule = s.rate_limit_rule()
    assert rule is not None
    inner: ASGIApp = IdempotencyMiddleware(
        app, store=store, routes=s.idempotency_routes, max_request_body=100
    )
    inner = DeadlineMiddleware(inner, timeout=0.05)
    inner = BodyLimitMiddleware(inner, max_bytes=100)
    inner = LoadSheddingMiddleware(inner, max_in_flight=50, on_shed=metrics.shed)
    inner = RateLimitMiddleware(
        inner, [rule], store=store, trusted_proxies=PROXIES, on_limited=metrics.limited
    )
    health = HealthMiddleware(inner)
    inner = ErrorMiddleware(health)
    shutdown = GracefulShutdown(inner)
    shutdown.on_drain.append(health.mark_draining)
    inner = CORSMiddleware(
        shutdown, allow_origins=ORIGINS, allow_credentials=True, allow_headers=("authorization",)
    )
    inner = SecurityHeadersMiddleware(inner, headers=API_HEADERS, csp_routes=CSP)
    inner = MetricsMiddleware(inner, metrics=metrics)
    inner = AccessLogMiddleware(inner, trusted_proxies=PROXIES)
    return RequestContextMiddleware(inner), metrics, shutdown


# --------------------------------------------------------------------------- driving
Request = tuple[str, str, list[tuple[bytes, bytes]], list[bytes], str, tuple[str, int]]


async def call(asgi: ASGIApp, request: Request) -> tuple[list[Message], str | None]:
    method, path, headers, chunks, version, client = request
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
        "client": client,
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
    except Exception as exc:  # noqa: BLE001 - compared between the two
        return sent, repr(exc)
    return sent, None


def normalized(messages: list[Message]) -> str:
    """The messages as text: this request's random ids and the timings replaced."""
    if any(
        name == b"content-type" and value.startswith((b"text/plain", b"application/openmetrics"))
        for m in messages
        for name, value in m.get("headers", ())
    ):
        # the exposition holds timings: its headers but the length, and no body
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
    text = re.sub(r"[0-9a-f]{32}", "<id>", text)
    text = re.sub(r"\d{4}-\d\d-\d\dT[0-9:.]+Z", "<time>", text)  # health check times
    text = re.sub(r"after [0-9.e-]+ s", "after <t> s", text)
    if "after <t> s" in text:  # a deadline's 504 says how long it took, in its length too
        text = re.sub(r"\(b'content-length', b'\d+'\)", "<length>", text)
    return text


def log_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    out = []
    for line in stream.getvalue().splitlines():
        entry = json.loads(line)
        for key in ("duration_ms", "timestamp", "exception"):
            entry.pop(key, None)
        for key in ("request_id", "trace_id"):
            if isinstance(entry.get(key), str) and re.fullmatch(r"[0-9a-f]{32}", entry[key]):
                entry[key] = "<id>"
        if isinstance(entry.get("error"), str):
            entry["error"] = re.sub(r"after [0-9.e-]+ s", "after <t> s", entry["error"])
        if entry.get("status") == 504:
            entry.pop("bytes", None)  # the body says how long it took
        out.append(entry)
    stream.seek(0)
    stream.truncate()
    return out


def samples(registry: CollectorRegistry) -> list[Any]:
    out = []
    for family in registry.collect():
        if family.name not in (
            "buttress_http_requests",
            "buttress_http_requests_in_flight",
            "buttress_http_requests_shed",
            "buttress_http_requests_limited",
        ):
            continue
        out += sorted(
            (s.name, sorted(s.labels.items()), s.value)
            for s in family.samples
            if not s.name.endswith(("_created", "_sum", "_bucket"))
        )
    return out


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    with captured_logs(json=True) as stream:
        yield stream


# --------------------------------------------------------------------------- generated requests
PATHS = [
    "/ok",
    "/own",
    "/boom",
    "/rate",
    "/deadline",
    "/silent",
    "/slow",
    "/late",
    "/slow-late",
    "/stream",
    "/upload",
    "/catch",
    "/orders",
    "/docs/index",
    "/admin/x",
    "/health",
    "/health/live",
    "/health/ready",
    "/metrics",
]
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"]
ORIGIN = st.sampled_from([b"https://shop.example.com", b"https://evil.example.com"])
CLIENTS = st.sampled_from(
    [("127.0.0.1", 5000), ("10.0.0.1", 1), ("192.0.2.7", 4000), ("203.0.113.9", 0)]
)
SINGLE_HEADERS = st.one_of(
    ORIGIN.map(lambda o: (b"origin", o)),
    st.sampled_from([b"POST", b"DELETE"]).map(lambda m: (b"access-control-request-method", m)),
    st.sampled_from([b"Authorization", b"x-secret"]).map(
        lambda h: (b"access-control-request-headers", h)
    ),
    st.sampled_from([b"given-id_1.2", b"bad id", b"x" * 200]).map(lambda v: (b"x-request-id", v)),
    st.sampled_from([TRACEPARENT, b"00-garbage"]).map(lambda v: (b"traceparent", v)),
    st.sampled_from([b"203.0.113.7, 10.0.0.2", b"garbage", b"198.51.100.1"]).map(
        lambda v: (b"x-forwarded-for", v)
    ),
    st.just((b"forwarded", b"for=203.0.113.9")),
    st.just((b"x-real-ip", b"203.0.113.9")),
    st.sampled_from([b"0.01", b"nan", b"-1", b"60"]).map(lambda v: (b"x-request-timeout", v)),
    st.sampled_from([b"key-1", b"key-2", b"bad key!"]).map(lambda v: (b"idempotency-key", v)),
    st.just((b"authorization", b"Bearer abc")),
)


@st.composite
def requests(draw: st.DrawFn) -> Request:
    method = draw(st.sampled_from(METHODS))
    path = draw(st.sampled_from(PATHS))
    headers = draw(st.lists(SINGLE_HEADERS, max_size=4))
    chunks = draw(st.lists(st.integers(0, 80).map(lambda n: b"x" * n), min_size=1, max_size=3))
    version = draw(st.sampled_from(["1.1", "1.1", "2"]))
    framing = draw(st.sampled_from(["length", "length", "chunked", "over", "malformed", "none"]))
    size = sum(len(c) for c in chunks)
    if framing == "length":
        headers.append((b"content-length", str(size).encode()))
    elif framing == "chunked":
        headers.append((b"transfer-encoding", b"chunked"))
    elif framing == "over":
        headers.append((b"content-length", b"101"))
    elif framing == "malformed":
        headers.append((b"content-length", b"ten"))
    order = draw(st.permutations(range(len(headers))))
    return method, path, [headers[i] for i in order], chunks, version, draw(CLIENTS)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sequence=st.lists(requests(), min_size=1, max_size=5), draining=st.booleans())
def test_harden_equals_the_stack_of_single_stage_middlewares(
    log_stream: io.StringIO, sequence: list[Request], draining: bool
) -> None:
    async def run() -> None:
        new_registry, old_registry = CollectorRegistry(), CollectorRegistry()
        new, new_metrics, new_shutdown = composed(new_registry)
        old, old_metrics, old_shutdown = stacked(old_registry)
        try:
            if draining:
                for shutdown in (new_shutdown, old_shutdown):
                    shutdown._begin_draining()
            for request in sequence:
                old_messages, old_exc = await call(old, request)
                old_logs = log_lines(log_stream)
                new_messages, new_exc = await call(new, request)
                new_logs = log_lines(log_stream)
                where = repr(request)
                assert normalized(new_messages) == normalized(old_messages), where
                assert new_exc == old_exc, where
                event(f"status {old_messages[0]['status'] if old_messages else None}")
                assert new_logs == old_logs, where
                for shutdown in (new_shutdown, old_shutdown):
                    assert shutdown.in_flight == 0, where
            assert samples(new_registry) == samples(old_registry)
        finally:
            new_metrics.close()
            old_metrics.close()

    asyncio.run(run())


# --------------------------------------------------------------------------- the composition
def test_harden_composes_the_stages_in_the_documented_order() -> None:
    hardened = harden(app, HardenSettings(**SETTINGS), registry=CollectorRegistry())
    try:
        assert [type(stage).__name__ for stage in hardened.stages] == [
            "RequestContextMiddleware",
            "AccessLogMiddleware",
            "MetricsMiddleware",
            "SecurityHeadersMiddleware",
            "CORSMiddleware",
            "GracefulShutdown",
            "ErrorMiddleware",
            "HealthMiddleware",
            "TopKeysView",
            "RateLimitMiddleware",
            "LoadSheddingMiddleware",
            "BodyLimitMiddleware",
            "DeadlineMiddleware",
        ]
        # each stage wraps the next: stages[0] is the same features stacked
        for outer, inner in zip(hardened.stages, hardened.stages[1:], strict=False):
            assert outer.app is inner
        assert hardened.stages[-1].app is hardened.app is hardened.parts.idempotency
        # per hook, only the stages that do something then
        arriving = {type(hardened.stages[i]).__name__ for i, _ in hardened._arrive}
        assert "SecurityHeadersMiddleware" not in arriving
        assert "ErrorMiddleware" not in arriving
        assert "DeadlineMiddleware" not in arriving  # it owns "around"
    finally:
        assert hardened.parts.metrics is not None
        hardened.parts.metrics.close()


class _Around(Stage):
    def __init__(self, inner: ASGIApp, field: str = "x") -> None:
        self.app = inner
        self.field = field

    def stage_hooks(self) -> Hooks:
        return Hooks(around=self.around, fields=(self.field,))

    async def around(self, ex: Any, inner: ASGIApp) -> None:
        await inner(ex.scope, ex.receive, ex.send)


def test_around_belongs_to_one_stage_the_innermost() -> None:
    with pytest.raises(ConfigurationError, match="innermost"):
        Runner([_Around(app), ErrorMiddleware(app)], app)
    with pytest.raises(ConfigurationError, match="innermost"):
        Runner([_Around(app, "a"), _Around(app, "b")], app)
    Runner([ErrorMiddleware(app), _Around(app)], app)


class _Keeps(Stage):
    def __init__(self, field: str) -> None:
        self.app = app
        self.field = field

    def stage_hooks(self) -> Hooks:
        return Hooks(fields=(self.field,))


def test_two_stages_keeping_the_same_field_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="keeps 'x'"):
        Runner([RequestContextMiddleware(app), _Keeps("x"), _Keeps("x")], app)
    with pytest.raises(ConfigurationError, match="keeps 'status'"):
        Runner([_Keeps("status")], app)


async def test_non_http_scopes_pass_through() -> None:
    seen: list[str] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    hardened = harden(inner, HardenSettings(configure_logging=False, metrics=False))

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        pass

    await hardened({"type": "websocket", "path": "/ws", "headers": []}, receive, send)
    await hardened({"type": "custom"}, receive, send)
    assert seen == ["websocket", "custom"]


async def test_a_finish_hook_that_fails_does_not_stop_the_outer_ones() -> None:
    class Broken(Stage):
        def __init__(self) -> None:
            self.app = app

        def stage_hooks(self) -> Hooks:
            return Hooks(finish=self.finish)

        def finish(self, ex: Any) -> None:
            raise ValueError("broken finish")

    context = RequestContextMiddleware(app)
    runner = Runner([context, Broken()], app)
    messages, exc = await call(runner, ("GET", "/ok", [], [b""], "1.1", ("127.0.0.1", 1)))
    assert messages[0]["status"] == 200
    assert exc == "ValueError('broken finish')"
    from buttress.asgi import current_request_id

    assert current_request_id() is None  # the context stage still unbound it


# --------------------------------------------------------------------------- specific paths
@pytest.mark.parametrize("outer", [0.01, 1.0, -1.0], ids=["shorter", "longer", "passed"])
async def test_the_deadline_in_force_bounds_the_request_like_the_stack(
    log_stream: io.StringIO, outer: float
) -> None:
    answers = []
    for build in (composed, stacked):
        asgi, metrics, _ = build(CollectorRegistry())
        token = _DEADLINE.set(time.monotonic() + outer)  # a server or test harness's own
        try:
            messages, exc = await call(asgi, ("GET", "/slow", [], [b""], "1.1", ("127.0.0.1", 1)))
        finally:
            _DEADLINE.reset(token)
            metrics.close()
        answers.append((normalized(messages), exc))
        assert _DEADLINE.get() is None
    assert answers[1] == answers[0]
    assert "504" in answers[0][0]


async def test_shedding_samples_and_sheds_through_harden() -> None:
    gate = asyncio.Event()

    async def held(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/wait":
            await gate.wait()
        await app(scope, receive, send)

    hardened = harden(
        held,
        HardenSettings(configure_logging=False, metrics=False, shed_max_in_flight=1),
    )
    assert hardened.parts.shedding is not None
    limiter = hardened.parts.shedding.limiter
    assert limiter is not None
    client = ("127.0.0.1", 1)
    first = asyncio.ensure_future(call(hardened, ("GET", "/wait", [], [b""], "1.1", client)))
    await asyncio.sleep(0.01)
    assert limiter.in_flight == 1
    shed, _ = await call(hardened, ("GET", "/ok", [], [b""], "1.1", client))
    assert shed[0]["status"] == 503
    assert (b"retry-after", b"1") in shed[0]["headers"]
    assert any(name == b"x-request-id" for name, _ in shed[0]["headers"])
    gate.set()
    messages, _ = await first
    assert messages[0]["status"] == 200
    assert limiter.in_flight == 0
    window = limiter._w_count  # the admitted request was sampled (a window of its own)
    timed_out, _ = await call(
        hardened, ("GET", "/slow", [(b"x-request-timeout", b"0.01")], [b""], "1.1", client)
    )
    assert timed_out[0]["status"] == 504
    assert limiter._w_count == window + 1
    assert limiter._w_dropped  # the 504 is a drop


async def test_a_streamed_body_over_the_limit_drops_the_apps_own_answer() -> None:
    limited = BodyLimitMiddleware(app, max_bytes=10)
    chunked = [(b"transfer-encoding", b"chunked")]
    messages, exc = await call(
        limited, ("POST", "/catch", chunked, [b"x" * 8, b"y" * 8], "1.1", ("127.0.0.1", 1))
    )
    assert exc is None
    assert [m["type"] for m in messages] == ["http.response.start", "http.response.body"]
    assert messages[0]["status"] == 413
    assert (b"connection", b"close") in messages[0]["headers"]
    under, _ = await call(
        limited, ("POST", "/catch", chunked, [b"x" * 4, b"y" * 4], "1.1", ("127.0.0.1", 1))
    )
    assert under[0]["status"] == 201


# --------------------------------------------------------------------------- caches
def test_client_cache_matches_client_address() -> None:
    log = AccessLogMiddleware(app, trusted_proxies=PROXIES)
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
            found = {} if xff is None else {b"x-forwarded-for": [xff]}
            got = found_client(scope, found, log.trusted, log.clients)
            assert got == client_address(scope, nets), (peer, xff)
    assert found_client({"client": None}, {}, log.trusted, log.clients) is None
    assert 0 < len(log.clients) <= len(cases)
    for i in range(4000):  # bounded: attacker-chosen X-Forwarded-For cannot grow it forever
        xff = f"198.51.{i // 256}.{i % 256}".encode()
        found = {b"x-forwarded-for": [xff]}
        assert found_client({"client": ("10.0.0.1", 1)}, found, log.trusted, log.clients) == (
            xff.decode()
        )
    assert len(log.clients) <= 1024
    long = b"203.0.113.9, " + b"10.0.0.2, " * 300  # long values are never cached
    log.clients.clear()
    found = {b"x-forwarded-for": [long]}
    assert found_client({"client": ("10.0.0.1", 1)}, found, log.trusted, log.clients) == (
        "203.0.113.9"
    )
    assert not log.clients


def test_client_rewritten_by_the_server_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    from buttress.asgi import _context

    monkeypatch.setattr(_context, "_rewrite_reported", True)  # the error: test_client_address
    for client, found in [
        (("203.0.113.7", 0), {b"x-forwarded-for": [b"203.0.113.7"]}),
        (("203.0.113.7", 0), {b"x-real-ip": [b"203.0.113.7"]}),
        (("203.0.113.7", 4444), {b"x-forwarded-for": [b"203.0.113.7:4444"]}),
        (("2001:db8::1", 80), {b"x-forwarded-for": [b"[2001:db8::1]:80"]}),
    ]:
        scope = {"client": client, "headers": [(k, v[0]) for k, v in found.items()]}
        assert found_client(scope, found, ()) == "unknown"
        assert client_address(scope) == "unknown"


def test_cors_cache_is_bounded() -> None:
    cors = CORSMiddleware(app, allow_origin_regex=r"https://.*\.example\.com")
    for i in range(4000):  # every distinct Origin a client sends
        origin = f"https://h{i}.example.com".encode()
        assert cors._simple_headers(origin)[0] == (b"access-control-allow-origin", origin)
    assert len(cors._simple) <= 1024
    cors._simple.clear()
    long = b"https://" + b"a" * 3000 + b".example.com"
    assert cors._simple_headers(long)[0][1] == long
    assert cors._simple_headers(b"https://evil.test") == []
    assert list(cors._simple) == [b"https://evil.test"]  # the long one was not kept
