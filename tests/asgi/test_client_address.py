"""Who the client is: forged forwarding headers never choose a rate-limit key or a log line.

Real uvicorn servers on free 127.0.0.1 ports, each in a thread of this process, serve a
small app hardened with a per-address rate limit:

* with the demo's own options (`buttress.cli.demo_server_options`: no proxy headers),
  ``X-Forwarded-For``, ``Forwarded`` and ``X-Real-IP`` from a loopback peer change
  nothing: an exhausted budget stays exhausted;
* with buttress's ``trusted_proxies`` covering the peer, they are honoured;
* under uvicorn's defaults (proxy headers on for 127.0.0.1), the server rewrites the
  client address; buttress notices (port 0, or the client is one of the hops), logs one
  error naming the fix, and counts every such request as ``unknown``: no fresh budgets.

Every request loop is bounded; traffic goes to loopback only.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from buttress.asgi import HardenSettings, _context, harden
from buttress.asgi._context import (
    UNKNOWN_CLIENT,
    client_address,
    is_local_request,
    resolve_client,
    trusted_networks,
)
from buttress.asgi.keys import client_ip
from buttress.cli import demo_server_options
from tests.conftest import captured_logs, free_port

BUDGET = 5  # per-ip=5/hour: no refill while a test runs
LONG = "9" * 3000
FORGED = [
    {"x-forwarded-for": "198.51.100.1"},
    {"x-forwarded-for": "198.51.100.2:4444"},
    {"x-forwarded-for": "[2001:db8::7]:8080"},
    {"x-forwarded-for": "203.0.113.7, 198.51.100.3"},
    {"x-forwarded-for": "garbage"},
    {"x-forwarded-for": LONG},
    {"forwarded": "for=198.51.100.4"},
    {"x-real-ip": "198.51.100.5"},
]
REWRITE_ERROR = "the server rewrote the client address"


def _app(trusted: tuple[str, ...] = ()) -> Any:
    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return harden(
        Starlette(routes=[Route("/hello", hello)]),
        HardenSettings(
            configure_logging=False,
            graceful_shutdown=False,
            trusted_proxies=trusted,
            rate_limits=(f"per-ip={BUDGET}/hour",),
        ),
    )


@contextlib.contextmanager
def serve(app: Any, **options: Any) -> Iterator[str]:
    """A real uvicorn server in a thread; yields its base URL, stops it afterwards."""
    server = uvicorn.Server(uvicorn.Config(app, **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 15
        while not server.started:
            if not thread.is_alive():
                pytest.fail("the server did not start")
            if time.monotonic() > deadline:
                pytest.fail("the server did not start within 15 s")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{options['port']}"
    finally:
        server.should_exit = True
        thread.join(15)
        assert not thread.is_alive()


def demo_server(app: Any) -> contextlib.AbstractContextManager[str]:
    """Exactly the options ``buttress demo`` runs uvicorn with."""
    return serve(app, **demo_server_options("127.0.0.1", free_port()))


def default_server(app: Any) -> contextlib.AbstractContextManager[str]:
    """uvicorn's defaults (proxy_headers=True, forwarded_allow_ips 127.0.0.1 and ::1)."""
    return serve(app, host="127.0.0.1", port=free_port(), log_level="warning")


@pytest.fixture(autouse=True)
def _uvicorn_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """uvicorn reads FORWARDED_ALLOW_IPS for its default; the tests mean the real default."""
    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)


