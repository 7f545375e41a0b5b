"""buttress.http: safe-default httpx clients, the resilient transport, deadlines, keys."""

from __future__ import annotations

import asyncio
import email.utils
import importlib
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from buttress import CircuitBreaker, Hedge, Pipeline, Retry, deadline
from buttress.errors import CircuitOpen, ConfigurationError, DeadlineExceeded, ErrorCode, classify
from buttress.http import (
    DEFAULT_LIMITS,
    DEFAULT_TIMEOUT,
    IDEMPOTENCY_HEADER,
    ResilientTransport,
    _environment_proxies,
    async_client,
    client,
    default_pipeline,
    is_failure_response,
    is_retriable_response,
)
from buttress.telemetry import RetryGaveUpEvent, RetryScheduledEvent
from buttress.testing import FakeClock

PROXY_VARIABLES = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
)


@pytest.fixture(autouse=True)
def _no_environment_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loopback tests must not be routed through a proxy of the machine running them."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


# ---------------------------------------------------------------- a scripted upstream
class TrackedStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body that is a real stream (not pre-read bytes) and knows if it was closed."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        yield self.body

    async def __aiter__(self) -> Any:
        yield self.body

    def close(self) -> None:
        self.closed = True

    async def aclose(self) -> None:
        self.closed = True


class Upstream:
    """A MockTransport handler answering with a script of statuses (the last repeats).

    Records every request, the headers seen, the timeouts and every response made.
    """

    def __init__(
        self,
        *statuses: int | BaseException,
        headers: dict[str, str] | None = None,
        check: Callable[[Upstream], None] | None = None,
    ) -> None:
        self.script = list(statuses) or [200]
        self.headers = headers or {}
        self.check = check
        self.requests: list[httpx.Request] = []
        self.responses: list[httpx.Response] = []
        self.timeouts: list[dict[str, float]] = []

    @property
    def calls(self) -> int:
        return len(self.requests)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.check is not None:
            self.check(self)
        self.requests.append(request)
        self.timeouts.append(dict(request.extensions["timeout"]))
        step = self.script[min(len(self.requests), len(self.script)) - 1]
        if isinstance(step, BaseException):
            raise step
        body = TrackedStream(f"attempt {len(self.requests)}".encode())
        response = httpx.Response(step, headers=self.headers, stream=body)
        assert not response.is_closed
        self.responses.append(response)
        return response

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)


def sync_client(upstream: Upstream, clock: FakeClock, **kwargs: Any) -> httpx.Client:
    return client(transport=upstream.transport(), clock=clock, **kwargs)


def aio_client(upstream: Upstream, clock: FakeClock, **kwargs: Any) -> httpx.AsyncClient:
    return async_client(transport=upstream.transport(), clock=clock, **kwargs)


# ---------------------------------------------------------------- defaults
class SpyTransport(httpx.HTTPTransport):
    made: list[dict[str, Any]] = []

    def __init__(self, **kwargs: Any) -> None:
        SpyTransport.made.append(kwargs)
        super().__init__(**kwargs)


class AsyncSpyTransport(httpx.AsyncHTTPTransport):
    made: list[dict[str, Any]] = []

    def __init__(self, **kwargs: Any) -> None:
        AsyncSpyTransport.made.append(kwargs)
        super().__init__(**kwargs)


def test_defaults_are_the_checklist_timeouts_and_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    SpyTransport.made.clear()
    monkeypatch.setattr(httpx, "HTTPTransport", SpyTransport)
    with client() as http:
        assert http.timeout == httpx.Timeout(connect=5, read=30, write=10, pool=5)
        assert http.timeout.as_dict() == {"connect": 5.0, "read": 30.0, "write": 10.0, "pool": 5.0}
    assert len(SpyTransport.made) == 1
    limits = SpyTransport.made[0]["limits"]
    assert limits == httpx.Limits(max_connections=100, max_keepalive_connections=20)
    assert limits.max_connections == 100
    assert limits.max_keepalive_connections == 20
    assert httpx.Timeout(connect=5, read=30, write=10, pool=5) == DEFAULT_TIMEOUT
    assert limits == DEFAULT_LIMITS


