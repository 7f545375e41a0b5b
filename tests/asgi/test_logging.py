"""Structured logs: redaction everywhere, JSON lines, one access-log line per request."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from fastapi import FastAPI

from buttress.asgi import HardenSettings, configure_logging, harden, redact
from tests.conftest import free_port


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging(json=True, stream=stream)
    try:
        yield stream
    finally:
        structlog.reset_defaults()
        root.handlers, root.level = handlers, level


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_redact_walks_everything() -> None:
    event = {
        "user": "ann",
        "password": "hunter2",
        "nested": {"api_key": "k", "items": [{"client_secret": "s"}, "Bearer abc.def"]},
        "headers": [
            ("Authorization", "Basic dXNlcjpwYXNz"),
            (b"cookie", b"sid=1"),
            ("accept", "*/*"),
        ],
        "Set-Cookie": "sid=2",
        "note": "token is Bearer eyJhbGciOi.x.y",
    }
    clean = redact(event)
    text = json.dumps(clean, default=str)
    for secret in ("hunter2", "dXNlcjpwYXNz", "sid=1", "sid=2", "eyJhbGciOi", '"k"', '"s"'):
        assert secret not in text, secret
    assert clean["user"] == "ann"
    assert clean["headers"][2] == ("accept", "*/*")
    assert event["password"] == "hunter2"  # the original is untouched


def test_json_lines_are_redacted(log_stream: io.StringIO) -> None:
    structlog.get_logger("t").info("login", user="ann", password="hunter2", card_token="tok_1")
    logging.getLogger("stdlib").warning("via stdlib %s", "ok")
    first, second = lines(log_stream)
    assert first["password"] == "[redacted]"
    assert first["card_token"] == "[redacted]"
    assert first["level"] == "info"
    assert first["timestamp"].endswith("Z")
    assert second["event"] == "via stdlib ok"


async def test_one_access_line_per_request_with_context(log_stream: io.StringIO) -> None:
    app = FastAPI()

    @app.get("/orders/{order_id}")
    async def get_order(order_id: int) -> dict[str, int]:
        structlog.get_logger("app").info("loading", order_id=order_id)
        return {"id": order_id}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("kaput")

    hardened = harden(app, HardenSettings(configure_logging=False, trusted_proxies=("10.0.0.0/8",)))
    transport = httpx.ASGITransport(
        app=hardened, raise_app_exceptions=False, client=("10.1.1.1", 9)
    )
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        await client.get(
            "/orders/7",
            headers={
                "x-request-id": "r-1",
                "authorization": "Bearer supersecret",
                "x-forwarded-for": "203.0.113.5",
            },
        )
        await client.get("/boom", headers={"x-request-id": "r-2"})
        await client.get("/health/live")
    records = lines(log_stream)
    access = [r for r in records if r["event"] == "request"]
    assert len(access) == 2  # health is not logged
    first = access[0]
    assert first["route"] == "/orders/{order_id}"
    assert first["path"] == "/orders/7"
    assert first["status"] == 200
    assert first["request_id"] == "r-1"
    assert len(first["trace_id"]) == 32
    assert first["client"] == "203.0.113.5"
    assert first["bytes"] > 0
    assert first["duration_ms"] >= 0
    app_line = next(r for r in records if r["event"] == "loading")
    assert app_line["request_id"] == "r-1"  # merged from the request context
    assert access[1]["status"] == 500
    error = next(r for r in records if r["event"] == "unhandled_exception")
    assert error["request_id"] == "r-2"
    assert "kaput" in error["exception"]
    assert "supersecret" not in log_stream.getvalue()


@pytest.mark.parametrize(
    ("path", "client", "principal"),
    [
        ("/plain", "127.0.0.1", None),
        ("/plain", None, "ann"),
        ('/quo"te\\back', "10.0.0.1", 'bob "the" \\ admin'),
        ("/ünïcode/\u2028", "::1", "zoë"),
        ("/ctrl\x01\n", "unix:/tmp/s", None),
    ],
)
def test_access_line_is_json_whatever_the_fields(
    log_stream: io.StringIO, path: str, client: str | None, principal: str | None
) -> None:
    from buttress.asgi._context import _REQUEST_ID, _TRACE, TraceContext
    from buttress.asgi._logging import log_access

    scope = {"method": "GET", "path": path, "root_path": ""}
    id_token = _REQUEST_ID.set("r-1")
    trace_token = _TRACE.set(TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f0", None, 1))
    try:
        log_access(None, True, scope, 201, 7, 0.0, client, principal)
    finally:
        _TRACE.reset(trace_token)
        _REQUEST_ID.reset(id_token)
    (line,) = lines(log_stream)
    assert line["path"] == path
    assert line["client"] == client
    assert line["principal"] == principal
    assert line["request_id"] == "r-1"
    assert line["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert (line["status"], line["bytes"], line["route"]) == (201, 7, "<unmatched>")
    assert line["timestamp"].endswith("Z")


# ------------------------------------------------------------------- one JSON style

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
TAIL = ("event", "logger", "level", "timestamp")


def assert_house_style(raw: str) -> dict[str, Any]:
    """One line in buttress's one style: compact JSON, tail keys last, ms UTC timestamp."""
    record: dict[str, Any] = json.loads(raw)
    assert '": ' not in raw, raw  # compact separators
    assert ', "' not in raw, raw
    assert STAMP.match(record["timestamp"]), record["timestamp"]
    keys = list(record)
    present = [k for k in TAIL if k in record]
    assert keys[-len(present) :] == present, keys
    return record


