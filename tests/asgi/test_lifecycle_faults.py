"""Lifecycle faults under a real uvicorn: SIGTERM at each point, the start-up gate, readiness
with a dependency going away, load shedding with clients that leave.

Every test runs ``harden()`` around a small Starlette app (written to ``tmp_path``) in a
uvicorn subprocess on 127.0.0.1. The app appends one event per line to a file
(``start <id>``, ``streamed <id>``, ``end <id>``, ``hook``); requests held open wait for a
release file. Every wait is a bounded loop that reads that file, the server's output or a
probe's answer.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import PrivateRedis, free_port

pytestmark = pytest.mark.process

APP = """
import asyncio, os, time
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from buttress.asgi import HardenSettings, harden
from buttress.asgi.health import RedisCheck

DIR = Path(os.environ["LIFE_DIR"])
_LOG = os.open(DIR / "events.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def record(event):
    os.write(_LOG, f"{event}\\n".encode())


async def released(rid, request=None):
    for _ in range(3000):  # 30 s at most
        if (DIR / f"release-{rid}").exists():
            return True
        if request is not None and await request.is_disconnected():
            record(f"gone {rid}")
            return False
        await asyncio.sleep(0.01)
    return False


async def hold(request):
    rid = request.query_params["id"]
    record(f"start {rid}")
    await released(rid, request)
    record(f"end {rid}")
    return JSONResponse({"id": rid, "pad": "x" * 20000})


async def stream(request):
    rid = request.query_params["id"]
    record(f"start {rid}")

    async def body():
        yield b"first|"
        record(f"streamed {rid}")
        await released(rid)
        yield b"x" * 20000
        yield b"|last"
        record(f"end {rid}")

    return StreamingResponse(body(), media_type="text/plain")


async def forever(request):
    record(f"start {request.query_params['id']}")
    await asyncio.Event().wait()


async def stubborn(request):  # swallows the cancellation at the end of the grace
    record(f"start {request.query_params['id']}")
    for _ in range(2):
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            record("cancel swallowed")
    return JSONResponse({})


def blocking(request):  # a sync handler (Starlette runs it in a thread) stuck on I/O
    record(f"start {request.query_params['id']}")
    time.sleep(60)
    return JSONResponse({})


async def boom(request):
    rid = request.query_params["id"]
    record(f"start {rid}")

    async def body():
        yield b"first|"
        raise RuntimeError("failed after the response started")

    return StreamingResponse(body(), media_type="text/plain")


async def gauge(request):  # this request itself is in flight too
    return JSONResponse({
        "shed": app.parts.shedding.limiter.in_flight - 1,
        "shutdown": app.parts.shutdown.in_flight - 1,
    })


def startup_check():
    mode = os.environ.get("LIFE_STARTUP", "")
    if mode == "raise":
        raise RuntimeError("secret detail")
    if mode == "hang":
        time.sleep(60)
    return (DIR / "started").exists()


checks = [RedisCheck(url=os.environ["LIFE_REDIS"], name="cache")] if os.environ.get(
    "LIFE_REDIS"
) else []
routes = [Route("/hold", hold), Route("/stream", stream), Route("/forever", forever),
          Route("/blocking", blocking),
          Route("/stubborn", stubborn), Route("/boom", boom), Route("/gauge", gauge)]
app = harden(
    Starlette(routes=routes),
    HardenSettings(
        log_level="INFO",
        drain_delay=float(os.environ.get("LIFE_DRAIN", "0.5")),
        shutdown_grace=float(os.environ.get("LIFE_GRACE", "5")),
        close_timeout=2.0,
        health_cache_ttl=0,
        health_check_timeout=0.5,
        shed_max_in_flight=int(os.environ.get("LIFE_MAX", "50")),
        shed_adaptive=None,
    ),
    checks=checks,
    startup_checks=[startup_check] if os.environ.get("LIFE_STARTUP") else [],
)
app.parts.shutdown.add_close_hook(lambda: record("hook"), name="record")
"""


class Server:
    """uvicorn running APP; its event file, its output, and helpers to wait on both."""

    def __init__(self, tmp_path: Path, **env: str) -> None:
        self.dir = tmp_path
        (tmp_path / "lifeapp.py").write_text(APP)
        self.out = tmp_path / "server.out"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        environ = {**os.environ, "LIFE_DIR": str(tmp_path), **env}
        cmd = [
            sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(self.port),
            "--app-dir", str(tmp_path), "--no-access-log", "lifeapp:app",
        ]  # fmt: skip
        with self.out.open("wb") as out:
            self.proc = subprocess.Popen(cmd, env=environ, stdout=out, stderr=subprocess.STDOUT)

    def wait_up(self, path: str = "/health/live") -> None:
        self.until(lambda: self._status(path) == 200, f"{path} answering 200")

    def _status(self, path: str) -> int | None:
        assert self.proc.poll() is None, self.output()
        try:
            return httpx.get(self.base + path, timeout=2).status_code
        except httpx.HTTPError:
            return None

    def until(self, condition: Callable[[], object], what: str, limit: float = 10.0) -> None:
        deadline = time.monotonic() + limit
        for _ in range(2000):
            if condition():
                return
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        raise AssertionError(f"never saw {what}:\n{self.events()}\n{self.output()}")

    def events(self) -> list[str]:
        log = self.dir / "events.log"
        return log.read_text().splitlines() if log.exists() else []

    def saw(self, event: str) -> Callable[[], bool]:
        return lambda: event in self.events()

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def release(self, rid: str) -> None:
        (self.dir / f"release-{rid}").touch()

    def exit_within(self, limit: float) -> int:
        try:
            return self.proc.wait(limit)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running {limit} s later:\n{self.output()}") from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(wait: str = "/health/live", **env: str) -> Server:
        home = tmp_path / f"server{len(started)}"
        home.mkdir()
        server = Server(home, **env)
        started.append(server)
        server.wait_up(wait)
        return server

    yield start
    for server in started:
        server.stop()


class Call(threading.Thread):
    """One request in a thread of its own: its response, or the error that ended it."""

    def __init__(self, url: str, *, stream: bool = False) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stream = stream
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.body = b""
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            with httpx.stream("GET", self.url, timeout=30) as response:
                self.status = response.status_code
                self.headers = dict(response.headers)
                for chunk in response.iter_bytes():
                    self.body += chunk
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def result(self, limit: float = 15.0) -> Call:
        self.join(limit)
        assert not self.is_alive(), f"{self.url} still waiting"
        return self


def ready_status(server: Server) -> int | str:
    try:
        return httpx.get(server.base + "/health/ready", timeout=2).status_code
    except httpx.HTTPError as exc:
        return type(exc).__name__


# --------------------------------------------------------------------------- SIGTERM
def test_sigterm_lets_requests_before_and_after_their_response_started_finish(
    serve: Callable[..., Server],
) -> None:
    server = serve(LIFE_DRAIN="0.5", LIFE_GRACE="5")
    with httpx.Client(base_url=server.base, timeout=5) as keep_alive:
        assert keep_alive.get("/health/ready").status_code == 200  # an idle keep-alive
        before = Call(server.base + "/hold?id=a")  # response not started at the signal
        during = Call(server.base + "/stream?id=b")  # response started at the signal
        server.until(server.saw("start a"), "start a")
        server.until(server.saw("streamed b"), "streamed b")
        server.proc.send_signal(signal.SIGTERM)
        server.until(lambda: ready_status(server) == 503, "readiness 503")
        # in the drain delay a new request, on the idle keep-alive connection, is served
        served = keep_alive.get("/gauge")
        assert served.status_code == 200
        assert served.headers["connection"] == "close"
        assert served.json() == {"shed": 2, "shutdown": 2}
    server.until(lambda: "drain delay over" in server.output(), "the hand-off")
    server.release("a")
    server.release("b")
    assert before.result().error is None, before.error
    assert (before.status, len(before.body)) == (200, 20019)
    assert during.result().error is None, during.error
    assert during.status == 200
    assert during.body == b"first|" + b"x" * 20000 + b"|last"
    assert server.exit_within(5) == -signal.SIGTERM
    assert server.events().count("hook") == 1


def test_sigterm_after_the_response_a_new_connection_is_refused_not_reset(
    serve: Callable[..., Server],
) -> None:
    server = serve(LIFE_DRAIN="0", LIFE_GRACE="5")
    held = Call(server.base + "/hold?id=a")
    server.until(server.saw("start a"), "start a")
    server.proc.send_signal(signal.SIGTERM)
    server.until(lambda: "drain delay over" in server.output(), "the hand-off")
    # uvicorn closes its listener at its next tick: until then a newcomer is served (and
    # told to close), then refused (the client retries elsewhere); never reset, never a 500
    answers: list[object] = []
    for _ in range(200):
        try:
            answer = httpx.get(server.base + "/gauge", timeout=2)
        except httpx.ConnectError:
            break
        answers.append((answer.status_code, answer.headers.get("connection")))
        time.sleep(0.01)
    else:
        raise AssertionError(f"the listener stayed open: {answers}")
    assert all(answer == (200, "close") for answer in answers), answers
    server.release("a")
    assert held.result().status == 200
    assert server.exit_within(5) == -signal.SIGTERM
    assert server.events().count("hook") == 1


def test_a_request_that_never_ends_is_cut_at_the_grace(serve: Callable[..., Server]) -> None:
    server = serve(LIFE_DRAIN="0", LIFE_GRACE="1")
    waiting = Call(server.base + "/forever?id=a")  # no response yet: 503
    streaming = Call(server.base + "/stream?id=b")  # started: cut, never released
    server.until(server.saw("start a"), "start a")
    server.until(server.saw("streamed b"), "streamed b")
    server.proc.send_signal(signal.SIGTERM)
    assert server.exit_within(1 + 1 + 2 + 3) == -signal.SIGTERM
    assert waiting.result().status == 503, (waiting.status, waiting.error)
    assert waiting.headers["content-type"] == "application/problem+json"
    assert waiting.headers["retry-after"]
    assert streaming.result().error is not None  # the body was cut, not completed
    assert server.events().count("hook") == 1


def test_a_blocked_sync_handler_does_not_wedge_the_shutdown(
    serve: Callable[..., Server],
) -> None:
    server = serve(LIFE_DRAIN="0", LIFE_GRACE="1")
    stuck = Call(server.base + "/blocking?id=a")
    server.until(server.saw("start a"), "start a")
    server.proc.send_signal(signal.SIGTERM)
    # drain 0 + grace 1 + 1 s for the cancelled to answer + close 2, and a margin
    assert server.exit_within(1 + 1 + 2 + 3) in (-signal.SIGTERM, 128 + signal.SIGTERM)
    assert server.events().count("hook") == 1, server.output()
    stuck.result()
    assert stuck.status in (None, 503), stuck.status


def test_a_handler_swallowing_the_cancellation_does_not_wedge_the_shutdown(
    serve: Callable[..., Server],
) -> None:
    server = serve(LIFE_DRAIN="0", LIFE_GRACE="1")
    stuck = Call(server.base + "/stubborn?id=a")
    server.until(server.saw("start a"), "start a")
    server.proc.send_signal(signal.SIGTERM)
    assert server.exit_within(1 + 1 + 2 + 3) in (-signal.SIGTERM, 128 + signal.SIGTERM)
    assert "cancel swallowed" in server.events()
    assert server.events().count("hook") == 1, server.output()
    stuck.result()


def test_a_second_sigterm_exits_at_once(serve: Callable[..., Server]) -> None:
    server = serve(LIFE_DRAIN="5", LIFE_GRACE="5")
    held = Call(server.base + "/hold?id=a")
    server.until(server.saw("start a"), "start a")
    server.proc.send_signal(signal.SIGTERM)
    server.until(lambda: ready_status(server) == 503, "readiness 503")
    server.proc.send_signal(signal.SIGTERM)
    assert server.exit_within(2) == 128 + signal.SIGTERM
    assert "hook" not in server.events()
    held.result()


# --------------------------------------------------------------------------- start-up gate
def test_startup_gate_opens_once_its_check_passes(serve: Callable[..., Server]) -> None:
    server = serve(LIFE_STARTUP="file")
    for path in ("/health/startup", "/health/ready"):
        answer = httpx.get(server.base + path, timeout=2)
        assert answer.status_code == 503, path
        assert answer.json()["output"] == "starting"
    assert httpx.get(server.base + "/health/live", timeout=2).status_code == 200
    (server.dir / "started").touch()
    server.until(lambda: ready_status(server) == 200, "ready once started")
    assert httpx.get(server.base + "/health/startup", timeout=2).status_code == 200


@pytest.mark.parametrize(("mode", "output"), [("raise", "RuntimeError"), ("hang", "timed out")])
def test_a_startup_check_that_raises_or_hangs_is_bounded_and_reported(
    serve: Callable[..., Server], mode: str, output: str
) -> None:
    server = serve(LIFE_STARTUP=mode)
    for attempt in range(3):  # again: a hung check's thread is not piled up, nor a 500
        sent = time.monotonic()
        answer = httpx.get(server.base + "/health/startup", timeout=5)
        assert time.monotonic() - sent < 3.0  # the check's 0.5 s timeout, with a margin
        assert answer.status_code == 503
        body = answer.json()
        assert body["output"] == "starting"
        ((result,),) = body["checks"].values()
        assert result["status"] == "fail"
        assert output in result["output"] or (
            attempt and result["output"] == "previous probe still running"
        ), result
        assert "secret detail" not in answer.text
        assert httpx.get(server.base + "/health/ready", timeout=5).status_code == 503


# --------------------------------------------------------------------------- readiness
def test_readiness_names_a_dependency_that_went_down_and_recovers(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    redis = PrivateRedis(tmp_path)
    redis.start()
    try:
        server = serve(wait="/health/ready", LIFE_REDIS=redis.url)
        assert redis.stop()
        sent = time.monotonic()
        answer = httpx.get(server.base + "/health/ready", timeout=5)
        assert time.monotonic() - sent < 3.0
        assert answer.status_code == 503
        (result,) = [v[0] for k, v in answer.json()["checks"].items() if k.startswith("cache")]
        assert result["status"] == "fail"
        redis.start()
        server.until(lambda: ready_status(server) == 200, "ready after redis is back")
    finally:
        redis.close()


# --------------------------------------------------------------------------- load shedding
def gauge(server: Server) -> dict[str, int]:
    return dict(httpx.get(server.base + "/gauge", timeout=2).json())


def test_overload_sheds_the_excess_and_the_limit_recovers(serve: Callable[..., Server]) -> None:
    server = serve(LIFE_MAX="3")
    held = [Call(server.base + f"/hold?id={n}") for n in range(2)]
    for n in range(2):
        server.until(server.saw(f"start {n}"), f"start {n}")
    # with /gauge's own slot the limit of 3 is reached: the excess is refused at once
    with httpx.Client(base_url=server.base, timeout=5) as http:
        blocker = Call(server.base + "/hold?id=2")
        server.until(server.saw("start 2"), "start 2")
        for _ in range(5):
            shed = http.get("/hold?id=never")
            assert shed.status_code == 503
            assert shed.headers["content-type"] == "application/problem+json"
            assert shed.headers["retry-after"] == "1"
            assert shed.json()["code"] == "overloaded"
        assert http.get("/health/ready").status_code == 200  # exempt
    assert "start never" not in server.events()
    for n in range(3):
        server.release(str(n))
    for call in [*held, blocker]:
        assert call.result().status == 200
    server.until(lambda: gauge(server) == {"shed": 0, "shutdown": 0}, "slots back")
    more = [Call(server.base + f"/hold?id=m{n}") for n in range(2)]
    for n in range(2):
        server.until(server.saw(f"start m{n}"), f"start m{n}")
        server.release(f"m{n}")
    assert all(call.result().status == 200 for call in more)


def test_client_gone_while_admitted_gives_the_slot_back(serve: Callable[..., Server]) -> None:
    server = serve(LIFE_MAX="2")
    with httpx.Client(base_url=server.base, timeout=5) as http:
        # the client leaves while the handler runs, before its response started
        with contextlib.suppress(httpx.TimeoutException):
            http.get("/hold?id=a", timeout=httpx.Timeout(5, read=0.3))
    server.until(server.saw("gone a"), "the handler seeing the client gone")
    server.until(lambda: gauge(server) == {"shed": 0, "shutdown": 0}, "slots back")
    # the client leaves in the middle of a streamed body
    with httpx.stream("GET", server.base + "/stream?id=b", timeout=5) as response:
        next(response.iter_raw())
    server.release("b")  # Starlette stops the stream at the disconnect: no "end b"
    server.until(lambda: gauge(server) == {"shed": 0, "shutdown": 0}, "slots back")


def test_a_handler_raising_after_its_response_started_frees_its_slot(
    serve: Callable[..., Server],
) -> None:
    server = serve(LIFE_MAX="2")
    failed = Call(server.base + "/boom?id=a").result()
    assert failed.status == 200  # the status was sent before the failure: the body is cut
    assert failed.error is not None
    server.until(lambda: gauge(server) == {"shed": 0, "shutdown": 0}, "slots back")
    ok = Call(server.base + "/hold?id=b")
    server.until(server.saw("start b"), "start b")
    server.release("b")
    assert ok.result().status == 200