async def test_async_defaults_are_the_checklist_timeouts_and_limits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    AsyncSpyTransport.made.clear()
    monkeypatch.setattr(httpx, "AsyncHTTPTransport", AsyncSpyTransport)
    async with async_client() as http:
        assert isinstance(http, httpx.AsyncClient)
        assert http.timeout == DEFAULT_TIMEOUT
    assert AsyncSpyTransport.made[0]["limits"] == DEFAULT_LIMITS


def test_every_default_can_be_overridden_and_httpx_options_pass_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    SpyTransport.made.clear()
    monkeypatch.setattr(httpx, "HTTPTransport", SpyTransport)
    limits = httpx.Limits(max_connections=7, max_keepalive_connections=3)
    with client(
        timeout=httpx.Timeout(1.0, read=2.0),
        limits=limits,
        base_url="http://api.test",
        headers={"User-Agent": "shop/1"},
        auth=("user", "secret"),
        http2=False,
        verify=False,
    ) as http:
        assert http.timeout == httpx.Timeout(1.0, read=2.0)
        assert http.base_url == httpx.URL("http://api.test")
        assert http.headers["User-Agent"] == "shop/1"
        assert http.auth is not None
    made = SpyTransport.made[0]
    assert made["limits"] is limits
    assert made["verify"] is False


def test_user_options_reach_the_request(clock: FakeClock) -> None:
    upstream = Upstream(200)
    with sync_client(
        upstream, clock, base_url="http://api.test", headers={"X-Team": "shop"}, timeout=3.0
    ) as http:
        http.get("/items")
    request = upstream.requests[0]
    assert request.url == "http://api.test/items"
    assert request.headers["X-Team"] == "shop"
    assert upstream.timeouts[0] == {"connect": 3.0, "read": 3.0, "write": 3.0, "pool": 3.0}


def test_invalid_options_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="pipeline"):
        client(pipeline=42)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="proxy"):
        client(transport=httpx.MockTransport(Upstream()), proxy="http://127.0.0.1:9")
    with pytest.raises(ConfigurationError, match="on_request"):
        client(transport=httpx.MockTransport(Upstream()), on_request=["not callable"])  # type: ignore[list-item]


# ---------------------------------------------------------------- retries of responses
def test_get_503_is_retried_honouring_retry_after(clock: FakeClock, events) -> None:
    upstream = Upstream(503, 200, headers={"Retry-After": "7"})
    with sync_client(upstream, clock) as http:
        response = http.get("http://api.test/stock")
    assert response.status_code == 200
    assert upstream.calls == 2
    assert clock.sleeps == [7.0]  # max(jittered backoff <= 0.2 s, Retry-After 7 s)
    scheduled = [e for e in events if isinstance(e, RetryScheduledEvent)]
    assert [e.delay for e in scheduled] == [7.0]
    assert scheduled[0].code is ErrorCode.UPSTREAM_UNAVAILABLE


async def test_async_get_429_is_retried_honouring_retry_after(clock: FakeClock) -> None:
    upstream = Upstream(429, 429, 200, headers={"Retry-After": "3"})
    async with aio_client(upstream, clock) as http:
        response = await http.get("http://api.test/stock")
    assert response.status_code == 200
    assert upstream.calls == 3
    assert clock.sleeps == [3.0, 3.0]


def test_retry_after_as_an_http_date_is_honoured(clock: FakeClock) -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    upstream = Upstream(503, 200, headers={"Retry-After": when})
    with sync_client(upstream, clock) as http:
        assert http.get("http://api.test/").status_code == 200
    assert clock.sleeps == [pytest.approx(30.0, abs=2.0)]


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_every_transient_status_is_retried(clock: FakeClock, status: int) -> None:
    upstream = Upstream(status, 200)
    with sync_client(upstream, clock) as http:
        assert http.get("http://api.test/").status_code == 200
    assert upstream.calls == 2


@pytest.mark.parametrize("status", [400, 401, 404, 409, 422, 501])
def test_other_statuses_are_returned_at_once(clock: FakeClock, status: int) -> None:
    upstream = Upstream(status, 200)
    with sync_client(upstream, clock) as http:
        assert http.get("http://api.test/").status_code == status
    assert upstream.calls == 1


