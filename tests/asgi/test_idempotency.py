"""`IdempotencyMiddleware`: exactly once per Idempotency-Key, replays, refusals and leases.

Requests go through ``httpx.ASGITransport`` (a Starlette app and a bare ASGI app) or, for
bytes httpx refuses to send and for cancellation, straight through raw ASGI messages.
Slow handlers are held with asyncio events and time is a `FakeClock`: nothing sleeps.
The core cases run over every embedded store available (memory, and SQLite once it
exists).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from buttress.asgi._idempotency import IdempotencyMiddleware, parse_idempotency_key
from buttress.errors import BackendError, ConfigurationError
from buttress.stores import Begin, IdempotencyStore, MemoryStore, StoredResponse, open_store
from buttress.testing import FakeClock

KINDS = ["memory"]
if importlib.util.find_spec("buttress.stores._sqlite") is not None:
    KINDS.append("sqlite")


@pytest.fixture(params=KINDS)
def store(request: pytest.FixtureRequest, clock: FakeClock, tmp_path: Path) -> Any:
    if request.param == "memory":
        yield MemoryStore(clock=clock)
        return
    opened = open_store(f"sqlite:///{tmp_path / 'idem.db'}", clock=clock)
    yield opened
    opened.close()


async def settle(rounds: int = 20) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


class Yielding:
    """A store proxy that gives the event loop away around every call, like a network store.

    The in-process stores answer without suspending, so without this, "concurrent"
    requests would run one after the other.
    """

    def __init__(self, store: IdempotencyStore, seed: int = 0) -> None:
        self.store = store
        self.rng = random.Random(seed)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.store, name)

        async def call(*args: Any) -> Any:
            await settle(self.rng.randrange(4))
            result = await method(*args)
            await settle(self.rng.randrange(4))
            return result

        return call


# ---------------------------------------------------------------- applications
@dataclass
class Handler:
    """A bare ASGI app that counts its runs and answers what it is told to."""

    status: int = 201
    calls: int = 0
    seen: list[bytes] = field(default_factory=list)
    gate: asyncio.Event | None = None
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    chunks: int = 1  # body chunks; >1 streams the response
    content_length: bool = True
    size: int = 0  # pad the body to this many bytes
    fail: BaseException | None = None
    yields: int = 0  # event-loop turns taken inside, so concurrent requests interleave
    keys: list[bytes | None] = field(default_factory=list)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.calls += 1
        self.keys.append(dict(scope["headers"]).get(b"idempotency-key"))
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        self.seen.append(body)
        self.entered.set()
        await settle(self.yields)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        payload = json.dumps({"run": self.calls, "echo": body.decode("latin-1")}).encode()
        payload = payload.ljust(self.size)
        headers = [
            (b"content-type", b"application/json"),
            (b"set-cookie", b"session=secret"),
            (b"date", b"Tue, 01 Jan 2030 00:00:00 GMT"),
            (b"connection", b"keep-alive"),
            (b"proxy-authenticate", b"Basic"),
            (b"x-order", str(self.calls).encode()),
        ]
        if self.content_length:
            headers.append((b"content-length", str(len(payload)).encode()))
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        step = max(1, -(-len(payload) // self.chunks))
        parts = [payload[i : i + step] for i in range(0, len(payload), step)] or [b""]
        for i, part in enumerate(parts):
            await send(
                {"type": "http.response.body", "body": part, "more_body": i < len(parts) - 1}
            )


def starlette_app(counter: list[int]) -> Starlette:
    async def create(request: Request) -> Response:
        counter[0] += 1
        data = await request.json()
        return JSONResponse({"id": counter[0], **data}, status_code=201)

    async def update(request: Request) -> Response:
        counter[0] += 1
        return JSONResponse({"id": request.path_params["id"], "n": counter[0]})

    async def stream(request: Request) -> Response:
        counter[0] += 1

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(3):
                yield f"chunk {i}\n".encode()

        return StreamingResponse(chunks(), media_type="text/plain")

    return Starlette(
        routes=[
            Route("/orders", create, methods=["POST"]),
            Route("/orders/{id}", update, methods=["PATCH", "POST"]),
            Route("/stream", stream, methods=["POST"]),
        ]
    )


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def key(value: str) -> dict[str, str]:
    return {"Idempotency-Key": value}


@dataclass
class Raw:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)

    def json(self) -> Any:
        return json.loads(self.body)


async def call(
    app: Any,
    method: str = "POST",
    path: str = "/orders",
    headers: list[tuple[bytes, bytes]] | None = None,
    chunks: list[bytes] | None = None,
    query: bytes = b"",
) -> Raw:
    """One request as raw ASGI messages (any header bytes, chunked bodies)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": headers or [],
        "client": ("127.0.0.1", 5000),
        "server": ("test", 80),
        "state": {},
    }
    pending = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks or [b""]) - 1}
        for i, c in enumerate(chunks or [b""])
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next((m for m in sent if m["type"] == "http.response.start"), None)
    if start is None:  # the application answered nothing (a server would send a 500)
        return Raw(0, [], b"")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return Raw(start["status"], list(start["headers"]), body)