async def test_every_line_has_one_style(log_stream: io.StringIO) -> None:
    app = FastAPI()

    @app.get("/x")
    async def x() -> dict[str, int]:
        structlog.get_logger("app").info("working", n=1)
        logging.getLogger("stdlib.app").warning("careful %s", "now")
        return {"ok": 1}

    hardened = harden(app, HardenSettings(configure_logging=False))
    transport = httpx.ASGITransport(app=hardened, client=("127.0.0.1", 9))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/x")).status_code == 200
    raw = [line for line in log_stream.getvalue().splitlines() if line.strip()]
    records = [assert_house_style(line) for line in raw]
    by_event = {r["event"]: r for r in records}
    assert by_event["working"]["logger"] == "app"
    assert by_event["careful now"]["logger"] == "stdlib.app"
    assert by_event["careful now"]["level"] == "warning"
    assert by_event["request"]["logger"] == "buttress.access"
    assert by_event["working"]["request_id"] == by_event["request"]["request_id"]


async def test_middleware_answers_are_named_by_their_route(log_stream: io.StringIO) -> None:
    app = FastAPI()

    @app.get("/orders/{order_id}")
    async def get_order(order_id: int) -> dict[str, int]:
        return {"id": order_id}

    hardened = harden(
        app, HardenSettings(configure_logging=False, metrics=False, rate_limits=("b=1/minute",))
    )
    transport = httpx.ASGITransport(app=hardened, client=("127.0.0.1", 9))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/orders/1")).status_code == 200
        assert (await client.get("/orders/2")).status_code == 429  # before routing
        assert (await client.get("/nowhere")).status_code == 429
    routes = [(r["status"], r["route"]) for r in lines(log_stream) if r["event"] == "request"]
    assert routes == [
        (200, "/orders/{order_id}"),
        (429, "/orders/{order_id}"),
        (429, "<unmatched>"),  # no route has this path
    ]


async def test_framework_routes_without_a_scope_route_are_named(log_stream: io.StringIO) -> None:
    hardened = harden(FastAPI(), HardenSettings(configure_logging=False, metrics=False))
    transport = httpx.ASGITransport(app=hardened, client=("127.0.0.1", 9))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/docs")).status_code == 200
        assert (await client.get("/nothing/here")).status_code == 404
    routes = [r["route"] for r in lines(log_stream) if r["event"] == "request"]
    assert routes == ["/docs", "<unmatched>"]


