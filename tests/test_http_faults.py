"""buttress.http under injected faults, against a real loopback server.

`FaultServer` is an HTTP/1.1 server on 127.0.0.1 (asyncio, in a thread of its own) whose
paths misbehave on cue: stall before the headers, stall or trickle mid-body, trickle the
headers, reset the connection, answer 503 with ``Retry-After: 120`` or 429 with an
HTTP-date ``Retry-After``, redirect to another origin. Every stall and trickle is bounded
(the server gives up after at most 10 s), so a broken promise fails the test instead of
hanging it. The tests synchronise on what the server saw (threading events), never on
sleeps, and assert only generous upper bounds on time ("within 5 s for a 1 s deadline").
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import socket
import struct
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from buttress import Bulkhead, Pipeline, Retry, deadline
from buttress.errors import CircuitOpen, DeadlineExceeded
from buttress.http import async_client, client, is_retriable_response
from buttress.telemetry import Event, RetryScheduledEvent
from buttress.testing import FakeClock

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
STALL_LIMIT = 10.0  # seconds: the longest any stall or trickle of the server lasts
BOUND = 5.0  # seconds: a generous upper bound for a call under a 1 s deadline
SECRETS = ("s3cret-pw", "s3cret-token", "s3cret-bearer", "s3cret-cookie")


@pytest.fixture(autouse=True)
def _no_environment_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loopback requests must not be routed through a proxy of the machine running them."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


# ---------------------------------------------------------------- the misbehaving server
class FaultServer:
    """A loopback HTTP/1.1 server whose paths are faults; records what it saw."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.hits: Counter[str] = Counter()
        self.headers: dict[str, list[dict[str, str]]] = defaultdict(list)
        self.arrived: defaultdict[str, threading.Event] = defaultdict(threading.Event)
        self.hung_up: defaultdict[str, threading.Event] = defaultdict(threading.Event)
        self.lock = threading.Lock()
        self.redirect_to = ""
        self.server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultServer:
        self.thread.start()
        started = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self.loop
        )
        self.server = started.result(timeout=5)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def close() -> None:
            assert self.server is not None
            self.server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    # ---------------------------------------------------------- one connection
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        if length:
            await reader.readexactly(length)
        path = target.split("?", 1)[0]
        with self.lock:
            self.hits[path] += 1
            hit = self.hits[path]
            self.headers[path].append(headers)
        self.arrived[path].set()
        return await self._answer(path, hit, reader, writer)

    async def _hang_up(self, path: str, reader: asyncio.StreamReader) -> bool:
        """Wait (bounded) for the client to close the connection."""
        with contextlib.suppress(TimeoutError, ConnectionError):
            await asyncio.wait_for(reader.read(), STALL_LIMIT)
        self.hung_up[path].set()
        return False

    async def _trickle(self, writer: asyncio.StreamWriter, piece: bytes) -> None:
        """One piece every 0.1 s until the client goes or STALL_LIMIT passes."""
        for _ in range(int(STALL_LIMIT / 0.1)):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.1)

    async def _answer(
        self, path: str, hit: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        def respond(status: str, body: bytes = b"", extra: str = "") -> None:
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body
            )

        if path == "/stall-headers":
            return await self._hang_up(path, reader)
        if path == "/stall-body":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
            await writer.drain()
            return await self._hang_up(path, reader)
        if path == "/trickle-body":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
            with contextlib.suppress(ConnectionError):
                await self._trickle(writer, b"x")
            self.hung_up[path].set()
            return False
        if path == "/trickle-headers":
            writer.write(b"HTTP/1.1 200 OK\r\n")
            with contextlib.suppress(ConnectionError):
                await self._trickle(writer, b"X-Slow: 1\r\n")
            self.hung_up[path].set()
            return False
        if path == "/reset" or (path == "/reset-once" and hit == 1):
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()  # RST, not FIN
            return False
        if path == "/unavailable":
            respond("503 Service Unavailable", b"later", "Retry-After: 120\r\n")
        elif path == "/busy":
            respond("503 Service Unavailable", b"later", "Retry-After: 2\r\n")
        elif path == "/limited":
            when = email.utils.formatdate(time.time() + 30, usegmt=True)
            respond("429 Too Many Requests", b"slow down", f"Retry-After: {when}\r\n")
        elif path == "/redirect":
            respond("302 Found", b"", f"Location: {self.redirect_to}/landing?x=1\r\n")
        else:
            respond("200 OK", b"ok")
        await writer.drain()
        return True