def test_exhausted_retries_return_the_last_response_unchanged(clock: FakeClock, events) -> None:
    upstream = Upstream(503)
    with sync_client(upstream, clock) as http:
        response = http.get("http://api.test/")
    assert response.status_code == 503
    assert response.text == "attempt 3"
    assert upstream.calls == 3
    gave_up = [e for e in events if isinstance(e, RetryGaveUpEvent)]
    assert [(e.attempts, e.reason) for e in gave_up] == [(3, "attempts_exhausted")]


def test_retried_responses_are_closed_before_the_next_attempt(clock: FakeClock) -> None:
    seen: list[bool] = []

    def previous_closed(upstream: Upstream) -> None:
        seen.append(all(r.is_closed for r in upstream.responses))

    upstream = Upstream(503, 502, 200, check=previous_closed)
    with sync_client(upstream, clock) as http:
        response = http.get("http://api.test/")
    assert response.status_code == 200
    assert seen == [True, True, True]
    assert all(r.is_closed for r in upstream.responses[:2])


def test_a_streamed_last_response_is_left_open_for_the_caller(clock: FakeClock) -> None:
    upstream = Upstream(503)
    with sync_client(upstream, clock) as http, http.stream("GET", "http://api.test/") as response:
        assert [r.is_closed for r in upstream.responses] == [True, True, False]
        assert response.read() == b"attempt 3"


async def test_async_retried_responses_are_closed(clock: FakeClock) -> None:
    upstream = Upstream(503, 503, 503)
    async with aio_client(upstream, clock) as http:
        async with http.stream("GET", "http://api.test/") as response:
            assert [r.is_closed for r in upstream.responses] == [True, True, False]
            assert await response.aread() == b"attempt 3"


def test_retry_stops_when_retry_after_outlasts_the_deadline(clock: FakeClock, events) -> None:
    upstream = Upstream(503, 200, headers={"Retry-After": "10"})
    with sync_client(upstream, clock) as http, deadline(5.0, clock=clock):
        response = http.get("http://api.test/")
    assert response.status_code == 503
    assert upstream.calls == 1
    assert clock.sleeps == []
    assert [e.reason for e in events if isinstance(e, RetryGaveUpEvent)] == ["deadline"]


# ---------------------------------------------------------------- retries of errors
def test_connect_errors_are_retried_then_raised_with_their_type(clock: FakeClock) -> None:
    errors = [httpx.ConnectError(f"refused {i}") for i in range(3)]
    upstream = Upstream(*errors)
    with sync_client(upstream, clock) as http, pytest.raises(httpx.ConnectError) as caught:
        http.get("http://api.test/")
    assert caught.value is errors[-1]
    assert upstream.calls == 3
    assert any("gave up after 3 attempts" in note for note in caught.value.__notes__)
    info = classify(caught.value)
    assert info is not None
    assert info.code is ErrorCode.UPSTREAM_UNAVAILABLE


async def test_async_read_timeouts_are_retried_then_raised(clock: FakeClock) -> None:
    upstream = Upstream(httpx.ReadTimeout("slow"), httpx.ReadTimeout("slow"), 200)
    async with aio_client(upstream, clock) as http:
        assert (await http.get("http://api.test/")).status_code == 200
    assert upstream.calls == 3


def test_errors_the_taxonomy_calls_permanent_are_not_retried(clock: FakeClock) -> None:
    upstream = Upstream(httpx.UnsupportedProtocol("gopher"))
    with sync_client(upstream, clock) as http, pytest.raises(httpx.UnsupportedProtocol):
        http.get("http://api.test/")
    assert upstream.calls == 1


# ---------------------------------------------------------------- idempotency
@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_non_idempotent_requests_are_not_retried_without_a_key(
    clock: FakeClock, method: str
) -> None:
    upstream = Upstream(503, 200)
    with sync_client(upstream, clock) as http:
        response = http.request(method, "http://api.test/orders", json={"sku": 1})
    assert response.status_code == 503
    assert upstream.calls == 1
    assert IDEMPOTENCY_HEADER not in upstream.requests[0].headers


