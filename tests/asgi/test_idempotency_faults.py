"""Idempotency under faults: a fault injected at every point a keyed request can break.

The invariants (docs/shared-state.md, "What is guaranteed"):

* **at most once**: whatever the fault and wherever it lands, the handler's side effect
  happens exactly once per key once the client has retried to a final answer;
* **never truncated**: every response a client receives is whole (a stored response, or
  a problem+json), never a start followed by the end of the connection;
* **never wedged**: once the faulted request is over, the key is not held by nobody
  (one documented exception: a store that executed ``begin`` but whose reply was lost
  holds the key for one lease, since nobody knows the token).

Each case runs over every store (memory, SQLite, and the real Redis and PostgreSQL). The
handler does its work in a thread, like the demo's SQLite insert, so cancelling the
request cannot undo it. A store proxy stops at one point (``before`` or ``after`` the real
call of ``abegin``, ``arenew``, ``acomplete`` or ``arelease``), the handler can be held in
its thread, and the client's ``send`` can be held at the response start or body; there
the fault is injected:

* ``deadline``: the request deadline fires (`DeadlineMiddleware` on a `FakeClock`, whose
  advance fires it at exactly that point): the client gets a 504, or its whole response;
* ``cancel``: the server cancels the request (what some servers do when the client goes);
* ``gone``: the client closes its connection and the request goes on (what uvicorn does):
  ``receive`` says ``http.disconnect`` and ``send`` raises, as some servers' does;
* ``fail``: the store call raises `BackendError` (before the real call: an outage; after
  it: a lost reply).

Nothing sleeps for the deadline or the lease: both run on fake clocks.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest

from buttress.asgi._deadline import DeadlineMiddleware
from buttress.asgi._idempotency import IdempotencyMiddleware
from buttress.errors import BackendError, DeadlineExceeded
from buttress.stores import IdempotencyStore
from buttress.testing import FakeClock
from tests.conftest import StoreFactory

LEASE = 30.0
STORE_CALLS = ("abegin", "arenew", "acomplete", "arelease")
BOUND = 10.0  # seconds any one step of a case may take before the case fails


@dataclass
class Point:
    """Where the fault lands: a store call (before or after the real one), the handler's
    thread, or the client's send (at the response start or its body)."""

    where: str
    when: str = ""

    def __str__(self) -> str:
        return f"{self.where}-{self.when}" if self.when else self.where


class Faults:
    """A store proxy that stops (or fails) once, at one point."""

    def __init__(self, store: IdempotencyStore, point: Point, fail: bool) -> None:
        self.store = store
        self.point = point
        self.fail = fail
        self.armed = True
        self.reached = asyncio.Event()
        self.resume = asyncio.Event()

    async def _at(self, name: str, when: str) -> None:
        if self.armed and self.point.where == name and self.point.when == when:
            self.armed = False
            if self.fail:
                raise BackendError(f"injected: {name} failed {when} the real call")
            self.reached.set()
            await self.resume.wait()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.store, name)
        if name not in STORE_CALLS:
            return method

        async def call(*args: Any) -> Any:
            await self._at(name, "before")
            result = await method(*args)
            await self._at(name, "after")
            return result

        return call


@dataclass
class Orders:
    """The handler: one order per run, inserted in a worker thread (it cannot be undone by
    cancelling the request). The first run answers 503 without inserting when asked to,
    so that the key is released."""

    effects: Counter[str] = field(default_factory=Counter)
    runs: int = 0
    first_fails: bool = False
    gate: threading.Event = field(default_factory=threading.Event)
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def insert(self, key: str) -> int:
        if not self.gate.wait(BOUND):
            raise RuntimeError("the test never released the handler")
        with self.lock:
            self.effects[key] += 1
            return sum(self.effects.values())

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.runs += 1
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        key = dict(scope["headers"])[b"idempotency-key"].decode()
        if self.first_fails and self.runs == 1:
            payload, status = b'{"error":"busy"}', 503
        else:
            self.entered.set()
            order = await asyncio.to_thread(self.insert, key)
            payload, status = json.dumps({"id": order, "key": key}).encode(), 201
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


@dataclass
class Client:
    """One request's view: the messages it received, and whether they form a whole
    response."""

    sent: list[dict[str, Any]] = field(default_factory=list)
    error: BaseException | None = None
    gone: bool = False  # the client closed its connection: send raises, as some servers do

    @property
    def status(self) -> int:
        return next((m["status"] for m in self.sent if m["type"] == "http.response.start"), 0)

    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")

    def json(self) -> Any:
        return json.loads(self.body())

    def assert_whole(self) -> None:
        starts = [m for m in self.sent if m["type"] == "http.response.start"]
        if not starts:  # nothing at all (the server answers 500 or closes): never a half
            return
        assert len(starts) == 1, self.sent
        bodies = [m for m in self.sent if m["type"] == "http.response.body"]
        assert bodies, f"headers with no body: {self.sent}"
        assert not bodies[-1].get("more_body", False), f"body cut short: {self.sent}"
        length = dict(starts[0]["headers"]).get(b"content-length")
        assert length is not None
        assert int(length) == len(self.body()), f"truncated: {self.sent}"