@pytest.fixture
def server() -> Iterator[FaultServer]:
    started = FaultServer().start()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def other() -> Iterator[FaultServer]:
    """A second server: another origin."""
    started = FaultServer().start()
    try:
        yield started
    finally:
        started.stop()


def wait_for(event: threading.Event) -> None:
    assert event.wait(STALL_LIMIT), "the server never saw it"


async def await_for(event: threading.Event) -> None:
    assert await asyncio.to_thread(event.wait, STALL_LIMIT), "the server never saw it"


# ---------------------------------------------------------------- stalls bounded by the deadline
@pytest.mark.parametrize(
    ("path", "error"),
    [("/stall-headers", httpx.ReadTimeout), ("/stall-body", httpx.ReadTimeout)],
)
def test_a_stall_ends_at_the_deadline(server: FaultServer, path: str, error: type) -> None:
    with client(base_url=server.url) as http:
        started = time.monotonic()
        with deadline(1.0), pytest.raises(error):
            http.get(path)
        assert time.monotonic() - started < BOUND
    assert server.hits[path] == 1  # the deadline was spent: no retry


@pytest.mark.parametrize(
    ("path", "error"),
    [("/stall-headers", httpx.ReadTimeout), ("/stall-body", httpx.ReadTimeout)],
)
async def test_async_a_stall_ends_at_the_deadline(
    server: FaultServer, path: str, error: type
) -> None:
    async with async_client(base_url=server.url) as http:
        started = time.monotonic()
        with deadline(1.0), pytest.raises(error):
            await http.get(path)
        assert time.monotonic() - started < BOUND
    assert server.hits[path] == 1


def test_a_trickled_body_ends_at_the_deadline(server: FaultServer) -> None:
    """Each byte comes within the read timeout; the deadline must still bound the whole."""
    with client(base_url=server.url) as http:
        started = time.monotonic()
        with deadline(1.0), pytest.raises(httpx.ReadTimeout):
            http.get("/trickle-body")
        assert time.monotonic() - started < BOUND
    wait_for(server.hung_up["/trickle-body"])  # the connection was closed, not kept


async def test_async_a_trickled_body_ends_at_the_deadline(server: FaultServer) -> None:
    async with async_client(base_url=server.url) as http:
        started = time.monotonic()
        with deadline(1.0), pytest.raises(httpx.ReadTimeout):
            await http.get("/trickle-body")
        assert time.monotonic() - started < BOUND
    await await_for(server.hung_up["/trickle-body"])


async def test_async_trickled_headers_end_at_the_deadline(server: FaultServer) -> None:
    async with async_client(base_url=server.url) as http:
        started = time.monotonic()
        with deadline(1.0), pytest.raises(httpx.ReadTimeout):
            await http.get("/trickle-headers")
        assert time.monotonic() - started < BOUND
    await await_for(server.hung_up["/trickle-headers"])


async def test_async_streamed_trickle_ends_at_the_deadline(server: FaultServer) -> None:
    """A body read with ``stream()`` after the request returned is bounded too."""
    async with async_client(base_url=server.url) as http:
        started = time.monotonic()
        with deadline(1.0):
            async with http.stream("GET", "/trickle-body") as response:
                with pytest.raises(httpx.ReadTimeout):
                    async for _ in response.aiter_bytes():
                        pass
        assert time.monotonic() - started < BOUND


def test_no_deadline_no_bound_beyond_the_timeouts(server: FaultServer) -> None:
    """Without a deadline a complete answer is returned as it is (no spurious timeout)."""
    with client(base_url=server.url) as http:
        assert http.get("/ok").text == "ok"


# ---------------------------------------------------------------- resets and retries
def test_a_reset_get_is_retried(server: FaultServer) -> None:
    with client(base_url=server.url) as http, deadline(BOUND):
        response = http.get("/reset-once")
    assert response.status_code == 200
    assert server.hits["/reset-once"] == 2


def test_a_reset_post_without_a_key_is_sent_once(server: FaultServer) -> None:
    with client(base_url=server.url) as http, deadline(BOUND):
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            http.post("/reset", json={"order": 1})
    assert server.hits["/reset"] == 1