async def test_async_post_is_not_retried_without_a_key(clock: FakeClock) -> None:
    upstream = Upstream(httpx.ConnectError("refused"), 200)
    async with aio_client(upstream, clock) as http:
        with pytest.raises(httpx.ConnectError):
            await http.post("http://api.test/orders", json={"sku": 1})
    assert upstream.calls == 1


@pytest.mark.parametrize("method", ["PUT", "DELETE", "HEAD", "OPTIONS", "TRACE"])
def test_idempotent_methods_are_retried(clock: FakeClock, method: str) -> None:
    upstream = Upstream(503, 200)
    with sync_client(upstream, clock) as http:
        assert http.request(method, "http://api.test/orders/7").status_code == 200
    assert upstream.calls == 2


def test_post_with_an_idempotency_key_is_retried(clock: FakeClock) -> None:
    upstream = Upstream(503, httpx.ConnectError("reset"), 201)
    with sync_client(upstream, clock) as http:
        response = http.post(
            "http://api.test/orders", json={"sku": 1}, headers={"Idempotency-Key": "order-7"}
        )
    assert response.status_code == 201
    assert [r.headers["Idempotency-Key"] for r in upstream.requests] == ["order-7"] * 3
    assert [r.content for r in upstream.requests] == [b'{"sku":1}'] * 3


def test_generated_key_is_reused_across_the_retries_of_one_request(clock: FakeClock) -> None:
    upstream = Upstream(503, 503, 201)
    with sync_client(upstream, clock, idempotency_keys=True) as http:
        assert http.post("http://api.test/orders", json={"sku": 1}).status_code == 201
        assert http.post("http://api.test/orders", json={"sku": 2}).status_code == 201
    keys = [r.headers[IDEMPOTENCY_HEADER] for r in upstream.requests]
    assert len(keys) == 4
    assert keys[0] == keys[1] == keys[2]  # one logical request, one key
    assert keys[3] != keys[0]  # the next request gets its own
    assert uuid.UUID(keys[0]).version == 4


async def test_async_generated_key_is_reused_across_retries(clock: FakeClock) -> None:
    upstream = Upstream(503, 200)
    async with aio_client(upstream, clock, idempotency_keys=True) as http:
        assert (await http.patch("http://api.test/orders/7", json={})).status_code == 200
    keys = {r.headers[IDEMPOTENCY_HEADER] for r in upstream.requests}
    assert upstream.calls == 2
    assert len(keys) == 1


def test_generated_keys_leave_given_keys_and_other_methods_alone(clock: FakeClock) -> None:
    upstream = Upstream(200)
    with sync_client(upstream, clock, idempotency_keys=True) as http:
        http.post("http://api.test/orders", headers={"Idempotency-Key": "mine"})
        http.get("http://api.test/orders")
        http.put("http://api.test/orders/7")
    assert upstream.requests[0].headers[IDEMPOTENCY_HEADER] == "mine"
    assert IDEMPOTENCY_HEADER not in upstream.requests[1].headers
    assert IDEMPOTENCY_HEADER not in upstream.requests[2].headers


def test_a_body_that_cannot_be_replayed_is_not_retried(clock: FakeClock) -> None:
    upstream = Upstream(503, 200)

    def body() -> Iterator[bytes]:
        yield b"chunk"

    with sync_client(upstream, clock) as http:
        assert http.put("http://api.test/blob", content=body()).status_code == 503
    assert upstream.calls == 1


# ---------------------------------------------------------------- deadlines
def test_deadline_shrinks_each_timeout(clock: FakeClock) -> None:
    upstream = Upstream(200)
    with sync_client(upstream, clock) as http:
        with deadline(2.0, clock=clock):
            http.get("http://api.test/")
        with deadline(8.0, clock=clock):
            http.get("http://api.test/")
        http.get("http://api.test/")
    assert upstream.timeouts == [
        {"connect": 2.0, "read": 2.0, "write": 2.0, "pool": 2.0},
        {"connect": 5.0, "read": 8.0, "write": 8.0, "pool": 5.0},
        {"connect": 5.0, "read": 30.0, "write": 10.0, "pool": 5.0},
    ]


