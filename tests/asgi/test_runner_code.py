"""The runner's generated request path, and the fast paths of the stages it calls most.

`tests/asgi/test_runner.py` proves that `harden()` behaves as the same stages stacked;
this module checks what the generated code adds on its own (one class per composition,
readable tracebacks, one code object per shape, a runner built twice) and that each fast
path answers exactly as the general code it skips.
"""

from __future__ import annotations

import asyncio
import ipaddress
import linecache
import threading
import time
import traceback
from typing import Any

import pytest

from buttress._clock import current_task
from buttress.asgi._context import found_client, resolve_client
from buttress.asgi._headers import SecurityHeadersMiddleware
from buttress.asgi._logging import _timestamp, route_template
from buttress.asgi._runner import Exchange, Hooks, Runner, Stage
from buttress.asgi._types import Receive, Scope, Send


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["path"] == "/boom":
        raise RuntimeError("handler failed")
    await send({"type": "http.response.start", "status": 200, "headers": [(b"a", b"1")]})
    await send({"type": "http.response.body", "body": b"hi"})


class Recorder(Stage):
    """A stage that writes down each moment, and answers or raises where asked."""

    def __init__(self, app: Any, name: str, log: list[str], *, answer: str = "") -> None:
        self.app = app
        self.name = name
        self.log = log
        self.answer = answer

    def stage_hooks(self) -> Hooks:
        return Hooks(
            arrive=self.arrive,
            start=self.start,
            end=self.end,
            finish=self.finish,
            fields=(f"seen_{self.name}",),
        )

    def arrive(self, ex: Any) -> Any:
        self.log.append(f"arrive {self.name}")
        setattr(ex, f"seen_{self.name}", True)
        if ex.scope["path"] == self.answer:
            return self._answer(ex)
        return None

    async def _answer(self, ex: Any) -> bool:
        await ex.send({"type": "http.response.start", "status": 403, "headers": []})
        await ex.send({"type": "http.response.body", "body": b""})
        return True

    def start(self, ex: Any, headers: list[tuple[bytes, bytes]]) -> None:
        self.log.append(f"start {self.name}")
        headers.append((b"x-" + self.name.encode(), b"1"))

    def end(self, ex: Any) -> None:
        self.log.append(f"end {self.name}")

    def finish(self, ex: Any) -> None:
        self.log.append(f"finish {self.name}")
        if self.name == "b" and ex.scope["path"] == "/finish-fails":
            raise ValueError("finish b failed")


async def call(app: Any, path: str) -> tuple[int, list[tuple[bytes, bytes]]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "headers": [], "client": None}
    await app(scope, receive, send)
    return sent[0]["status"], list(sent[0]["headers"])


def three(log: list[str], answer: str = "") -> Runner:
    c = Recorder(hello, "c", log)
    b = Recorder(c, "b", log, answer=answer)
    a = Recorder(b, "a", log)
    return Runner([a, b, c], hello)


async def test_the_generated_path_calls_each_hook_in_stack_order() -> None:
    log: list[str] = []
    status, headers = await call(three(log), "/")
    assert status == 200
    assert headers == [(b"a", b"1"), (b"x-c", b"1"), (b"x-b", b"1"), (b"x-a", b"1")]
    assert log == [
        *("arrive a", "arrive b", "arrive c"),
        *("start c", "start b", "start a"),
        *("end c", "end b", "end a"),
        *("finish c", "finish b", "finish a"),
    ]


async def test_an_answer_passes_the_outer_stages_only() -> None:
    log: list[str] = []
    status, headers = await call(three(log, answer="/no"), "/no")
    assert status == 403
    assert headers == [(b"x-a", b"1")]  # b answered: its own and c's hooks are not run
    assert log == ["arrive a", "arrive b", "start a", "end a", "finish a"]


async def test_every_finish_runs_and_the_first_error_is_raised() -> None:
    log: list[str] = []
    with pytest.raises(ValueError, match="finish b failed"):
        await call(three(log), "/finish-fails")
    assert log[-3:] == ["finish c", "finish b", "finish a"]


def test_one_class_per_composition_same_name_and_kind() -> None:
    log: list[str] = []
    first, second = three(log), three(log)
    assert type(first) is not type(second)
    assert type(first).__name__ == type(second).__name__ == "Runner"
    assert isinstance(first, Runner)
    assert repr(first) == "Runner([Recorder, Recorder, Recorder])"
    # the same shape shares one code object: compiled once, whatever the hooks
    assert type(first).__call__.__code__ is type(second).__call__.__code__
    assert first._exchange.send.__code__ is second._exchange.send.__code__
    assert issubclass(first._exchange, Exchange)