async def test_async_a_reset_post_with_a_key_is_retried(server: FaultServer) -> None:
    async with async_client(base_url=server.url) as http:
        with deadline(BOUND):
            response = await http.post(
                "/reset-once", json={"order": 1}, headers={"Idempotency-Key": "k-1"}
            )
    assert response.status_code == 200
    keys = [seen["idempotency-key"] for seen in server.headers["/reset-once"]]
    assert keys == ["k-1", "k-1"]


# ---------------------------------------------------------------- Retry-After
def test_retry_after_longer_than_the_deadline_returns_at_once(server: FaultServer) -> None:
    with client(base_url=server.url) as http:
        started = time.monotonic()
        with deadline(1.0):
            response = http.get("/unavailable")
        assert time.monotonic() - started < BOUND
    assert response.status_code == 503
    assert response.headers["retry-after"] == "120"
    assert server.hits["/unavailable"] == 1


async def test_async_retry_after_longer_than_the_deadline_returns_at_once(
    server: FaultServer,
) -> None:
    async with async_client(base_url=server.url) as http:
        started = time.monotonic()
        with deadline(1.0):
            response = await http.get("/unavailable")
        assert time.monotonic() - started < BOUND
    assert response.status_code == 503
    assert server.hits["/unavailable"] == 1


def test_retry_after_as_an_http_date_is_honoured(server: FaultServer) -> None:
    clock = FakeClock()
    with client(base_url=server.url, clock=clock) as http:
        response = http.get("/limited")
    assert response.status_code == 429
    assert server.hits["/limited"] == 3
    assert len(clock.sleeps) == 2
    assert all(25.0 <= slept <= 31.0 for slept in clock.sleeps), clock.sleeps


def test_retry_after_as_an_http_date_past_the_deadline_is_not_waited(
    server: FaultServer,
) -> None:
    clock = FakeClock()
    with client(base_url=server.url, clock=clock) as http, deadline(5.0, clock=clock):
        response = http.get("/limited")
    assert response.status_code == 429
    assert server.hits["/limited"] == 1
    assert clock.sleeps == []


# ---------------------------------------------------------------- breaker per origin
def test_the_breaker_opens_for_one_origin_only(server: FaultServer, other: FaultServer) -> None:
    clock = FakeClock()
    with client(clock=clock) as http:
        for _ in range(2):  # 3 attempts each: the 5 consecutive failures open the circuit
            with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError, CircuitOpen)):
                http.get(f"{server.url}/reset")
        sent = server.hits["/reset"]
        with pytest.raises(CircuitOpen) as caught:
            http.get(f"{server.url}/reset")
        assert server.hits["/reset"] == sent  # refused without being sent
        assert http.get(f"{other.url}/ok").status_code == 200
    assert f"127.0.0.1:{server.port}" in str(caught.value)