def test_deadline_bounds_a_timeout_that_was_off(clock: FakeClock) -> None:
    upstream = Upstream(200)
    with sync_client(upstream, clock, timeout=None) as http, deadline(3.0, clock=clock):
        http.get("http://api.test/")
    assert upstream.timeouts == [{"connect": 3.0, "read": 3.0, "write": 3.0, "pool": 3.0}]


def test_each_attempt_gets_the_time_left(clock: FakeClock) -> None:
    upstream = Upstream(503, 200, headers={"Retry-After": "4"})
    with sync_client(upstream, clock) as http, deadline(10.0, clock=clock):
        assert http.get("http://api.test/").status_code == 200
    assert [t["read"] for t in upstream.timeouts] == [10.0, 6.0]
    assert [t["connect"] for t in upstream.timeouts] == [5.0, 5.0]


async def test_async_deadline_shrinks_each_timeout(clock: FakeClock) -> None:
    upstream = Upstream(200)
    async with aio_client(upstream, clock) as http:
        async with deadline(1.5, clock=clock):
            await http.get("http://api.test/")
    assert upstream.timeouts == [{"connect": 1.5, "read": 1.5, "write": 1.5, "pool": 1.5}]


def test_a_passed_deadline_raises_without_sending(clock: FakeClock) -> None:
    upstream = Upstream(200)
    with sync_client(upstream, clock) as http, deadline(1.0, clock=clock):
        clock.advance(1.0)
        with pytest.raises(DeadlineExceeded) as caught:
            http.get("http://api.test/")
    assert caught.value.code is ErrorCode.DEADLINE_EXCEEDED
    assert not caught.value.retriable
    assert upstream.calls == 0


async def test_async_passed_deadline_raises_without_sending(clock: FakeClock) -> None:
    upstream = Upstream(200)
    async with aio_client(upstream, clock) as http:
        with deadline(1.0, clock=clock):
            clock.advance(5.0)
            with pytest.raises(DeadlineExceeded) as caught:
                await http.get("http://api.test/")
    assert caught.value.code is ErrorCode.DEADLINE_EXCEEDED
    assert upstream.calls == 0


def test_passed_deadlines_do_not_count_against_the_breaker(clock: FakeClock) -> None:
    upstream = Upstream(200)
    with sync_client(upstream, clock) as http:
        with deadline(1.0, clock=clock):
            clock.advance(2.0)
            for _ in range(10):
                with pytest.raises(DeadlineExceeded):
                    http.get("http://api.test/")
        assert http.get("http://api.test/").status_code == 200
    assert upstream.calls == 1


# ---------------------------------------------------------------- circuit breaker
def test_circuit_opens_after_repeated_failures_then_fails_fast(clock: FakeClock) -> None:
    upstream = Upstream(503)
    with sync_client(upstream, clock) as http:
        assert http.get("http://api.test/").status_code == 503  # failures 1-3
        with pytest.raises(CircuitOpen) as caught:
            http.get("http://api.test/")  # failures 4-5 open it; the 3rd attempt is refused
        assert upstream.calls == 5
        with pytest.raises(CircuitOpen):
            http.get("http://api.test/")
        assert upstream.calls == 5  # nothing sent while open
        assert all(r.is_closed for r in upstream.responses)
    assert caught.value.code is ErrorCode.CIRCUIT_OPEN
    assert caught.value.retry_after is not None
    assert 4.0 < caught.value.retry_after <= 5.0
    assert "http://api.test" in str(caught.value)


def test_circuit_probes_after_the_break_and_closes_on_success(clock: FakeClock) -> None:
    upstream = Upstream(*([httpx.ConnectError("down")] * 5), 200)
    with sync_client(upstream, clock) as http:
        with pytest.raises(httpx.ConnectError):
            http.get("http://api.test/")
        with pytest.raises(CircuitOpen):
            http.get("http://api.test/")
        clock.advance(5.0)
        assert http.get("http://api.test/").status_code == 200
        assert http.get("http://api.test/").status_code == 200
    assert upstream.calls == 7