async def test_a_runner_built_again_is_composed_from_its_own_class() -> None:
    log: list[str] = []
    runner = three(log)
    compiled = type(runner)
    Runner.__init__(runner, runner.stages[:2], runner.stages[2])  # two stages now
    assert type(runner) is not compiled
    assert type(runner).__mro__[1] is Runner  # not a class made from a made class
    status, headers = await call(runner, "/")
    assert status == 200
    assert (b"x-a", b"1") in headers


async def test_tracebacks_show_the_generated_source() -> None:
    runner = Runner([SecurityHeadersMiddleware(hello)], hello)
    with pytest.raises(RuntimeError) as caught:
        await call(runner, "/boom")
    frames = traceback.extract_tb(caught.value.__traceback__)
    ours = [f for f in frames if f.filename.startswith("<buttress.asgi runner")]
    lines = {f.line for f in ours}
    assert "await self.app(scope, ex.receive, ex.send)" in lines  # where the handler raised
    assert "await self._failed(ex, exc, passed)" in lines  # where no stage took it
    assert linecache.getline(ours[0].filename, 1).startswith("async def __call__(")


# ----------------------------------------------------------------- the stages' fast paths
def test_security_headers_fast_path_agrees_with_the_general_one() -> None:
    stage = SecurityHeadersMiddleware(hello)
    cases: list[list[tuple[Any, bytes]]] = [
        [],
        [(b"content-type", b"application/json")],
        [(b"content-type", b"text/plain"), (b"server", b"uvicorn")],
        [(b"Content-Type", b"text/plain"), (b"X-Powered-By", b"php")],
        [(b"content-security-policy", b"default-src 'none'")],
        [(b"X-Frame-Options", b"sameorigin")],
        [(b"123", b"digits only"), (b"content-length", b"2")],
    ]
    for headers in cases:
        fast = list(headers)
        stage.start(None if stage.routes or stage.exact else _no_scope(), fast)
        # the general path, by hand: what is removed goes, what the response set wins
        names = {h[0].lower() for h in headers}
        kept = [h for h in headers if h[0].lower() not in stage.remove]
        kept += [h for h in stage.base if h[0] not in names]
        assert fast == kept, headers


def _no_scope() -> Any:
    class Ex:
        scope = {"path": "/"}

    return Ex()


def test_found_client_without_address_headers_is_resolve_client() -> None:
    nets = (ipaddress.ip_network("10.0.0.0/8"),)
    clients: list[Any] = [
        None,
        (),
        ("203.0.113.7", 1),
        ("2001:0db8::0001", 443),
        ("not-an-ip", 1),
        (b"203.0.113.7", 1),
        ("10.0.0.1", 0),
    ]
    for client in clients:
        for trusted in ((), nets):
            found: dict[bytes, list[bytes]] = {b"origin": [b"https://a.example"]}
            want = resolve_client(client, None, False, trusted)
            assert found_client({"client": client}, found, trusted) == want, client


def test_timestamps_across_seconds_and_milliseconds() -> None:
    base = 1_767_323_045.0  # 2026-01-02T03:04:05Z
    for offset in (0.0, 0.0004, 0.001, 0.999, 1.0, 1.5, 61.25, 3600.0, 0.0):
        now = base + offset
        whole, frac = divmod(int(now * 1000), 1000)
        want = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{frac:03d}Z"
        assert _timestamp(now) == want


def test_route_template_keeps_the_root_path() -> None:
    class Route:
        path = "/orders/{id}"

    assert route_template({"route": Route()}) == "/orders/{id}"
    assert route_template({"route": Route(), "root_path": ""}) == "/orders/{id}"
    assert route_template({"route": Route(), "root_path": "/api"}) == "/api/orders/{id}"


async def test_current_task_is_asyncio_s_in_every_loop_and_thread() -> None:
    assert current_task() is asyncio.current_task()
    task = asyncio.create_task(asyncio.sleep(0, result=None))
    inner = asyncio.create_task(_current())
    assert await inner is inner
    await task

    seen: list[Any] = []

    def other_thread() -> None:
        async def main() -> None:
            seen.append(current_task() is asyncio.current_task())

        asyncio.run(main())
        asyncio.run(main())  # a second loop in the same thread
        try:
            current_task()
        except RuntimeError:
            seen.append("no loop")

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join(10)
    assert seen == [True, True, "no loop"]
    assert current_task() is asyncio.current_task()  # back here: this loop again


async def _current() -> Any:
    return current_task()
