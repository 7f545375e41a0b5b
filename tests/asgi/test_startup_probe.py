"""The start-up probe and the readiness gate (issue 16): ``/health/startup``.

Start-up checks (functions sync or async, or `Check` objects) hold ``/health/startup``
and ``/health/ready`` at 503 until they pass once, then never run again. FakeClock drives
the result cache; one test runs a real uvicorn whose start-up check waits on a file.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from buttress.asgi import HardenSettings, harden
from buttress.asgi._health import HealthMiddleware
from buttress.asgi._health_checks import CallableCheck, CheckResult
from buttress.errors import ConfigurationError
from buttress.testing import FakeClock
from tests.conftest import free_port, served

LOCAL = ("127.0.0.1", 50000)


async def ok_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"app"})


def client(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=LOCAL)
    return httpx.AsyncClient(transport=transport, base_url="http://svc.test")


class Flag:
    """A start-up condition the test flips; counts how often it was asked."""

    def __init__(self) -> None:
        self.ready = False
        self.calls = 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.ready


async def test_readiness_and_startup_wait_for_the_checks_then_latch(clock: FakeClock) -> None:
    migrations = Flag()
    warm = {"done": False}

    async def caches_warm() -> bool:
        return warm["done"]

    health = HealthMiddleware(
        ok_app, startup_checks=[migrations, caches_warm], cache_ttl=1.0, clock=clock
    )
    async with client(health) as c:
        startup = await c.get("/health/startup")
        assert startup.status_code == 503
        body = startup.json()
        assert body["status"] == "fail"
        assert body["output"] == "starting"
        assert sorted(body["checks"]) == ["Flag", "caches_warm"]
        assert body["checks"]["Flag"][0]["output"] == "returned False"
        assert (await c.get("/health/ready")).status_code == 503
        report = await c.get("/health")
        assert report.status_code == 503
        assert report.json()["notes"] == ["starting"]
        assert (await c.get("/health/live")).status_code == 200  # liveness never waits
        assert not health.started

        migrations.ready = True
        warm["done"] = True
        assert (await c.get("/health/startup")).status_code == 503  # cached for 1 s
        clock.advance(1.0)
        assert (await c.get("/health/startup")).json() == {"status": "pass"}
        assert health.started
        calls = migrations.calls
        migrations.ready = False  # a start-up check never runs again once passed
        clock.advance(5.0)
        assert (await c.get("/health/ready")).status_code == 200
        assert (await c.get("/health/startup")).status_code == 200
        assert migrations.calls == calls
        assert (await c.get("/health")).json()["status"] == "pass"


async def test_readiness_alone_moves_the_start_on(clock: FakeClock) -> None:
    """Without a startupProbe configured, the readiness probe runs the start-up checks."""
    flag = Flag()
    health = HealthMiddleware(ok_app, startup_checks=[flag], cache_ttl=0, clock=clock)
    async with client(health) as c:
        assert (await c.get("/health/ready")).status_code == 503
        flag.ready = True
        assert (await c.get("/health/ready")).status_code == 200
        assert health.started


async def test_exceptions_timeouts_and_warn(clock: FakeClock) -> None:
    def broken() -> None:
        raise RuntimeError("password=hunter2 in the message")

    class Slowish(CallableCheck):
        async def run(self) -> CheckResult:
            return CheckResult(status="warn", output="slow but there")

    health = HealthMiddleware(
        ok_app, startup_checks=[CallableCheck(broken, name="db-migrations")], cache_ttl=0
    )
    async with client(health) as c:
        body = (await c.get("/health/startup")).json()
        entry = body["checks"]["db-migrations"][0]
        assert entry["output"] == "RuntimeError"  # the type, never the message
        assert "hunter2" not in str(body)

    warned = HealthMiddleware(ok_app, startup_checks=[Slowish(lambda: None, name="s")])
    async with client(warned) as c:
        assert (await c.get("/health/startup")).status_code == 200  # warn counts as pass


async def test_details_only_for_the_trusted(clock: FakeClock) -> None:
    health = HealthMiddleware(ok_app, startup_checks=[Flag()], clock=clock)
    remote = httpx.ASGITransport(app=health, client=("203.0.113.7", 40000))
    async with httpx.AsyncClient(transport=remote, base_url="http://svc.test") as c:
        startup = await c.get("/health/startup")
        assert startup.status_code == 503
        assert startup.json() == {"status": "fail"}


async def test_mark_started_and_mark_dead(clock: FakeClock) -> None:
    flag = Flag()
    health = HealthMiddleware(ok_app, startup_checks=flag, clock=clock)
    async with client(health) as c:
        assert (await c.get("/health/startup")).status_code == 503
        health.mark_started()
        assert (await c.get("/health/ready")).status_code == 200
        health.mark_dead("wedged")
        assert (await c.get("/health/startup")).status_code == 503


def test_start_up_check_names_must_be_unique() -> None:
    def same() -> None: ...

    with pytest.raises(ConfigurationError, match="unique"):
        HealthMiddleware(ok_app, startup_checks=[same, same])
    with pytest.raises(ConfigurationError, match="neither a check"):
        HealthMiddleware(ok_app, startup_checks=[42])  # type: ignore[list-item]


async def test_harden_takes_startup_checks(clock: FakeClock) -> None:
    flag = Flag()
    app = harden(
        ok_app,
        HardenSettings(
            configure_logging=False, access_log=False, metrics=False, health_cache_ttl=0
        ),
        startup_checks=[flag],
    )
    async with client(app) as c:
        assert (await c.get("/health/startup")).status_code == 503
        assert (await c.get("/health/ready")).status_code == 503
        assert (await c.get("/work")).status_code == 200  # traffic is not gated, probes are
        flag.ready = True
        assert (await c.get("/health/ready")).status_code == 200


APP = """
import os
from buttress.asgi import HardenSettings, harden

async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})

def migrated():
    return os.path.exists(os.environ["MIGRATED"])

settings = HardenSettings(health_cache_ttl=0, drain_delay=0, access_log=False)
app = harden(app, settings, startup_checks=[migrated])
"""


def test_under_uvicorn_the_startup_probe_turns_200_when_the_check_passes(
    tmp_path: Path,
) -> None:
    (tmp_path / "svc.py").write_text(APP)
    marker = tmp_path / "migrated"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "uvicorn", "svc:app", "--port", str(port)]
    env = {**os.environ, "MIGRATED": str(marker)}
    with served(args, f"{base}/health/live", cwd=tmp_path, env=env):
        assert httpx.get(f"{base}/health/startup").status_code == 503
        assert httpx.get(f"{base}/health/ready").status_code == 503
        marker.touch()
        until = time.monotonic() + 5
        while httpx.get(f"{base}/health/startup").status_code != 200:
            assert time.monotonic() < until, "the start-up probe never passed"
            time.sleep(0.05)
        assert httpx.get(f"{base}/health/ready").status_code == 200
        marker.unlink()  # latched: the check does not run again
        assert httpx.get(f"{base}/health/startup").status_code == 200