async def test_async_circuit_opens_then_raises_circuit_open(clock: FakeClock) -> None:
    upstream = Upstream(httpx.ConnectError("down"))
    async with aio_client(upstream, clock) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get("http://api.test/")
        with pytest.raises(CircuitOpen):
            await http.get("http://api.test/")
        sent = upstream.calls
        with pytest.raises(CircuitOpen):
            await http.get("http://api.test/")
    assert sent == 5
    assert upstream.calls == 5


def test_non_idempotent_requests_still_go_through_the_breaker(clock: FakeClock) -> None:
    upstream = Upstream(500)
    with sync_client(upstream, clock) as http:
        for _ in range(5):
            assert http.post("http://api.test/orders").status_code == 500
        with pytest.raises(CircuitOpen):
            http.post("http://api.test/orders")
        with pytest.raises(CircuitOpen):
            http.get("http://api.test/orders")  # one breaker per origin, whatever the method
    assert upstream.calls == 5


def test_each_origin_has_its_own_breaker(clock: FakeClock) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503 if request.url.host == "down.test" else 200)

    with client(transport=httpx.MockTransport(handler), clock=clock) as http:
        http.get("http://down.test/")
        with pytest.raises(CircuitOpen):
            http.get("http://down.test/")
        assert http.get("http://up.test/").status_code == 200
        assert http.get("https://down.test/").status_code == 503  # another origin


def test_client_errors_do_not_open_the_circuit(clock: FakeClock) -> None:
    upstream = Upstream(404)
    with sync_client(upstream, clock) as http:
        for _ in range(30):
            assert http.get("http://api.test/missing").status_code == 404
    assert upstream.calls == 30


# ---------------------------------------------------------------- pipelines
def test_pipeline_none_sends_requests_as_they_are(clock: FakeClock) -> None:
    upstream = Upstream(503, 200)
    with sync_client(upstream, clock, pipeline=None) as http:
        assert http.get("http://api.test/").status_code == 503
        with deadline(1.0, clock=clock):
            http.get("http://api.test/")
            clock.advance(1.0)
            with pytest.raises(DeadlineExceeded):
                http.get("http://api.test/")
    assert upstream.calls == 2
    assert upstream.timeouts[1]["read"] == 1.0


async def test_async_pipeline_none(clock: FakeClock) -> None:
    upstream = Upstream(503, 200)
    async with aio_client(upstream, clock, pipeline=None) as http:
        assert (await http.get("http://api.test/")).status_code == 503
    assert upstream.calls == 1


def test_a_given_pipeline_replaces_the_default_and_loses_retries_for_post(
    clock: FakeClock,
) -> None:
    breaker = CircuitBreaker(consecutive_failures=4, clock=clock)
    pipe = Pipeline(
        Retry(attempts=2, retry_on_result=is_retriable_response, clock=clock),
        breaker,
        name="orders-api",
    )
    upstream = Upstream(503)
    with sync_client(upstream, clock, pipeline=pipe) as http:
        assert http.get("http://a.test/").status_code == 503  # 2 attempts
        assert upstream.calls == 2
        assert http.post("http://b.test/").status_code == 503  # 1 attempt, same breaker
        assert upstream.calls == 3
        assert breaker.state == "closed"  # a 503 is not a failure for this breaker
        assert pipe.policies[1] is breaker


def test_a_pipeline_factory_is_called_once_per_origin(clock: FakeClock) -> None:
    origins: list[str] = []

    def factory(origin: str) -> Pipeline:
        origins.append(origin)
        return default_pipeline(origin, clock=clock)

    upstream = Upstream(200)
    with sync_client(upstream, clock, pipeline=factory) as http:
        for _ in range(3):
            http.get("http://a.test/x")
            http.post("http://a.test/y")
            http.get("https://b.test:8443/")
    assert origins == ["http://a.test", "https://b.test:8443"]


def test_a_factory_must_return_a_pipeline(clock: FakeClock) -> None:
    with (
        sync_client(Upstream(), clock, pipeline=lambda origin: "nope") as http,  # type: ignore[arg-type,return-value]
        pytest.raises(ConfigurationError, match="not a Pipeline"),
    ):
        http.get("http://a.test/")


