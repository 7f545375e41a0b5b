"""Health paths from settings and ``BUTTRESS_*`` (issue 16), and Retry-After on retriable problems."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from buttress.asgi import HardenSettings, harden
from buttress.asgi._errors import ErrorMiddleware
from buttress.asgi._health import HealthMiddleware
from buttress.asgi._problem import resolve_retry_after, send_problem
from buttress.errors import BulkheadFull, ConfigurationError, ErrorCode, RateLimited

LOCAL = ("127.0.0.1", 50000)
QUIET = {"configure_logging": False, "access_log": False, "metrics": False}


async def ok_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"app"})


def client(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=LOCAL)
    return httpx.AsyncClient(transport=transport, base_url="http://svc.test")


async def statuses(app: Any, *paths: str) -> dict[str, tuple[int, bytes]]:
    async with client(app) as c:
        answers = {p: await c.get(p) for p in paths}
    return {p: (r.status_code, r.content) for p, r in answers.items()}


# ------------------------------------------------------------------ paths
async def test_paths_from_the_environment_with_aliases() -> None:
    settings = HardenSettings.from_env(
        {
            "BUTTRESS_HEALTH_LIVE_PATHS": "/ping,/health/live",
            "BUTTRESS_HEALTH_READY_PATHS": "/api/ready",
            "BUTTRESS_HEALTH_REPORT_PATHS": "/health/detailed",
            "BUTTRESS_HEALTH_STARTUP_PATHS": "",  # empty: switched off
        },
        base=HardenSettings(**QUIET),
    )
    assert settings.health_live_paths == ("/ping", "/health/live")
    assert settings.health_startup_paths == ()
    app = harden(ok_app, settings)
    seen = await statuses(
        app,
        "/ping",
        "/health/live",
        "/api/ready",
        "/health/detailed",
        "/health/ready",
        "/health",
        "/health/startup",
    )
    assert seen["/ping"] == (200, b'{"status":"pass"}')
    assert seen["/health/live"][0] == 200
    assert seen["/api/ready"] == (200, b'{"status":"pass"}')
    assert b'"checks"' in seen["/health/detailed"][1]  # the report, details for loopback
    # the old paths and the switched-off startup probe fall through to the app
    for path in ("/health/ready", "/health", "/health/startup"):
        assert seen[path] == (200, b"app"), path
    assert app.parts.health is not None
    assert "/ping" in app.parts.health.paths


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"health_live_paths": ("ping",)}, "starting with '/'"),
        ({"health_live_paths": ("/x",), "health_ready_paths": ("/x",)}, "also in"),
        ({"health_report_paths": ("/health?x=1",)}, "no query"),
    ],
)
def test_bad_paths_are_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        HardenSettings(**values)


def test_the_middleware_refuses_one_path_for_two_probes() -> None:
    with pytest.raises(ConfigurationError, match="each path answers one probe"):
        HealthMiddleware(ok_app, live_path=("/ping", "/z"), ready_path="/z")


# ------------------------------------------------------------------ Retry-After
def test_every_retriable_code_gets_a_retry_after() -> None:
    for code in ErrorCode:
        seconds = resolve_retry_after(code, None)
        assert (seconds is not None) == code.retriable, code
    assert resolve_retry_after(ErrorCode.DEADLINE_EXCEEDED, None, retriable=True) == 1.0
    assert resolve_retry_after(ErrorCode.CIRCUIT_OPEN, None) == 5.0


async def test_the_request_deadline_504_carries_retry_after() -> None:
    import asyncio

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(5)

    app = harden(slow, HardenSettings(request_timeout=0.05, **QUIET))
    async with client(app) as c:
        answer = await c.get("/slow")
    assert answer.status_code == 504
    assert answer.headers["retry-after"] == "1"
    assert answer.json()["retriable"] is True


async def test_per_code_overrides_from_settings() -> None:
    async def refuse(scope: Any, receive: Any, send: Any) -> None:
        path = scope["path"]
        if path == "/full":
            raise BulkheadFull("no slot", code=ErrorCode.OVERLOADED)
        if path == "/limited":
            raise RateLimited("slow down", retry_after=30.0)
        await send_problem(send, ErrorCode.TRANSIENT_CONFLICT)

    settings = HardenSettings.from_env(
        {"BUTTRESS_RETRY_AFTER": "overloaded=7,rate_limited=2,transient_conflict=3"},
        base=HardenSettings(**QUIET),
    )
    assert settings.retry_after == {
        "overloaded": 7.0,
        "rate_limited": 2.0,
        "transient_conflict": 3.0,
    }
    app = harden(refuse, settings)
    async with client(app) as c:
        full = await c.get("/full")
        limited = await c.get("/limited")
        conflict = await c.get("/conflict")
    assert (full.status_code, full.headers["retry-after"]) == (503, "7")
    assert limited.headers["retry-after"] == "30"  # the exact wait is longer: it is kept
    assert (conflict.status_code, conflict.headers["retry-after"]) == (409, "3")
    # outside a request the overrides are gone
    assert resolve_retry_after(ErrorCode.OVERLOADED, None) == 1.0


def test_overrides_name_retriable_codes_only() -> None:
    with pytest.raises(ConfigurationError, match="not a retriable code"):
        HardenSettings(retry_after={"not_found": 5})
    with pytest.raises(ConfigurationError, match="seconds in"):
        ErrorMiddleware(ok_app, retry_after={"overloaded": 0})
    with pytest.raises(ConfigurationError, match="BUTTRESS_RETRY_AFTER"):
        HardenSettings.from_env({"BUTTRESS_RETRY_AFTER": "overloaded=soon"})
