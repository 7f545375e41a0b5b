"""GracefulShutdown: drain on a signal, finish in-flight requests, close hooks in reverse order.

Unit tests drive the ASGI lifespan with raw messages, requests through
``httpx.ASGITransport``, and time with `FakeClock`; the handler is called directly (or a
real SIGUSR1 is sent to this process). Process tests run the app of ``_shutdown_app.py``
under a real uvicorn (and gunicorn with one uvicorn worker) on 127.0.0.1 and send real
signals. Every loop is bounded in count and in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from buttress.asgi import _shutdown
from buttress.asgi._runner import Runner
from buttress.asgi.middleware import ErrorMiddleware, GracefulShutdown, RequestContextMiddleware
from buttress.errors import ConfigurationError
from buttress.testing import FakeClock
from tests.conftest import free_port

APP_DIR = Path(__file__).parent


# --------------------------------------------------------------------------- helpers
async def settle(rounds: int = 30) -> None:
    """Let every ready task run (a bounded number of loop iterations)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def advance(clock: FakeClock, seconds: float) -> None:
    await settle()
    clock.advance(seconds)
    await settle()


class Lifespan:
    """Plays the server's side of the lifespan protocol against an app."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent: list[dict[str, Any]] = []
        self.task: asyncio.Task[None] | None = None

    async def _send(self, message: Any) -> None:
        self.sent.append(dict(message))

    async def _wait_for(self, count: int) -> dict[str, Any]:
        for _ in range(500):
            if len(self.sent) >= count:
                return self.sent[count - 1]
            await asyncio.sleep(0.001)
        raise AssertionError(f"no lifespan answer; sent so far: {self.sent}")

    async def startup(self) -> dict[str, Any]:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        self.task = asyncio.create_task(self.app(scope, self.inbox.get, self._send))
        await self.inbox.put({"type": "lifespan.startup"})
        return await self._wait_for(1)

    async def begin_shutdown(self) -> None:
        await self.inbox.put({"type": "lifespan.shutdown"})

    async def shutdown(self) -> dict[str, Any]:
        await self.begin_shutdown()
        return await self._wait_for(2)


def events_app(events: list[str]) -> Starlette:
    """A Starlette app with its own lifespan and a slow route."""

    release = asyncio.Event()

    async def ok(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    async def hang(request: Request) -> JSONResponse:
        events.append("hang-start")
        await release.wait()
        return JSONResponse({"ok": True})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("app-startup")
        yield
        events.append("app-shutdown")

    app = Starlette(routes=[Route("/ok", ok), Route("/hang", hang)], lifespan=lifespan)
    app.state.release = release
    return app


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


@pytest.fixture(params=["alone", "composed"])
def front(request: pytest.FixtureRequest) -> Callable[[GracefulShutdown], Any]:
    """The shutdown stage alone, or composed with other stages in one runner (as harden)."""
    if request.param == "alone":
        return lambda shutdown: shutdown
    return lambda shutdown: Runner(
        [RequestContextMiddleware(shutdown.app), shutdown, ErrorMiddleware(shutdown.app)],
        shutdown.app,
    )


@pytest.fixture
def usr1() -> Iterator[list[int]]:
    """SIGUSR1 with a recording handler standing in for the server's (uvicorn's) own."""
    calls: list[int] = []
    before = signal.signal(signal.SIGUSR1, lambda signum, frame: calls.append(signum))
    try:
        yield calls
    finally:
        signal.signal(signal.SIGUSR1, before)


# --------------------------------------------------------------------------- options
@pytest.mark.parametrize(
    "options",
    [
        {"drain_delay": -1},
        {"drain_delay": float("nan")},
        {"drain_delay": True},
        {"drain_delay": "5"},
        {"grace": float("inf")},
        {"close_timeout": 0},
        {"hook_timeout": 0},
        {"close_timeout": 2, "hook_timeout": 3},
        {"signals": (signal.SIGKILL,)},
        {"signals": (99999,)},
        {"ready_path": "health"},
        {"clock": object()},
    ],
)
def test_bad_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="GracefulShutdown"):
        GracefulShutdown(events_app([]), **options)


def test_defaults_and_repr() -> None:
    shutdown = GracefulShutdown(events_app([]))
    assert (shutdown.drain_delay, shutdown.grace, shutdown.close_timeout) == (5.0, 25.0, 10.0)
    assert shutdown.hook_timeout == 5.0
    assert shutdown.signals == (signal.SIGTERM, signal.SIGINT)
    assert not shutdown.draining
    assert shutdown.in_flight == 0
    assert "drain_delay=5" in repr(shutdown)
    with pytest.raises(ConfigurationError):
        shutdown.add_close_hook("not callable")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- lifespan
async def test_wraps_the_apps_own_lifespan_and_runs_hooks_in_reverse(clock: FakeClock) -> None:
    events: list[str] = []
    shutdown = GracefulShutdown(events_app(events), signals=(), clock=clock)
    shutdown.add_close_hook(lambda: events.append("hook 1"), name="one")

    async def two() -> None:
        events.append("hook 2")

    shutdown.add_close_hook(two)
    shutdown.add_close_hook(lambda: events.append("hook 3"), in_thread=False)
    server = Lifespan(shutdown)
    assert await server.startup() == {"type": "lifespan.startup.complete"}
    assert events == ["app-startup"]
    assert await server.shutdown() == {"type": "lifespan.shutdown.complete"}
    assert events == ["app-startup", "app-shutdown", "hook 3", "hook 2", "hook 1"]
    assert shutdown.draining  # the server's own shutdown also turns readiness off


async def test_app_without_lifespan_support_keeps_working(clock: FakeClock) -> None:
    async def bare(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError("only http")
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    closed: list[str] = []
    shutdown = GracefulShutdown(bare, signals=(), clock=clock)
    shutdown.add_close_hook(lambda: closed.append("pool"))
    server = Lifespan(shutdown)
    assert (await server.startup())["type"] == "lifespan.startup.complete"
    async with client(shutdown) as http:
        assert (await http.get("/")).status_code == 204
    assert (await server.shutdown())["type"] == "lifespan.shutdown.complete"
    assert closed == ["pool"]


async def test_startup_failure_is_passed_on_and_signals_restored(usr1: list[int]) -> None:
    async def failing(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})

    before = signal.getsignal(signal.SIGUSR1)
    shutdown = GracefulShutdown(failing, signals=(signal.SIGUSR1,))
    server = Lifespan(shutdown)
    assert await server.startup() == {"type": "lifespan.startup.failed", "message": "no database"}
    assert signal.getsignal(signal.SIGUSR1) is before


async def test_starlette_startup_error_fails_the_startup(clock: FakeClock) -> None:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        raise RuntimeError("cannot reach the database")
        yield

    shutdown = GracefulShutdown(Starlette(lifespan=lifespan), signals=(), clock=clock)
    answer = await Lifespan(shutdown).startup()
    assert answer["type"] == "lifespan.startup.failed"
    assert "cannot reach the database" in answer["message"]


async def test_app_shutdown_failure_is_reported_after_the_hooks(clock: FakeClock) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.failed", "message": "flush failed"})

    closed: list[str] = []
    shutdown = GracefulShutdown(app, signals=(), clock=clock)
    shutdown.add_close_hook(lambda: closed.append("pool"))
    server = Lifespan(shutdown)
    await server.startup()
    assert await server.shutdown() == {
        "type": "lifespan.shutdown.failed",
        "message": "flush failed",
    }
    assert closed == ["pool"]


async def test_websockets_count_as_in_flight(clock: FakeClock) -> None:
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def ws(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await receive()

    async def send(message: Any) -> None:
        pass

    shutdown = GracefulShutdown(ws, signals=(), clock=clock)
    await inbox.put({"type": "websocket.connect"})
    task = asyncio.create_task(shutdown({"type": "websocket", "path": "/ws"}, inbox.get, send))
    await settle()
    assert shutdown.in_flight == 1
    await inbox.put({"type": "websocket.disconnect", "code": 1000})
    await asyncio.wait_for(task, 2)
    assert shutdown.in_flight == 0


async def test_other_scopes_pass_through() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    await GracefulShutdown(app, signals=())({"type": "custom"}, None, None)  # type: ignore[arg-type]
    assert seen == ["custom"]


# --------------------------------------------------------------------------- signals
async def test_draining_flips_inside_the_handler_and_readiness_answers_503(
    clock: FakeClock,
    front: Callable[[GracefulShutdown], Any],
) -> None:
    drained: list[bool] = []
    shutdown = GracefulShutdown(events_app([]), signals=(), ready_path="/ready", clock=clock)
    served = front(shutdown)
    shutdown.on_drain.append(lambda: drained.append(shutdown.draining))
    server = Lifespan(served)
    await server.startup()
    async with client(served) as http:
        ready = await http.get("/ready")
        assert (ready.status_code, ready.json()) == (200, {"status": "pass"})
        assert ready.headers["content-type"] == "application/health+json"
        shutdown.handle_signal(signal.SIGTERM, None)
        # no await in between: the flag and the callbacks are set in the handler itself
        assert shutdown.draining
        assert drained == [True]
        ready = await http.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["status"] == "fail"
        assert ready.headers["connection"] == "close"
        assert (await http.head("/ready")).content == b""
        # still serving during the drain delay, asking keep-alive clients to reconnect
        ok = await http.get("/ok")
        assert ok.status_code == 200
        assert ok.headers["connection"] == "close"
    await server.shutdown()


async def test_real_signal_drains_then_hands_off_to_the_previous_handler(
    clock: FakeClock, usr1: list[int]
) -> None:
    events: list[str] = []
    app = events_app(events)
    shutdown = GracefulShutdown(
        app, drain_delay=5, grace=25, signals=(signal.SIGUSR1,), clock=clock
    )
    server = Lifespan(shutdown)
    await server.startup()
    assert signal.getsignal(signal.SIGUSR1) == shutdown.handle_signal
    os.kill(os.getpid(), signal.SIGUSR1)  # delivered to this (main) thread at once
    await settle()
    assert shutdown.draining
    assert usr1 == []
    await advance(clock, 4.9)
    assert usr1 == []  # still inside the drain delay
    await advance(clock, 0.2)
    assert usr1 == [signal.SIGUSR1]  # handed to the server: it stops accepting now
    assert (await server.shutdown())["type"] == "lifespan.shutdown.complete"
    assert signal.getsignal(signal.SIGUSR1) != shutdown.handle_signal  # restored
    assert events == ["app-startup", "app-shutdown"]


async def test_in_flight_requests_finish_within_the_grace_then_are_cancelled(
    clock: FakeClock, front: Callable[[GracefulShutdown], Any], usr1: list[int]
) -> None:
    events: list[str] = []
    app = events_app(events)
    shutdown = GracefulShutdown(
        app, drain_delay=1, grace=10, signals=(signal.SIGUSR1,), clock=clock
    )
    served = front(shutdown)
    server = Lifespan(served)
    await server.startup()
    async with client(served) as http:
        hanging = asyncio.create_task(http.get("/hang"))
        await settle()
        assert events[-1] == "hang-start"
        assert shutdown.in_flight == 1
        shutdown.handle_signal(signal.SIGUSR1, None)
        await advance(clock, 1.0)
        assert usr1 == [signal.SIGUSR1]
        await advance(clock, 9.9)
        assert not hanging.done()
        assert shutdown.in_flight == 1
        await advance(clock, 0.2)
        response = await asyncio.wait_for(hanging, 2)
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "1"
    assert response.json()["code"] == "overloaded"
    assert shutdown.in_flight == 0
    assert (await server.shutdown())["type"] == "lifespan.shutdown.complete"


async def test_a_request_cancelled_mid_response_is_left_to_the_server(
    clock: FakeClock, front: Callable[[GracefulShutdown], Any]
) -> None:
    async def streaming(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        await asyncio.Event().wait()

    shutdown = GracefulShutdown(streaming, drain_delay=0, grace=1, signals=(), clock=clock)

    served = front(shutdown)
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:  # like every ASGI server: one response per request
        if sent and message["type"] == "http.response.start":
            raise RuntimeError("response already started")
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "method": "GET", "path": "/stream", "headers": []}
    pending = asyncio.create_task(served(scope, receive, send))
    await settle()
    assert shutdown.in_flight == 1
    shutdown.trigger()
    await advance(clock, 1.1)
    await asyncio.wait_for(pending, 2)  # returns normally: the server closes the connection
    assert not pending.cancelled()
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert shutdown.in_flight == 0


async def test_requests_that_finish_in_time_are_not_touched(
    clock: FakeClock, front: Callable[[GracefulShutdown], Any]
) -> None:
    events: list[str] = []
    app = events_app(events)
    shutdown = GracefulShutdown(app, drain_delay=0, grace=10, signals=(), clock=clock)
    served = front(shutdown)
    server = Lifespan(served)
    await server.startup()
    async with client(served) as http:
        pending = asyncio.create_task(http.get("/hang"))
        await settle()
        shutdown.trigger()
        await advance(clock, 5)
        app.state.release.set()
        response = await asyncio.wait_for(pending, 2)
    assert response.status_code == 200
    assert shutdown.in_flight == 0
    await server.shutdown()


async def test_server_stopping_by_itself_still_waits_for_in_flight(
    clock: FakeClock, front: Callable[[GracefulShutdown], Any]
) -> None:
    events: list[str] = []
    app = events_app(events)
    shutdown = GracefulShutdown(app, grace=3, signals=(), clock=clock)
    served = front(shutdown)
    server = Lifespan(served)
    await server.startup()
    async with client(served) as http:
        pending = asyncio.create_task(http.get("/hang"))
        await settle()
        await server.begin_shutdown()  # no signal: e.g. uvicorn --limit-max-requests
        await settle()
        assert shutdown.draining
        assert "app-shutdown" not in events
        await advance(clock, 3.1)
        assert (await asyncio.wait_for(pending, 2)).status_code == 503
    assert (await server._wait_for(2))["type"] == "lifespan.shutdown.complete"
    assert events[-1] == "app-shutdown"


async def test_second_signal_exits_at_once(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    exits: list[int] = []
    monkeypatch.setattr(_shutdown, "_hard_exit", exits.append)
    shutdown = GracefulShutdown(events_app([]), signals=(), clock=clock)
    server = Lifespan(shutdown)
    await server.startup()
    shutdown.handle_signal(signal.SIGTERM, None)
    assert exits == []
    shutdown.handle_signal(signal.SIGINT, None)
    assert exits == [128 + signal.SIGINT]
    shutdown.trigger(signal.SIGTERM)
    assert exits == [128 + signal.SIGINT, 128 + signal.SIGTERM]
    await server.shutdown()


# --------------------------------------------------------------------------- close hooks
async def test_failing_and_hanging_hooks_do_not_block_the_others(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[str] = []
    release = threading.Event()
    shutdown = GracefulShutdown(
        events_app([]), close_timeout=10, hook_timeout=2, signals=(), clock=clock
    )

    def blocked_sync() -> None:  # registered first: runs last
        ran.append("sync-start")
        release.wait(5)

    async def hanging_async() -> None:
        ran.append("async-start")
        await asyncio.Event().wait()

    def failing() -> None:
        ran.append("failing")
        raise RuntimeError("pool already closed")

    shutdown.add_close_hook(lambda: ran.append("first-registered"))
    shutdown.add_close_hook(blocked_sync)
    shutdown.add_close_hook(hanging_async)
    shutdown.add_close_hook(failing)
    server = Lifespan(shutdown)
    await server.startup()
    await server.begin_shutdown()
    try:
        await settle()
        assert ran == ["failing", "async-start"]
        await advance(clock, 2.0)  # the async hook is abandoned at its limit
        for _ in range(200):  # the sync hook starts in its own thread
            if "sync-start" in ran:
                break
            await asyncio.sleep(0.005)
        assert ran == ["failing", "async-start", "sync-start"]
        await advance(clock, 2.0)  # so is the blocked sync one
        reply = await server._wait_for(2)
    finally:
        release.set()
    assert reply["type"] == "lifespan.shutdown.complete"
    assert ran == ["failing", "async-start", "sync-start", "first-registered"]
    logged = [r.getMessage() for r in caplog.records if r.name == "buttress.asgi.shutdown"]
    assert any(m.endswith("failing failed") for m in logged), logged
    assert any("hanging_async did not finish within 2.0 s; abandoned" in m for m in logged)
    assert any("blocked_sync did not finish within 2.0 s; abandoned" in m for m in logged)


async def test_close_limit_is_hard_for_all_hooks(clock: FakeClock) -> None:
    ran: list[str] = []
    shutdown = GracefulShutdown(
        events_app([]), close_timeout=3, hook_timeout=2, signals=(), clock=clock
    )

    async def hangs() -> None:
        ran.append("hangs")
        await asyncio.Event().wait()

    shutdown.add_close_hook(lambda: ran.append("never"))
    shutdown.add_close_hook(hangs)
    shutdown.add_close_hook(hangs)
    server = Lifespan(shutdown)
    await server.startup()
    await server.begin_shutdown()
    await advance(clock, 2.0)  # the first hang uses 2 s of the 3 s
    await advance(clock, 1.0)  # the second gets the 1 s left; nothing is left for the last
    reply = await server._wait_for(2)
    assert reply["type"] == "lifespan.shutdown.complete"
    assert ran == ["hangs", "hangs"]


async def test_hanging_app_shutdown_is_abandoned(clock: FakeClock) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await asyncio.Event().wait()

    closed: list[str] = []
    shutdown = GracefulShutdown(app, close_timeout=4, signals=(), clock=clock)
    shutdown.add_close_hook(lambda: closed.append("pool"), in_thread=False)
    server = Lifespan(shutdown)
    await server.startup()
    await server.begin_shutdown()
    await advance(clock, 2.0)  # hook_timeout = close_timeout / 2
    assert (await server._wait_for(2))["type"] == "lifespan.shutdown.complete"
    assert closed == ["pool"]


async def test_sync_hook_returning_an_awaitable_is_awaited(clock: FakeClock) -> None:
    closed: list[str] = []

    class Client:
        async def aclose(self) -> None:
            closed.append("client")

    c = Client()
    shutdown = GracefulShutdown(events_app([]), signals=(), clock=clock)
    shutdown.add_close_hook(lambda: c.aclose())
    server = Lifespan(shutdown)
    await server.startup()
    assert (await server.shutdown())["type"] == "lifespan.shutdown.complete"
    assert closed == ["client"]


# --------------------------------------------------------------------------- real servers
class Served:
    """A server process running _shutdown_app, its event log and its output."""

    def __init__(self, tmp_path: Path, server: str, **env: str) -> None:
        self.log = tmp_path / "events.log"
        self.out = tmp_path / "server.out"
        environ = {**os.environ, "SHUTDOWN_LOG": str(self.log), **env}
        if server == "uvicorn":
            self.port = free_port()
            cmd = [
                sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(self.port),
                "--app-dir", str(APP_DIR), "--no-access-log", "_shutdown_app:app",
            ]  # fmt: skip
            pass_fds: tuple[int, ...] = ()
            listener = None
        else:  # gunicorn, handed a listening socket: no port race
            listener = socket.socket()
            listener.bind(("127.0.0.1", 0))
            listener.listen(128)
            listener.set_inheritable(True)
            self.port = listener.getsockname()[1]
            pass_fds = (listener.fileno(),)
            cmd = [
                sys.executable, "-m", "gunicorn", "--bind", f"fd://{listener.fileno()}",
                "--workers", "1", "--worker-class", "uvicorn_worker.UvicornWorker",
                "--graceful-timeout", "15", "--chdir", str(APP_DIR), "_shutdown_app:app",
            ]  # fmt: skip
            if _gunicorn_has("control_socket_disable"):  # gunicorn >= 24 opens one in ~
                cmd.insert(-1, "--no-control-socket")
        with self.out.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd, env=environ, stdout=out, stderr=subprocess.STDOUT, pass_fds=pass_fds
            )
        if listener is not None:
            listener.close()  # the server holds the only copy: it alone decides when to stop
        self.base = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, limit: float = 15.0) -> None:
        deadline = time.monotonic() + limit
        for _ in range(1000):
            assert self.proc.poll() is None, self.output()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base + "/health/ready", timeout=1).status_code == 200:
                    return
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        raise AssertionError(f"server not ready in {limit} s:\n{self.output()}")

    def events(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def _gunicorn_has(setting: str) -> bool:
    from gunicorn.config import KNOWN_SETTINGS

    return any(s.name == setting for s in KNOWN_SETTINGS)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(server: str, **env: str) -> Served:
        served = Served(tmp_path, server, **env)
        started.append(served)
        served.wait_ready()
        return served

    yield start
    for served in started:
        served.stop()


async def sigterm_under_load(served: Served, drain: float) -> None:
    """4 workers for ~2 s with a readiness probe every ~10 ms; SIGTERM after 0.6 s."""
    results: list[tuple[str, float, int | str]] = []  # (id, sent at, status or error)
    probes: list[tuple[float, int | str]] = []
    start = time.monotonic()
    duration = 2.0
    killed_at = 0.0

    async with (
        httpx.AsyncClient(base_url=served.base, timeout=5) as http,
        httpx.AsyncClient(base_url=served.base, timeout=1) as prober,
    ):

        async def worker(n: int) -> None:
            for i in range(400):
                if time.monotonic() - start > duration:
                    return
                rid, sent = f"{n}-{i}", time.monotonic()
                try:
                    r = await http.get("/work", params={"id": rid})
                    results.append((rid, sent, r.status_code))
                except httpx.HTTPError as exc:
                    results.append((rid, sent, type(exc).__name__))
                    await asyncio.sleep(0.02)

        async def probe() -> None:
            for _ in range(1000):
                if time.monotonic() - start > duration:
                    return
                try:
                    r = await prober.get("/health/ready")
                    probes.append((time.monotonic(), r.status_code))
                except httpx.HTTPError as exc:
                    probes.append((time.monotonic(), type(exc).__name__))
                await asyncio.sleep(0.01)

        async def terminate() -> None:
            nonlocal killed_at
            await asyncio.sleep(0.6)
            killed_at = time.monotonic()
            served.proc.send_signal(signal.SIGTERM)

        await asyncio.gather(*(worker(n) for n in range(4)), probe(), terminate())

    returncode = await asyncio.to_thread(served.proc.wait, 15)
    output = served.output()
    events = served.events()

    # readiness: 200 before the signal, 503 within 100 ms of it, never 200 again
    first_503 = next(t for t, status in probes if status == 503)
    latency = first_503 - killed_at
    print(f"readiness flipped {latency * 1000:.1f} ms after SIGTERM")  # shown with -s
    assert latency < 0.1, (latency, probes)
    assert all(status == 200 for t, status in probes if t < killed_at)
    assert all(status != 200 for t, status in probes if t > first_503), probes

    # no accepted request lost: every request the handler started got its 200
    started = {line.split()[1] for line in events if line.startswith("start ")}
    answered = {rid for rid, _, status in results if status == 200}
    assert started, output
    assert started <= answered, (started - answered, results, output)
    assert all(status in (200, "ConnectError") or rid not in started for rid, _, status in results)
    # only the hand-off (after the drain delay) may refuse: the drain itself serves normally
    early = [
        (rid, round(sent - killed_at, 3), status)
        for rid, sent, status in results
        if status != 200 and sent <= killed_at + drain * 0.8
    ]
    assert not early, (early, drain)
    served_in_drain = [
        rid for rid, sent, status in results
        if status == 200 and killed_at + 0.05 < sent < killed_at + drain - 0.05
    ]  # fmt: skip
    assert served_in_drain, results

    # the lifespan went through to the app, then the close hooks ran in reverse order
    assert events[0] == "app-startup"
    assert events[-3:] == ["app-shutdown", "hook second", "hook first"], output
    # uvicorn re-raises the signal after a graceful stop (the process ends "killed by
    # SIGTERM"); gunicorn's arbiter exits 0 once its worker is gone
    assert returncode in (0, -signal.SIGTERM), output


@pytest.mark.process
async def test_sigterm_under_load_uvicorn(serve: Callable[..., Served]) -> None:
    served = serve("uvicorn", SHUTDOWN_DRAIN="0.5", SHUTDOWN_GRACE="5", SHUTDOWN_WORK="0.3")
    await sigterm_under_load(served, drain=0.5)
    assert served.proc.returncode == -signal.SIGTERM


@pytest.mark.process
async def test_sigterm_under_load_gunicorn_uvicorn_worker(serve: Callable[..., Served]) -> None:
    import gunicorn  # noqa: F401 - a test dependency: missing means a broken install, not a skip
    import uvicorn_worker  # noqa: F401

    served = serve("gunicorn", SHUTDOWN_DRAIN="0.5", SHUTDOWN_GRACE="5", SHUTDOWN_WORK="0.3")
    await sigterm_under_load(served, drain=0.5)
    assert served.proc.returncode == 0


@pytest.mark.process
def test_second_sigint_exits_at_once_under_uvicorn(serve: Callable[..., Served]) -> None:
    served = serve("uvicorn", SHUTDOWN_DRAIN="5", SHUTDOWN_GRACE="5")
    slow = threading.Thread(
        target=_quietly, args=(lambda: httpx.get(served.base + "/slow", timeout=5),), daemon=True
    )
    slow.start()
    for _ in range(200):
        if "start slow" in served.events():
            break
        time.sleep(0.01)
    assert "start slow" in served.events()
    served.proc.send_signal(signal.SIGINT)
    for _ in range(100):  # the first SIGINT was handled: draining
        if httpx.get(served.base + "/health/ready", timeout=1).status_code == 503:
            break
        time.sleep(0.01)
    sent = time.monotonic()
    served.proc.send_signal(signal.SIGINT)
    returncode = served.proc.wait(5)
    elapsed = time.monotonic() - sent
    assert elapsed < 1.0, elapsed
    assert returncode == 128 + signal.SIGINT, served.output()
    assert "again during graceful shutdown: exiting at once" in served.output()
    assert not any(e.startswith("hook") for e in served.events())  # nothing else ran
    slow.join(6)


def _quietly(call: Callable[[], object]) -> None:
    with contextlib.suppress(httpx.HTTPError):
        call()