def test_default_pipeline_shape() -> None:
    pipe = default_pipeline("https://api.test")
    retry, breaker = pipe.policies
    assert isinstance(retry, Retry)
    assert retry.attempts == 3
    assert retry.budget is not None
    assert (retry.backoff.base, retry.backoff.cap, retry.backoff.jitter) == (0.2, 5.0, "full")
    assert isinstance(breaker, CircuitBreaker)
    assert breaker.name == "http https://api.test"
    assert is_failure_response(httpx.Response(503))
    assert not is_failure_response(httpx.Response(404))


async def test_a_hedge_races_get_but_never_post(clock: FakeClock) -> None:
    calls: list[str] = []
    streams: list[TrackedStream] = []
    release = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        if len(calls) == 1:  # the first GET is slow until the hedged one answered
            await asyncio.wait_for(release.wait(), timeout=5.0)
        elif request.method == "POST":
            await asyncio.sleep(0.02)  # far beyond the hedge delay
        else:
            release.set()
        stream = TrackedStream(f"call {len(calls)}".encode())
        streams.append(stream)
        return httpx.Response(200, stream=stream)

    pipe = Pipeline(Hedge(delay=0.001, max_hedges=1))
    transport = httpx.MockTransport(handler)
    async with async_client(transport=transport, pipeline=pipe, clock=clock) as http:
        assert (await http.get("http://a.test/")).text == "call 2"
        assert calls == ["GET", "GET"]
        await asyncio.sleep(0)
        assert all(stream.closed for stream in streams)  # the loser too, if it answered
        assert (await http.post("http://a.test/")).status_code == 200
    assert calls == ["GET", "GET", "POST"]


# ---------------------------------------------------------------- hook point
def test_on_request_hooks_run_once_per_logical_request(clock: FakeClock) -> None:
    calls: list[str] = []

    def add_request_id(request: httpx.Request) -> None:
        calls.append(request.method)
        request.headers["X-Request-Id"] = f"req-{len(calls)}"

    upstream = Upstream(503, 200)
    with sync_client(upstream, clock, on_request=[add_request_id]) as http:
        http.get("http://api.test/")
    assert calls == ["GET"]
    assert [r.headers["X-Request-Id"] for r in upstream.requests] == ["req-1", "req-1"]


async def test_an_on_request_hook_can_make_a_post_retriable(clock: FakeClock) -> None:
    def propagate_key(request: httpx.Request) -> None:
        request.headers.setdefault(IDEMPOTENCY_HEADER, "from-the-inbound-request")

    upstream = Upstream(503, 201)
    async with aio_client(upstream, clock, on_request=[propagate_key]) as http:
        assert (await http.post("http://api.test/orders")).status_code == 201
    assert upstream.calls == 2


# ---------------------------------------------------------------- transports and mounts
def test_mounted_transports_are_wrapped_too(clock: FakeClock) -> None:
    upstream = Upstream(503, 200)
    main = Upstream(200)
    with sync_client(main, clock, mounts={"http://special.test": upstream.transport()}) as http:
        assert http.get("http://special.test/").status_code == 200
        assert http.get("http://other.test/").status_code == 200
    assert upstream.calls == 2
    assert main.calls == 1


def test_transport_kinds_must_match_the_client() -> None:
    class SyncOnly(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            return httpx.Response(200)

    transport = ResilientTransport(SyncOnly(), pipeline=None)
    request = httpx.Request("GET", "http://a.test/")
    with pytest.raises(TypeError, match="use client"):
        asyncio.run(transport.handle_async_request(request))
    with pytest.raises(ConfigurationError):
        ResilientTransport("not a transport")  # type: ignore[arg-type]


def test_environment_proxy_patterns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "localhost, 10.0.0.1,::1,.internal.test,http://skip.test")
    assert _environment_proxies() == {
        "https://": "http://proxy.internal:3128",
        "all://localhost": None,
        "all://10.0.0.1": None,
        "all://[::1]": None,
        "all://*.internal.test": None,
        "http://skip.test": None,
    }
    monkeypatch.setenv("NO_PROXY", "*")
    assert _environment_proxies() == {}