# ---------------------------------------------------------------- credentials
def no_secret_in(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, text


def test_a_cross_origin_redirect_drops_authorization_and_cookie(
    server: FaultServer, other: FaultServer
) -> None:
    server.redirect_to = other.url
    with client(
        follow_redirects=True,
        headers={"Authorization": "Bearer s3cret-bearer", "Cookie": "sid=s3cret-cookie"},
    ) as http:
        response = http.get(f"{server.url}/redirect")
    assert response.status_code == 200
    assert server.headers["/redirect"][0]["authorization"] == "Bearer s3cret-bearer"
    landed = other.headers["/landing"][0]
    assert "authorization" not in landed
    assert "cookie" not in landed


async def test_async_a_cross_origin_redirect_drops_basic_auth_from_userinfo(
    server: FaultServer, other: FaultServer
) -> None:
    server.redirect_to = other.url
    async with async_client(follow_redirects=True) as http:
        url = f"http://app:s3cret-pw@127.0.0.1:{server.port}/redirect"
        response = await http.get(url)
    assert response.status_code == 200
    assert server.headers["/redirect"][0]["authorization"].startswith("Basic ")
    assert "authorization" not in other.headers["/landing"][0]


def test_no_credentials_in_errors_notes_or_events(server: FaultServer) -> None:
    """Userinfo and ``?token=`` never reach exception messages, notes, events or breakers."""
    seen: list[Event] = []
    clock = FakeClock()

    def pipeline(origin: str) -> Pipeline:
        from buttress.http import default_pipeline

        built = default_pipeline(origin, clock=clock)
        return Pipeline(*built.policies, name=built.name, hooks=[seen.append])

    url = f"http://app:s3cret-pw@127.0.0.1:{server.port}/reset?token=s3cret-token"
    texts: list[str] = []
    with client(pipeline=pipeline, clock=clock) as http:
        for _ in range(3):
            try:
                http.get(url, headers={"Authorization": "Bearer s3cret-bearer"})
            except Exception as exc:  # noqa: BLE001 - every error's text is checked
                texts += [str(exc), repr(exc), *getattr(exc, "__notes__", [])]
        with deadline(1.0, clock=clock):
            clock.advance(2.0)
            with pytest.raises(DeadlineExceeded) as spent:
                http.get(url)
        texts += [str(spent.value)]
    assert any("circuit" in text.lower() for text in texts), texts
    texts += [repr(event.as_dict()) for event in seen]
    assert seen
    no_secret_in(*texts)


# ---------------------------------------------------------------- cancellation
async def cancel_when(task: asyncio.Task[Any], event: threading.Event) -> None:
    await await_for(event)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def assert_pool_free(http: httpx.AsyncClient) -> None:
    """With one connection in the pool, a new request gets it (pool wait bounded by 3 s)."""
    with deadline(3.0):
        assert (await http.get("/ok")).text == "ok"


@pytest.mark.parametrize("path", ["/stall-headers", "/stall-body", "/trickle-body"])
async def test_cancelling_the_caller_frees_the_connection(server: FaultServer, path: str) -> None:
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with async_client(base_url=server.url, limits=limits) as http:
        task = asyncio.create_task(http.get(path))
        await cancel_when(task, server.arrived[path])
        await await_for(server.hung_up[path])  # the stalled connection was closed
        await assert_pool_free(http)


async def test_cancelling_a_streamed_read_frees_the_connection(server: FaultServer) -> None:
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    got_headers = threading.Event()

    async def read() -> None:
        async with http.stream("GET", "/stall-body") as response:
            got_headers.set()
            async for _ in response.aiter_bytes():
                pass

    async with async_client(base_url=server.url, limits=limits) as http:
        task = asyncio.create_task(read())
        await cancel_when(task, got_headers)
        await await_for(server.hung_up["/stall-body"])
        await assert_pool_free(http)


async def test_cancelling_during_the_retry_backoff_frees_the_connection(
    server: FaultServer,
) -> None:
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    scheduled = threading.Event()

    def hook(event: Event) -> None:
        if isinstance(event, RetryScheduledEvent):
            scheduled.set()

    pipe = Pipeline(Retry(attempts=3, retry_on_result=is_retriable_response), hooks=[hook])
    async with async_client(base_url=server.url, limits=limits, pipeline=pipe) as http:
        task = asyncio.create_task(http.get("/busy"))  # 503, Retry-After: 2
        await cancel_when(task, scheduled)
        await assert_pool_free(http)  # the 503's connection went back to the pool
    assert server.hits["/busy"] == 1


async def test_cancelling_the_caller_frees_the_bulkhead_slot(server: FaultServer) -> None:
    pipe = Pipeline(Bulkhead(max_concurrent=1))
    async with async_client(base_url=server.url, pipeline=pipe) as http:
        task = asyncio.create_task(http.get("/stall-headers"))
        await cancel_when(task, server.arrived["/stall-headers"])
        await assert_pool_free(http)  # a full bulkhead would reject at once


async def test_cancelling_a_caller_waiting_for_the_pool(server: FaultServer) -> None:
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with async_client(base_url=server.url, limits=limits) as http:
        holder = asyncio.create_task(http.get("/stall-headers"))
        await await_for(server.arrived["/stall-headers"])
        waiter = asyncio.create_task(http.get("/ok"))
        await asyncio.sleep(0)  # let it reach the pool queue (ordering, not timing)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await cancel_when(holder, server.arrived["/stall-headers"])
        await assert_pool_free(http)


async def test_a_wait_for_a_pool_connection_ends_at_the_deadline(server: FaultServer) -> None:
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with async_client(base_url=server.url, limits=limits) as http:
        holder = asyncio.create_task(http.get("/stall-headers"))
        await await_for(server.arrived["/stall-headers"])
        started = time.monotonic()
        with deadline(1.0), pytest.raises(httpx.TimeoutException):
            await http.get("/ok")
        assert time.monotonic() - started < BOUND
        assert server.hits["/ok"] == 0
        await cancel_when(holder, server.arrived["/stall-headers"])
        await assert_pool_free(http)