# ---------------------------------------------------------------- the happy path
async def test_first_runs_and_stores_duplicate_replays_byte_identical(store: Any) -> None:
    counter = [0]
    app = IdempotencyMiddleware(starlette_app(counter), store=store)
    async with client(app) as http:
        first = await http.post("/orders", json={"sku": "a"}, headers=key("k-1"))
        again = await http.post("/orders", json={"sku": "a"}, headers=key("k-1"))
    assert counter[0] == 1
    assert first.status_code == again.status_code == 201
    assert first.content == again.content == b'{"id":1,"sku":"a"}'
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["content-type"] == first.headers["content-type"]
    assert again.headers["content-length"] == first.headers["content-length"]


async def test_replay_drops_hop_by_hop_cookies_and_date(clock: FakeClock) -> None:
    handler = Handler()
    app = IdempotencyMiddleware(handler, clock=clock, store=MemoryStore(clock=clock))
    first = await call(app, headers=[(b"idempotency-key", b"k")], chunks=[b"x"])
    again = await call(app, headers=[(b"idempotency-key", b"k")], chunks=[b"x"])
    assert handler.calls == 1
    assert first.header(b"set-cookie") == b"session=secret"  # the first response is untouched
    names = {k for k, _ in again.headers}
    assert names == {
        b"content-type",
        b"x-order",
        b"content-length",
        b"idempotent-replayed",
    }
    assert again.body == first.body
    assert again.header(b"x-order") == b"1"


async def test_quoted_and_bare_forms_are_one_key(clock: FakeClock) -> None:
    handler = Handler()
    app = IdempotencyMiddleware(handler, store=MemoryStore(clock=clock), clock=clock)
    await call(app, headers=[(b"idempotency-key", b'"order-\\"7\\""')])
    again = await call(app, headers=[(b"idempotency-key", b'order-"7"')])
    assert handler.calls == 1
    assert again.header(b"idempotent-replayed") == b"true"


async def test_requests_without_a_key_pass_through(store: Any) -> None:
    counter = [0]
    app = IdempotencyMiddleware(starlette_app(counter), store=store)
    async with client(app) as http:
        one = await http.post("/orders", json={})
        two = await http.post("/orders", json={})
        # GET and PUT are not keyed by default: the header is ignored
        three = await http.put("/orders/1", headers=key("k"))
    assert counter[0] == 2
    assert one.json() != two.json()
    assert three.status_code == 405  # Starlette's answer, not ours


async def test_off_routes_ignore_the_key() -> None:
    handler = Handler()
    app = IdempotencyMiddleware(handler, routes={"/webhooks/{source}": "off"})
    for _ in range(2):
        response = await call(app, path="/webhooks/stripe", headers=[(b"idempotency-key", b"")])
        assert response.status == 201
        assert response.header(b"idempotent-replayed") is None
    assert handler.calls == 2