@pytest.fixture
def log_stream(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """JSON logs (access lines and errors) into a buffer; the once-per-process error reset."""
    monkeypatch.setattr(_context, "_rewrite_reported", False)
    with captured_logs(json=True) as stream:
        yield stream


def records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def access_clients(stream: io.StringIO) -> list[str]:
    return [r["client"] for r in records(stream) if r.get("event") == "request"]


def rewrite_errors(stream: io.StringIO) -> list[dict[str, Any]]:
    return [r for r in records(stream) if REWRITE_ERROR in str(r.get("event"))]


def exhaust(http: httpx.Client) -> None:
    """Spend the loopback peer's budget (no forwarding header), then check it is spent."""
    statuses = [http.get("/hello").status_code for _ in range(BUDGET)]
    assert statuses == [200] * BUDGET
    assert http.get("/hello").status_code == 429


# ------------------------------------------------------------------ the demo's own server
def test_demo_options_read_no_forwarding_header() -> None:
    options = demo_server_options("127.0.0.1", 8000)
    config = uvicorn.Config("buttress.demo.app:create_app", factory=True, **options)
    assert config.proxy_headers is False
    assert options["server_header"] is False


def test_demo_server_ignores_forged_forwarding_headers(log_stream: io.StringIO) -> None:
    with demo_server(_app()) as base, httpx.Client(base_url=base, timeout=10) as http:
        exhaust(http)
        for headers in FORGED:
            assert http.get("/hello", headers=headers).status_code == 429, headers
    clients = access_clients(log_stream)
    assert len(clients) == BUDGET + 1 + len(FORGED)
    assert set(clients) == {"127.0.0.1"}  # garbage, 3,000 characters: never logged
    assert "garbage" not in log_stream.getvalue()
    assert LONG not in log_stream.getvalue()
    assert not rewrite_errors(log_stream)  # the server rewrote nothing


def test_behind_a_trusted_proxy_forwarded_addresses_are_honoured(
    log_stream: io.StringIO,
) -> None:
    with (
        demo_server(_app(trusted=("127.0.0.1/32",))) as base,
        httpx.Client(base_url=base, timeout=10) as http,
    ):
        exhaust(http)
        for i in range(3):  # each forwarded client has a budget of its own
            response = http.get("/hello", headers={"x-forwarded-for": f"198.51.100.{i}"})
            assert response.status_code == 200
        # garbage in the chain: the peer (the proxy) is the client, and it is spent
        assert http.get("/hello", headers={"x-forwarded-for": "garbage"}).status_code == 429
    clients = access_clients(log_stream)
    assert clients[BUDGET + 1 :] == ["198.51.100.0", "198.51.100.1", "198.51.100.2", "127.0.0.1"]
    assert not rewrite_errors(log_stream)


# ------------------------------------------------------------------ uvicorn's defaults
def test_under_uvicorn_defaults_forged_addresses_share_one_bucket(
    log_stream: io.StringIO,
) -> None:
    forged = [
        *({"x-forwarded-for": f"198.51.100.{i}"} for i in range(BUDGET + 3)),
        {"x-forwarded-for": "198.51.100.200:4444"},
        {"x-forwarded-for": "[2001:db8::7]:8080"},
        {"x-forwarded-for": "garbage"},
        {"x-forwarded-for": LONG},
    ]
    with default_server(_app()) as base, httpx.Client(base_url=base, timeout=10) as http:
        exhaust(http)
        statuses = [http.get("/hello", headers=h).status_code for h in forged]
        # the server ignores these two: the peer's own (spent) budget
        assert http.get("/hello", headers={"forwarded": "for=1.2.3.4"}).status_code == 429
        assert http.get("/hello", headers={"x-real-ip": "1.2.3.4"}).status_code == 429
    # one budget for every rewritten request ("unknown"), never one per forged address
    assert statuses == [200] * BUDGET + [429] * (len(forged) - BUDGET)
    errors = rewrite_errors(log_stream)
    assert len(errors) == 1  # once per process, however many requests reveal it
    assert errors[0]["level"] == "error"
    assert "--no-proxy-headers" in errors[0]["event"]
    assert "trusted_proxies" in errors[0]["event"]
    clients = access_clients(log_stream)
    assert clients[BUDGET + 1 : BUDGET + 1 + len(forged)] == [UNKNOWN_CLIENT] * len(forged)
    assert set(clients) == {"127.0.0.1", UNKNOWN_CLIENT}
    assert "garbage" not in log_stream.getvalue()
    assert LONG not in log_stream.getvalue()


def test_under_uvicorn_defaults_with_trusted_proxies_the_servers_answer_stands(
    log_stream: io.StringIO,
) -> None:
    """nginx on 127.0.0.1 in front of uvicorn's defaults, and buttress told about it."""
    with (
        default_server(_app(trusted=("127.0.0.1/32",))) as base,
        httpx.Client(base_url=base, timeout=10) as http,
    ):
        exhaust(http)
        response = http.get("/hello", headers={"x-forwarded-for": "198.51.100.9"})
        assert response.status_code == 200
        assert http.get("/hello", headers={"x-forwarded-for": "garbage"}).status_code == 200
    assert access_clients(log_stream)[BUDGET + 1 :] == ["198.51.100.9", UNKNOWN_CLIENT]
    assert not rewrite_errors(log_stream)


# ------------------------------------------------------------------ the tell, unit by unit
def _scope(client: Any, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {"type": "http", "client": client, "headers": headers}


@pytest.mark.parametrize(
    ("client", "headers"),
    [
        (("198.51.100.1", 0), [(b"x-forwarded-for", b"198.51.100.1")]),
        (("garbage", 0), [(b"x-forwarded-for", b"garbage")]),
        (("198.51.100.1", 0), [(b"forwarded", b"for=198.51.100.1")]),  # Hypercorn modern
        (("198.51.100.1", 0), [(b"x-real-ip", b"198.51.100.1")]),
        (("198.51.100.1", 4444), [(b"x-forwarded-for", b"198.51.100.1:4444")]),
        (("2001:db8::1", 80), [(b"x-forwarded-for", b"10.0.0.1, [2001:db8::1]:80")]),
        (("198.51.100.1", 4444), [(b"x-forwarded-for", b"a, 198.51.100.1:4444 ,b")]),
    ],
)
def test_a_rewritten_client_is_unknown_when_no_proxy_is_trusted(
    client: tuple[str, int], headers: list[tuple[bytes, bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_context, "_rewrite_reported", True)
    scope = _scope(client, headers)
    assert client_address(scope) == UNKNOWN_CLIENT
    assert client_ip()(scope) == "ip:unknown"
    assert not is_local_request(_scope(("127.0.0.1", 0), headers))


@pytest.mark.parametrize(
    ("client", "headers", "expected"),
    [
        (("127.0.0.1", 51234), [(b"x-forwarded-for", b"198.51.100.1")], "127.0.0.1"),
        (("127.0.0.1", 51234), [(b"x-forwarded-for", b"127.0.0.1:4444")], "127.0.0.1"),
        (("127.0.0.1", 51234), [(b"x-forwarded-for", b"2001:db8::51234")], "127.0.0.1"),
        (("127.0.0.1", 0), [], "127.0.0.1"),  # port 0 but nothing to rewrite from
        (("127.0.0.1", 0), [(b"via", b"1.1 proxy")], "127.0.0.1"),  # carries no address
        (("2001:0db8::0001", 1), [], "2001:db8::1"),  # the normal form
        (("testclient", 1), [], UNKNOWN_CLIENT),  # not an IP address: never logged as is
        (None, [(b"x-forwarded-for", b"198.51.100.1")], None),  # a Unix socket
    ],
)
def test_a_real_peer_is_the_client(
    client: Any,
    headers: list[tuple[bytes, bytes]],
    expected: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_context, "_rewrite_reported", False)
    assert client_address(_scope(client, headers)) == expected
    assert not _context._rewrite_reported  # the tell did not fire


def test_with_trusted_proxies_a_rewritten_client_is_where_the_walk_starts() -> None:
    nets = trusted_networks(["10.0.0.0/8"])
    headers = [(b"x-forwarded-for", b"203.0.113.9, 10.0.0.7")]
    # the server stopped at 10.0.0.7 (its list), ours goes on: 203.0.113.9
    assert client_address(_scope(("10.0.0.7", 0), headers), nets) == "203.0.113.9"
    assert client_address(_scope(("198.51.100.1", 0), headers), nets) == "198.51.100.1"
    garbage = [(b"x-forwarded-for", b"garbage")]
    assert client_address(_scope(("garbage", 0), garbage), nets) == UNKNOWN_CLIENT


def test_the_error_is_logged_once_per_process(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_context, "_rewrite_reported", False)
    scope = _scope(("198.51.100.1", 0), [(b"x-forwarded-for", b"198.51.100.1")])
    with caplog.at_level(logging.ERROR, logger="buttress.asgi.client"):
        for _ in range(20):
            assert client_address(scope) == UNKNOWN_CLIENT
            assert resolve_client(scope["client"], b"198.51.100.1", True, ()) == UNKNOWN_CLIENT
    errors = [r for r in caplog.records if REWRITE_ERROR in r.getMessage()]
    assert len(errors) == 1
    assert errors[0].levelno == logging.ERROR
    assert "X-Forwarded-For" in errors[0].getMessage()