def test_route_names_follow_mounts_and_included_routers() -> None:
    from fastapi import APIRouter
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    from buttress.asgi._logging import RouteNames

    def ok(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = FastAPI()
    inner = APIRouter(prefix="/v1")

    @inner.post("/items/{item_id}")
    async def item(item_id: int) -> None: ...

    app.include_router(inner, prefix="/api")
    app.mount("/sub", Starlette(routes=[Mount("/m", routes=[Route("/x/{y:int}", ok)])]))
    names = RouteNames(app)

    def name(method: str, path: str) -> str | None:
        return names({"type": "http", "method": method, "path": path, "root_path": ""})

    assert name("POST", "/api/v1/items/3") == "/api/v1/items/{item_id}"
    assert name("GET", "/api/v1/items/3") == "/api/v1/items/{item_id}"  # 405: same route
    assert name("GET", "/sub/m/x/4") == "/sub/m/x/{y}"
    assert name("GET", "/docs") == "/docs"
    assert name("GET", "/missing") is None
    assert name("GET", "/api/v1/items/3") is name("POST", "/api/v1/items/3")  # interned
    for i in range(3000):  # junk paths cannot grow the cache without bound
        name("GET", f"/junk/{i}")
    assert len(names._cache) <= 1024
    assert not RouteNames(object())  # nothing that routes: no names


# ------------------------------------------------------------------- under uvicorn

UVICORN_APP = """
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from buttress import Backoff, Pipeline, Retry
from buttress.asgi import HardenSettings, harden

flaky = Pipeline(
    Retry(attempts=3, backoff=Backoff.constant(0.0), budget=None, retry_on=RuntimeError),
    name="flaky",
)


async def hello(request):
    return PlainTextResponse("hi")


async def boom():
    raise RuntimeError("down")


async def fail(request):
    try:
        await flaky.acall(boom)
    except RuntimeError:
        pass
    return PlainTextResponse("gave up")


app = harden(
    Starlette(routes=[Route("/hello", hello), Route("/fail", fail)]),
    HardenSettings(log_json=True, metrics=False),
)
"""


@pytest.mark.process
def test_uvicorn_one_access_line_per_request_and_one_style(tmp_path: Path) -> None:
    (tmp_path / "log_app.py").write_text(UVICORN_APP)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    env.pop("WEB_CONCURRENCY", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "log_app:app", "--host", "127.0.0.1"]
        + ["--port", str(port), "--log-level", "info"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    n = 7
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"{url}/health/live", timeout=1.0)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("uvicorn did not start")
                time.sleep(0.05)
        with httpx.Client(base_url=url, timeout=10.0) as client:
            for _ in range(n):
                assert client.get("/hello").status_code == 200
            for _ in range(2):
                assert client.get("/fail").text == "gave up"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate(timeout=10)
    raw = [line for line in (out + err).decode().splitlines() if line.strip()]
    records = [assert_house_style(line) for line in raw]  # every line, uvicorn's too
    access = [r for r in records if r["event"] == "request"]
    assert [r["path"] for r in access] == ["/hello"] * n + ["/fail"] * 2  # once each
    assert not [r for r in records if r.get("logger") == "uvicorn.access"]
    assert any(r.get("logger") == "uvicorn.error" for r in records)  # uvicorn's own, as JSON
    # resilience events: 2 scheduled retries and a give-up per /fail call; the second
    # call's lines are within 10 s of the first, so each key is logged once
    retries = [r for r in records if r["event"] == "retry_scheduled"]
    gave_up = [r for r in records if r["event"] == "retry_gave_up"]
    assert len(retries) == 1, records
    assert len(gave_up) == 1, records
    assert (retries[0]["level"], gave_up[0]["level"]) == ("info", "warning")
    assert retries[0]["pipeline"] == "flaky"
    assert retries[0]["logger"] == "buttress.resilience"