async def test_non_http_scopes_pass_straight_through() -> None:
    seen = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    await IdempotencyMiddleware(app)({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    assert seen == ["lifespan"]


# ---------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    ("body", "query", "content_type"),
    [
        (b'{"sku":"b"}', b"", b"application/json"),
        (b'{"sku":"a"}', b"dry=1", b"application/json"),
        (b'{"sku":"a"}', b"", b"text/plain"),
    ],
)
async def test_reuse_with_another_payload_is_422(
    store: Any, body: bytes, query: bytes, content_type: bytes
) -> None:
    handler = Handler()
    app = IdempotencyMiddleware(handler, store=store)
    first = [(b"idempotency-key", b"k"), (b"content-type", b"application/json")]
    await call(app, headers=first, chunks=[b'{"sku":"a"}'])
    other = [(b"idempotency-key", b"k"), (b"content-type", content_type)]
    refused = await call(app, headers=other, chunks=[body], query=query)
    assert handler.calls == 1
    assert refused.status == 422
    assert refused.header(b"content-type") == b"application/problem+json"
    problem = refused.json()
    assert problem["code"] == "validation_failed"
    assert problem["idempotency_error"] == "key_reused"
    assert "new key" in problem["detail"]


async def test_same_key_on_another_resource_of_one_template_is_422(store: Any) -> None:
    counter = [0]
    app = IdempotencyMiddleware(
        starlette_app(counter), store=store, routes={"/orders/{id}": "optional"}
    )
    async with client(app) as http:
        ok = await http.patch("/orders/1", content=b"{}", headers=key("k"))
        other = await http.patch("/orders/2", content=b"{}", headers=key("k"))
    assert ok.status_code == 200
    assert other.status_code == 422  # never the response of /orders/1
    assert counter[0] == 1


async def test_duplicate_in_flight_is_409_with_retry_after(store: Any) -> None:
    handler = Handler(gate=asyncio.Event())
    app = IdempotencyMiddleware(handler, store=store)
    async with client(app) as http:
        first = asyncio.create_task(http.post("/orders", content=b"x", headers=key("k")))
        await handler.entered.wait()
        busy = await http.post("/orders", content=b"x", headers=key("k"))
        assert busy.status_code == 409
        assert busy.headers["retry-after"] == "1"
        problem = busy.json()
        assert problem["code"] == "transient_conflict"
        assert problem["retriable"] is True
        assert problem["idempotency_error"] == "in_flight"
        handler.gate.set()  # type: ignore[union-attr]
        done = await first
        later = await http.post("/orders", content=b"x", headers=key("k"))
    assert handler.calls == 1
    assert done.status_code == later.status_code == 201
    assert later.content == done.content
    assert later.headers["idempotent-replayed"] == "true"


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"", "empty"),
        (b"   ", "empty"),
        (b'""', "empty"),
        (b"a" * 256, "longer than 255"),
        (b'"' + b"a" * 256 + b'"', "longer than 255"),
        ("clé".encode(), "printable ASCII"),
        (b"a\x01b", "printable ASCII"),
        (b"a\x7fb", "printable ASCII"),
        (b'"abc', "quoted string"),
        (b'"ab"c"', "quoted string"),
        (b'"a\\b"', "quoted string"),
        (b'"\xc3\xa9"', "quoted string"),
    ],
)
async def test_malformed_keys_are_400(raw: bytes, why: str) -> None:
    handler = Handler()
    app = IdempotencyMiddleware(handler, routes={"/orders": "required"})
    refused = await call(app, headers=[(b"idempotency-key", raw)])
    assert refused.status == 400
    problem = refused.json()
    assert problem["code"] == "bad_request"
    assert problem["idempotency_error"] == "key_malformed"
    assert why in problem["detail"]
    # a malformed key on an optional route is refused too: ignoring it would run twice
    optional = await call(IdempotencyMiddleware(handler), headers=[(b"idempotency-key", raw)])
    assert optional.status == 400
    assert handler.calls == 0


async def test_longest_valid_key_and_printable_edges_are_accepted() -> None:
    handler = Handler()
    app = IdempotencyMiddleware(handler)
    for raw in (b"a" * 255, b"~ !", b'"' + b"\\\\" * 255 + b'"', b'" spaced key "'):
        assert (await call(app, headers=[(b"idempotency-key", raw)])).status == 201
    assert handler.calls == 4


async def test_missing_key_on_a_required_route_is_400() -> None:
    handler = Handler()
    app = IdempotencyMiddleware(handler, routes={"POST /orders": "required"})
    refused = await call(app)
    assert refused.status == 400
    assert refused.json()["idempotency_error"] == "key_missing"
    assert "requires an Idempotency-Key" in refused.json()["detail"]
    assert (await call(app, path="/other")).status == 201  # optional elsewhere
    assert handler.calls == 1


async def test_two_key_headers_are_400() -> None:
    app = IdempotencyMiddleware(Handler())
    refused = await call(app, headers=[(b"idempotency-key", b"a"), (b"idempotency-key", b"a")])
    assert refused.status == 400