def test_missing_httpx_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "httpx", None)
    monkeypatch.delitem(sys.modules, "buttress.http")
    with pytest.raises(ImportError, match=r"pip install 'buttress\[http\]'"):
        importlib.import_module("buttress.http")


# ---------------------------------------------------------------- a real local server
class ScriptedServer(ThreadingHTTPServer):
    """An HTTP/1.1 server on 127.0.0.1 whose paths answer a script of statuses."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ScriptedHandler)
        self.scripts: dict[str, list[int]] = {}
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def next_status(self, path: str) -> int:
        with self.lock:
            self.hits[path] += 1
            script = self.scripts.get(path, [200])
            return script[min(self.hits[path], len(script)) - 1]


class ScriptedHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ScriptedServer

    def do_GET(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        status = self.server.next_status(self.path)
        body = f"{status} for {self.path}".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        if status == 503:
            self.send_header("Retry-After", "1")
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    srv = ScriptedServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


@pytest.fixture
def refused_url() -> str:
    """A loopback port that was bound and closed: nothing listens there."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def test_real_server_flaky_get_is_retried(server: ScriptedServer, clock: FakeClock) -> None:
    server.scripts["/flaky"] = [503, 503, 200]
    with client(clock=clock) as http:
        response = http.get(f"{server.url}/flaky")
        assert response.status_code == 200
        assert response.text == "200 for /flaky"
        # the connections of the retried 503s were released: the pool still serves
        assert http.get(f"{server.url}/other").status_code == 200
    assert server.hits["/flaky"] == 3
    assert clock.sleeps == [1.0, 1.0]  # Retry-After: 1 beats the <= 0.2/0.4 s backoff


async def test_real_server_async_flaky_get_is_retried(
    server: ScriptedServer, clock: FakeClock
) -> None:
    server.scripts["/flaky"] = [503, 200]
    async with async_client(clock=clock) as http:
        response = await http.get(f"{server.url}/flaky")
    assert response.status_code == 200
    assert server.hits["/flaky"] == 2


def test_real_server_post_without_key_is_sent_once(
    server: ScriptedServer, clock: FakeClock
) -> None:
    server.scripts["/orders"] = [503, 200]
    with client(clock=clock) as http:
        assert http.post(f"{server.url}/orders", json={"sku": 1}).status_code == 503
        key = {"Idempotency-Key": "order-1"}
        assert http.post(f"{server.url}/orders", json={"sku": 1}, headers=key).status_code == 200
    assert server.hits["/orders"] == 2


def test_real_connection_refused_is_retried_then_raised(
    refused_url: str, clock: FakeClock, events
) -> None:
    with client(clock=clock) as http, pytest.raises(httpx.ConnectError) as caught:
        http.get(refused_url)
    assert any("gave up after 3 attempts" in note for note in caught.value.__notes__)
    info = classify(caught.value)
    assert info is not None
    assert info.code is ErrorCode.UPSTREAM_UNAVAILABLE
    assert info.retriable
    scheduled = [e for e in events if isinstance(e, RetryScheduledEvent)]
    assert [e.attempt for e in scheduled] == [1, 2]
    assert all(isinstance(e.error, httpx.ConnectError) for e in scheduled)
    assert len(clock.sleeps) == 2


async def test_real_connection_refused_async(refused_url: str, clock: FakeClock) -> None:
    async with async_client(clock=clock) as http:
        with pytest.raises(httpx.ConnectError) as caught:
            await http.get(refused_url)
    assert any("gave up after 3 attempts" in note for note in caught.value.__notes__)


def test_real_environment_proxy_is_used_and_resilient(
    server: ScriptedServer, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The scripted server plays an HTTP proxy: it sees the absolute URL as the path.
    monkeypatch.setenv("HTTP_PROXY", server.url)
    server.scripts["http://upstream.test/via-proxy"] = [503, 200]
    with client(clock=clock) as http:
        assert http.get("http://upstream.test/via-proxy").status_code == 200
    assert server.hits["http://upstream.test/via-proxy"] == 2