@dataclass
class Hold:
    """Holds the client's ``send`` at one message kind (``start`` or ``body``)."""

    at: str
    reached: asyncio.Event = field(default_factory=asyncio.Event)
    resume: asyncio.Event = field(default_factory=asyncio.Event)


async def request(
    app: Any, key: str, hold: Hold | None = None, client: Client | None = None
) -> Client:
    """POST /orders with ``key``; the client's send stops at ``hold``, if given."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/orders",
        "raw_path": b"/orders",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"idempotency-key", key.encode())],
        "client": ("127.0.0.1", 5000),
        "server": ("test", 80),
        "state": {},
    }
    pending = [{"type": "http.request", "body": b'{"sku":"x"}', "more_body": False}]
    seen = client = client or Client()

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if hold is not None and message["type"].rsplit(".", 1)[-1] == hold.at:
            hold.reached.set()
            await hold.resume.wait()
        if seen.gone:
            raise OSError("the client closed the connection")
        seen.sent.append(message)

    try:
        await app(scope, receive, send)
    except (DeadlineExceeded, asyncio.CancelledError, OSError) as exc:  # the server's to see
        client.error = exc
    return client


def cases() -> list[tuple[Point, str]]:
    out = []
    for name in STORE_CALLS:
        for when in ("before", "after"):
            for fault in ("deadline", "cancel", "gone", "fail"):
                out.append((Point(name, when), fault))
    for where, when in (("handler", ""), ("send", "start"), ("send", "body")):
        for fault in ("deadline", "cancel", "gone"):
            out.append((Point(where, when), fault))
    return out


@pytest.mark.parametrize(("point", "fault"), cases(), ids=lambda v: str(v))
async def test_a_fault_at_every_point_runs_the_handler_once(
    make_store: StoreFactory, point: Point, fault: str
) -> None:
    clock = FakeClock(1000.0)  # the store's and the middleware's: leases, renewals
    deadline_clock = FakeClock(0.0)  # the request deadline's
    store = make_store(clock=clock)
    faults = Faults(store, point, fail=fault == "fail")
    orders = Orders(first_fails=point.where == "arelease")
    if point.where != "handler" and point.where != "arenew":
        orders.gate.set()
    idem = IdempotencyMiddleware(orders, store=faults, clock=clock, lease=LEASE)  # type: ignore[arg-type]
    app = DeadlineMiddleware(idem, timeout=5.0, header=None, clock=deadline_clock)
    key = f"k-{point}-{fault}"

    hold = Hold(point.when) if point.where == "send" else None
    first_client = Client()
    first = asyncio.create_task(request(app, key, hold, first_client))
    if fault != "fail":
        if point.where == "handler":
            await asyncio.wait_for(orders.entered.wait(), BOUND)
            await asyncio.sleep(0.01)  # the insert is waiting in its thread
        elif hold is not None:
            await asyncio.wait_for(hold.reached.wait(), BOUND)
        else:
            if point.where == "arenew":
                await asyncio.wait_for(orders.entered.wait(), BOUND)
                clock.advance(LEASE / 3 + 1)  # the renewal comes due
            await asyncio.wait_for(faults.reached.wait(), BOUND)
        # the fault, at exactly this point
        if fault == "deadline":
            deadline_clock.advance(6.0)
        elif fault == "cancel":
            first.cancel()
        else:
            first_client.gone = True
        await asyncio.sleep(0)
        faults.resume.set()
        if hold is not None:
            hold.resume.set()
        orders.gate.set()
    elif point.where == "arenew":
        await asyncio.wait_for(orders.entered.wait(), BOUND)
        clock.advance(LEASE / 3 + 1)
        await asyncio.sleep(0.01)
        orders.gate.set()

    try:
        answer = await asyncio.wait_for(first, BOUND)
    except asyncio.CancelledError:
        answer = None
    if answer is not None and not answer.gone:  # a client that left receives nothing more
        answer.assert_whole()
        # the deadline's 504, or the handler's own answer, whole
        assert answer.status in (0, 201, 503, 504), answer.sent
    await asyncio.wait_for(idem.adrain(), BOUND)

    # the client retries with the same key until it has a final answer
    final = None
    for _ in range(20):
        retry = await asyncio.wait_for(request(app, key), BOUND)
        retry.assert_whole()
        if retry.status == 409 and retry.json()["idempotency_error"] == "in_flight":
            # held by nobody: allowed only where begin ran but its reply was lost
            assert (point.where, point.when, fault) == ("abegin", "after", "fail"), retry.sent
            clock.advance(LEASE + 1)  # the lease runs out
            continue
        if retry.status in (503, 504):
            continue
        final = retry
        break
    assert final is not None
    assert final.status == 201, final.sent
    assert orders.effects[key] == 1, orders.effects
    replay = await asyncio.wait_for(request(app, key), BOUND)
    assert replay.body() == final.body()
    assert orders.effects[key] == 1