def test_parse_idempotency_key() -> None:
    assert parse_idempotency_key(b'"abc"') == ("abc", "")
    assert parse_idempotency_key(b"  abc\t") == ("abc", "")
    assert parse_idempotency_key(b'"a\\"b\\\\c"') == ('a"b\\c', "")
    assert parse_idempotency_key(b'a"b') == ('a"b', "")
    assert parse_idempotency_key(b"x" * 255)[0] == "x" * 255
    assert parse_idempotency_key(b"x" * 600)[0] is None


async def test_request_body_over_the_cap_is_413_only_with_a_key() -> None:
    handler = Handler()
    app = IdempotencyMiddleware(handler, max_request_body=10)
    declared = await call(
        app, headers=[(b"idempotency-key", b"k"), (b"content-length", b"11")], chunks=[b"x" * 11]
    )
    assert declared.status == 413
    assert declared.json()["code"] == "payload_too_large"
    chunked = await call(app, headers=[(b"idempotency-key", b"k")], chunks=[b"x" * 6, b"x" * 6])
    assert chunked.status == 413
    assert handler.calls == 0
    fits = await call(app, headers=[(b"idempotency-key", b"k")], chunks=[b"x" * 5, b"x" * 5])
    assert fits.status == 201
    assert handler.seen == [b"x" * 10]  # the buffered body reaches the handler whole
    assert (await call(app, chunks=[b"x" * 100])).status == 201  # no key: not ours


async def test_client_gone_while_the_body_is_read_runs_nothing() -> None:
    handler = Handler()
    app = IdempotencyMiddleware(handler)
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/orders",
        "headers": [(b"idempotency-key", b"k")],
    }
    messages = [
        {"type": "http.request", "body": b"x", "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[Any] = []

    async def receive() -> Any:
        return messages.pop(0)

    async def send(message: Any) -> None:
        sent.append(message)

    await app(scope, receive, send)
    assert sent == []
    assert handler.calls == 0


# ---------------------------------------------------------------- scoping
async def test_keys_are_scoped_per_principal_route_and_method(store: Any) -> None:
    handler = Handler()
    app = IdempotencyMiddleware(
        handler,
        store=store,
        principal=lambda scope: dict(scope["headers"]).get(b"x-user", b"").decode() or None,
        routes={"PUT /orders": "optional"},
    )
    ann = [(b"idempotency-key", b"k"), (b"x-user", b"ann")]
    bob = [(b"idempotency-key", b"k"), (b"x-user", b"bob")]
    await call(app, headers=ann)
    assert (await call(app, headers=ann)).header(b"idempotent-replayed") == b"true"
    assert (await call(app, headers=bob)).header(b"idempotent-replayed") is None
    assert (await call(app, headers=ann, path="/carts")).header(b"idempotent-replayed") is None
    assert (await call(app, headers=ann, method="PUT")).header(b"idempotent-replayed") is None
    assert (await call(app, headers=[(b"idempotency-key", b"k")])).status == 201  # anonymous
    assert handler.calls == 5


async def test_default_principal_state_then_authorization_hash() -> None:
    handler = Handler()
    app = IdempotencyMiddleware(handler)

    def with_user(user: str) -> Any:
        async def outer(scope: Any, receive: Any, send: Any) -> None:
            scope["state"]["principal"] = user
            await app(scope, receive, send)

        return outer

    token_a = [(b"idempotency-key", b"k"), (b"authorization", b"Bearer a")]
    token_b = [(b"idempotency-key", b"k"), (b"authorization", b"Bearer b")]
    await call(app, headers=token_a)
    assert (await call(app, headers=token_a)).header(b"idempotent-replayed") == b"true"
    assert (await call(app, headers=token_b)).header(b"idempotent-replayed") is None
    # an authenticated principal wins over the credential that carried it
    await call(with_user("ann"), headers=token_a)
    replay = await call(with_user("ann"), headers=token_b)
    assert replay.header(b"idempotent-replayed") == b"true"
    assert handler.calls == 3


def test_route_modes_and_precedence() -> None:
    mw = IdempotencyMiddleware(
        Handler(),
        routes={
            "/orders/{id}": "required",
            "/orders/export": "off",
            "POST /orders/{id}": "optional",
            "PUT /items/{id}": "required",
            "/files/{rest:path}": "off",
        },
    )
    assert mw.mode_for("POST", "/orders/7") == ("optional", "/orders/{id}")
    assert mw.mode_for("PATCH", "/orders/7") == ("required", "/orders/{id}")
    assert mw.mode_for("PATCH", "/orders/export") == ("off", "/orders/export")
    assert mw.mode_for("PUT", "/items/3") == ("required", "/items/{id}")
    assert mw.mode_for("PUT", "/orders/3") == ("off", "/orders/3")  # PUT is not in methods
    assert mw.mode_for("DELETE", "/items/3") == ("off", "/items/3")
    assert mw.mode_for("POST", "/files/a/b/c") == ("off", "/files/{rest:path}")
    assert mw.mode_for("POST", "/orders/7/lines") == ("optional", "/orders/7/lines")


@pytest.mark.parametrize(
    "options",
    [
        {"default": "always"},
        {"routes": {"/orders": "sometimes"}},
        {"routes": {"orders": "required"}},
        {"routes": {"POST GET /orders": "required"}},
        {"routes": {"P0ST /orders": "required"}},
        {"ttl": 0},
        {"ttl": float("inf")},
        {"lease": -1},
        {"lease": True},
        {"lease": 100.0, "ttl": 50.0},
        {"max_request_body": -1},
        {"max_response_body": 1.5},
        {"methods": ("POST", "")},
        {"header": "bad header"},
    ],
)
def test_bad_configuration_is_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="IdempotencyMiddleware"):
        IdempotencyMiddleware(Handler(), **options)


# ---------------------------------------------------------------- failures release
@pytest.mark.parametrize("status", [500, 503, 429, 408])
async def test_server_errors_and_retriable_statuses_release_the_key(
    store: Any, status: int
) -> None:
    handler = Handler(status=status)
    app = IdempotencyMiddleware(handler, store=store)
    for _ in range(2):
        response = await call(app, headers=[(b"idempotency-key", b"k")])
        assert response.status == status
        assert response.header(b"idempotent-replayed") is None
    assert handler.calls == 2
    handler.status = 201
    await call(app, headers=[(b"idempotency-key", b"k")])
    assert (await call(app, headers=[(b"idempotency-key", b"k")])).status == 201
    assert handler.calls == 3


async def test_store_server_errors_replays_5xx_but_not_429(store: Any) -> None:
    handler = Handler(status=500)
    app = IdempotencyMiddleware(handler, store=store, store_server_errors=True)
    first = await call(app, headers=[(b"idempotency-key", b"k")])
    again = await call(app, headers=[(b"idempotency-key", b"k")])
    assert first.status == again.status == 500
    assert again.header(b"idempotent-replayed") == b"true"
    assert handler.calls == 1
    handler.status = 429
    await call(app, headers=[(b"idempotency-key", b"k2")])
    await call(app, headers=[(b"idempotency-key", b"k2")])
    assert handler.calls == 3


async def test_handler_exception_releases_the_key(store: Any) -> None:
    handler = Handler(fail=RuntimeError("boom"))
    app = IdempotencyMiddleware(handler, store=store)
    with pytest.raises(RuntimeError):
        await call(app, headers=[(b"idempotency-key", b"k")])
    handler.fail = None
    assert (await call(app, headers=[(b"idempotency-key", b"k")])).status == 201
    assert handler.calls == 2


async def test_a_cancelled_request_leaves_its_handler_running_and_recorded(store: Any) -> None:
    gate = asyncio.Event()
    handler = Handler(gate=gate)
    app = IdempotencyMiddleware(handler, store=store)
    task = asyncio.create_task(call(app, headers=[(b"idempotency-key", b"k")]))
    await handler.entered.wait()
    task.cancel()  # a deadline, or a server cancelling the request of a client that left
    with pytest.raises(asyncio.CancelledError):
        await task
    busy = await call(app, headers=[(b"idempotency-key", b"k")])
    assert busy.status == 409
    assert busy.json()["idempotency_error"] == "in_flight"
    gate.set()
    await app.adrain()
    replay = await call(app, headers=[(b"idempotency-key", b"k")])
    assert (replay.status, replay.header(b"idempotent-replayed")) == (201, b"true")
    assert handler.calls == 1


async def test_a_handler_past_abandon_after_is_cancelled_and_never_runs_again(
    store: Any, clock: FakeClock
) -> None:
    handler = Handler(gate=asyncio.Event())
    app = IdempotencyMiddleware(handler, store=store, clock=clock, abandon_after=30.0)
    task = asyncio.create_task(call(app, headers=[(b"idempotency-key", b"k")]))
    await handler.entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    clock.advance(31.0)
    await app.adrain()
    gone = await call(app, headers=[(b"idempotency-key", b"k")])
    assert gone.status == 409
    assert gone.header(b"idempotent-stored") == b"unknown"
    assert gone.json()["idempotency_error"] == "outcome_unknown"
    assert handler.calls == 1
    assert clock.pending_timers == 0


async def test_response_broken_off_midway_never_runs_again() -> None:
    calls = 0

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal calls
        calls += 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise RuntimeError("connection to the database lost")

    mw = IdempotencyMiddleware(app)
    with pytest.raises(RuntimeError):
        await call(mw, headers=[(b"idempotency-key", b"k")])
    again = await call(mw, headers=[(b"idempotency-key", b"k")])
    assert again.status == 409
    assert again.json()["idempotency_error"] == "outcome_unknown"
    assert again.json()["original_status"] == 200
    assert calls == 1


async def test_no_response_at_all_releases_the_key() -> None:
    calls = 0

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal calls
        calls += 1

    mw = IdempotencyMiddleware(app)
    for _ in range(2):
        assert (await call(mw, headers=[(b"idempotency-key", b"k")])).status == 0
    assert calls == 2


# ---------------------------------------------------------------- leases
async def test_lease_is_renewed_while_a_long_handler_runs(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock)
    handler = Handler(gate=asyncio.Event())
    app = IdempotencyMiddleware(handler, store=store, clock=clock, lease=60.0)
    first = asyncio.create_task(call(app, headers=[(b"idempotency-key", b"k")]))
    await handler.entered.wait()
    for _ in range(15):  # five minutes, five leases
        clock.advance(20.0)
        await settle()
    # (a bounded wait: without renewal the duplicate would run and block on the gate)
    busy = await asyncio.wait_for(call(app, headers=[(b"idempotency-key", b"k")]), 5.0)
    assert busy.status == 409
    handler.gate.set()  # type: ignore[union-attr]
    assert (await first).status == 201
    assert (await call(app, headers=[(b"idempotency-key", b"k")])).header(
        b"idempotent-replayed"
    ) == b"true"
    assert handler.calls == 1
    assert clock.pending_timers == 0  # the renewal stopped with the request


class CrashedWorker:
    """A store proxy for a worker that took keys and then died: nothing after begin."""

    def __init__(self, store: IdempotencyStore) -> None:
        self.store = store

    async def abegin(self, key: str, fingerprint: str, lease: float) -> Begin:
        return await self.store.abegin(key, fingerprint, lease)

    async def arenew(self, key: str, token: str, lease: float) -> bool:
        return True

    async def acomplete(self, key: str, token: str, response: StoredResponse, ttl: float) -> bool:
        return True

    async def arelease(self, key: str, token: str) -> None:
        return None


async def test_a_crashed_workers_key_is_retryable_after_the_lease(
    store: Any, clock: FakeClock
) -> None:
    crashed = Handler(gate=asyncio.Event())
    dead = IdempotencyMiddleware(crashed, store=CrashedWorker(store), clock=clock)  # type: ignore[arg-type]
    zombie = asyncio.create_task(call(dead, headers=[(b"idempotency-key", b"k")]))
    await crashed.entered.wait()
    handler = Handler()
    live = IdempotencyMiddleware(handler, store=store, clock=clock, lease=60.0)
    assert (await call(live, headers=[(b"idempotency-key", b"k")])).status == 409
    clock.advance(59.0)
    await settle()
    assert (await call(live, headers=[(b"idempotency-key", b"k")])).status == 409
    clock.advance(1.5)
    assert (await call(live, headers=[(b"idempotency-key", b"k")])).status == 201
    assert handler.calls == 1
    zombie.cancel()
    with pytest.raises(asyncio.CancelledError):
        await zombie


# ---------------------------------------------------------------- unstored responses
@pytest.mark.parametrize(
    "options",
    [
        {"size": 200},  # Content-Length over the cap
        {"size": 200, "content_length": False},  # no Content-Length, one big chunk
        {"size": 50, "chunks": 3, "content_length": False},  # streamed
    ],
    ids=["too-large", "too-large-unframed", "streamed"],
)
async def test_unstored_responses_are_marked_and_never_run_twice(
    store: Any, options: dict[str, Any]
) -> None:
    handler = Handler(**options)
    app = IdempotencyMiddleware(handler, store=store, max_response_body=100)
    first = await call(app, headers=[(b"idempotency-key", b"k")])
    assert first.status == 201
    assert first.header(b"idempotent-stored") == b"false"
    assert first.body.startswith(b'{"run": 1')
    again = await call(app, headers=[(b"idempotency-key", b"k")])
    assert handler.calls == 1
    assert again.status == 409
    assert again.header(b"idempotent-stored") == b"false"
    problem = again.json()
    assert problem["code"] == "conflict"
    assert problem["retriable"] is False
    assert problem["idempotency_error"] == "response_not_stored"
    assert problem["original_status"] == 201
    assert again.header(b"retry-after") is None
    assert (await call(app, headers=[(b"idempotency-key", b"k2")])).status == 201  # new key


async def test_starlette_streaming_response_is_not_stored(store: Any) -> None:
    counter = [0]
    app = IdempotencyMiddleware(starlette_app(counter), store=store)
    async with client(app) as http:
        first = await http.post("/stream", headers=key("k"))
        again = await http.post("/stream", headers=key("k"))
    assert first.text == "chunk 0\nchunk 1\nchunk 2\n"
    assert first.headers["idempotent-stored"] == "false"
    assert again.status_code == 409
    assert counter[0] == 1


@pytest.mark.parametrize(
    "options",
    [{"content_length": False}, {"chunks": 4}, {"size": 100, "chunks": 5}],
    ids=["unframed-small", "framed-chunks", "exactly-the-cap"],
)
async def test_small_responses_are_stored_however_they_are_sent(options: dict[str, Any]) -> None:
    handler = Handler(**options)
    app = IdempotencyMiddleware(handler, max_response_body=100)
    first = await call(app, headers=[(b"idempotency-key", b"k")])
    assert first.header(b"idempotent-stored") is None
    again = await call(app, headers=[(b"idempotency-key", b"k")])
    assert again.header(b"idempotent-replayed") == b"true"
    assert again.body == first.body
    assert again.header(b"content-length") == str(len(first.body)).encode()
    assert handler.calls == 1


async def test_understated_content_length_does_not_grow_the_buffer() -> None:
    calls = 0

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal calls
        calls += 1
        headers = [(b"content-length", b"10")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for _ in range(4):
            await send({"type": "http.response.body", "body": b"x" * 40, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    mw = IdempotencyMiddleware(app, max_response_body=100)
    assert len((await call(mw, headers=[(b"idempotency-key", b"k")])).body) == 160
    again = await call(mw, headers=[(b"idempotency-key", b"k")])
    assert again.status == 409
    assert again.json()["idempotency_error"] == "response_not_stored"
    assert calls == 1


@pytest.mark.parametrize("kind", ["pathsend", "trailers"])
async def test_files_sent_by_the_server_and_trailers_are_not_stored(kind: str) -> None:
    calls = 0

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal calls
        calls += 1
        start = {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", b"4")],
        }
        if kind == "pathsend":
            await send(start)
            await send({"type": "http.response.pathsend", "path": "/etc/hostname"})
        else:
            await send({**start, "trailers": True})
            await send({"type": "http.response.body", "body": b"data"})
            await send({"type": "http.response.trailers", "headers": [(b"x-sum", b"1")]})

    mw = IdempotencyMiddleware(app)
    assert (await call(mw, headers=[(b"idempotency-key", b"k")])).status == 200
    again = await call(mw, headers=[(b"idempotency-key", b"k")])
    assert again.status == 409
    assert again.json()["original_status"] == 200
    assert calls == 1


# ---------------------------------------------------------------- the store fails
class BrokenStore(MemoryStore):
    async def abegin(self, key: str, fingerprint: str, lease: float) -> Begin:
        raise BackendError("redis: connection refused")


async def test_store_down_is_503_and_the_handler_never_runs_unprotected() -> None:
    handler = Handler()
    app = IdempotencyMiddleware(handler, store=BrokenStore())
    refused = await call(app, headers=[(b"idempotency-key", b"k")])
    assert refused.status == 503
    assert refused.header(b"retry-after") == b"1"
    assert refused.json()["code"] == "backend_error"
    assert handler.calls == 0
    assert (await call(app)).status == 201  # without a key the store is not asked
    open_app = IdempotencyMiddleware(handler, store=BrokenStore(), fail_open=True)
    assert (await call(open_app, headers=[(b"idempotency-key", b"k")], chunks=[b"b"])).status == 201
    assert handler.seen[-1] == b"b"


async def test_store_failing_after_the_handler_still_answers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class FailsToComplete(MemoryStore):
        async def acomplete(self, *args: Any) -> bool:
            raise BackendError("disk full")

    handler = Handler()
    app = IdempotencyMiddleware(handler, store=FailsToComplete())
    assert (await call(app, headers=[(b"idempotency-key", b"k")])).status == 201
    assert "disk full" in caplog.text


# ---------------------------------------------------------------- concurrency
async def test_fifty_concurrent_duplicates_run_the_handler_once(store: Any) -> None:
    counter = [0]
    app = IdempotencyMiddleware(starlette_app(counter), store=Yielding(store))  # type: ignore[arg-type]
    async with client(app) as http:
        responses = await asyncio.gather(
            *(http.post("/orders", json={"sku": "a"}, headers=key("same")) for _ in range(50))
        )
    assert counter[0] == 1
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {201, 409}
    winners = [r for r in responses if r.status_code == 201]
    assert winners
    assert all(r.content == b'{"id":1,"sku":"a"}' for r in winners)
    assert sum("idempotent-replayed" not in r.headers for r in winners) == 1
    assert 409 in statuses  # the requests did overlap


async def test_concurrent_duplicates_over_a_slow_store_and_handler(store: Any) -> None:
    for seed in range(10):
        handler = Handler(yields=seed)
        app = IdempotencyMiddleware(handler, store=Yielding(store, seed))  # type: ignore[arg-type]
        headers = [(b"idempotency-key", f"k{seed}".encode())]
        responses = await asyncio.gather(*(call(app, headers=headers) for _ in range(50)))
        assert handler.calls == 1
        assert {r.status for r in responses} <= {201, 409}
        bodies = {r.body for r in responses if r.status == 201}
        assert len(bodies) == 1


async def test_fifty_duplicates_held_in_flight_all_get_409_then_replays(store: Any) -> None:
    handler = Handler(gate=asyncio.Event())
    app = IdempotencyMiddleware(handler, store=store)
    first = asyncio.create_task(call(app, headers=[(b"idempotency-key", b"k")]))
    await handler.entered.wait()
    busy = await asyncio.gather(
        *(call(app, headers=[(b"idempotency-key", b"k")]) for _ in range(50))
    )
    assert {r.status for r in busy} == {409}
    handler.gate.set()  # type: ignore[union-attr]
    await first
    replays = await asyncio.gather(
        *(call(app, headers=[(b"idempotency-key", b"k")]) for _ in range(50))
    )
    assert {r.header(b"idempotent-replayed") for r in replays} == {b"true"}
    assert handler.calls == 1


# ---------------------------------------------------------------- properties
_fuzz_handler = Handler(yields=2)
_fuzz_app = IdempotencyMiddleware(
    _fuzz_handler,
    store=Yielding(MemoryStore(), seed=1),
    routes={"/orders": "required"},  # type: ignore[arg-type]
)
_fuzz_runs: dict[tuple[str, bytes], int] = {}

keys = st.one_of(
    st.binary(max_size=300),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=260).map(str.encode),
    st.sampled_from([b"a", b'"a"', b"b", b'"b"', b'"', b"\\", b'"\\"', b'"\\\\"']),
)
bodies = st.sampled_from([b"", b"x", b"y", b"\x00" * 3])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.one_of(st.none(), keys), bodies), min_size=1, max_size=8))
def test_random_keys_never_500_and_run_at_most_once(
    requests: list[tuple[bytes | None, bytes]],
) -> None:
    async def run() -> list[Raw]:
        return await asyncio.gather(
            *(
                call(
                    _fuzz_app,
                    headers=[] if raw is None else [(b"idempotency-key", raw)],
                    chunks=[body],
                )
                for raw, body in requests
            )
        )

    start = len(_fuzz_handler.keys)
    responses = asyncio.run(run())
    for (raw, _), response in zip(requests, responses, strict=True):
        assert response.status < 500
        if raw is None or parse_idempotency_key(raw)[0] is None:
            assert response.status == 400
        else:
            assert response.status in (201, 409, 422)
    for raw, body in zip(_fuzz_handler.keys[start:], _fuzz_handler.seen[start:], strict=True):
        parsed, _ = parse_idempotency_key(raw or b"")
        assert parsed is not None
        _fuzz_runs[parsed, body] = _fuzz_runs.get((parsed, body), 0) + 1
    assert all(count == 1 for count in _fuzz_runs.values())
