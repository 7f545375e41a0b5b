"""Inbound fault injection (issue 16): `ChaosMiddleware` alone, inside `harden`, under uvicorn.

A seeded generator makes the sampled requests the same on every run; FakeClock makes
latency instant and measurable.
"""

from __future__ import annotations

import sys
from typing import Any

import httpx
import pytest

from buttress.asgi import HardenSettings, harden
from buttress.asgi._chaos import ChaosMiddleware, Fault, is_production
from buttress.errors import ConfigurationError
from buttress.testing import FakeClock
from tests.conftest import free_port, served

LOCAL = ("127.0.0.1", 50000)
QUIET = {"configure_logging": False, "access_log": False, "metrics": False}


async def echo_app(scope: Any, receive: Any, send: Any) -> None:
    body = b""
    if scope["method"] == "POST":
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body or b"ok"})


def client(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=LOCAL)
    return httpx.AsyncClient(transport=transport, base_url="http://svc.test")


# ------------------------------------------------------------------ the fault syntax
def test_faults_parse_and_refuse_nonsense() -> None:
    assert Fault.parse("error 5% 502 /orders") == Fault("error", 0.05, None, 502, "/orders")
    assert Fault.parse("slow_body 0.5 2s") == Fault("slow_body", 0.5, 2.0, None, "/")
    assert Fault.parse("drop 100%").fraction == 1.0
    for bad, message in [
        ("explode 5%", "KIND one of"),
        ("latency 5%", "needs a duration"),
        ("latency 150% 1s", "fraction"),
        ("latency 5% 10m", "duration"),
        ("error 5% 404", "500-599 or 429"),
        ("drop 5% 2s", "no argument"),
    ]:
        with pytest.raises(ConfigurationError, match=message):
            Fault.parse(bad)
    assert Fault.parse("drop 1% /orders").matches("/orders/7")
    assert not Fault.parse("drop 1% /orders").matches("/ordersx")


# ------------------------------------------------------------------ production
def test_never_on_by_default_and_refused_in_production() -> None:
    assert is_production("PROD")
    assert is_production(None)
    assert not is_production("staging")
    assert not HardenSettings().chaos
    with pytest.raises(ConfigurationError, match="is production"):
        HardenSettings(chaos=True, chaos_faults=("drop 1%",))
    chaos = ChaosMiddleware(echo_app, faults=["drop 1%"])  # production by default
    with pytest.raises(ConfigurationError, match="refusing to inject"):
        chaos.enable()
    allowed = ChaosMiddleware(echo_app, faults=["drop 1%"], allow_production=True)
    allowed.enable()
    assert allowed.enabled
    with pytest.raises(ConfigurationError, match="chaos_faults"):
        HardenSettings(chaos_faults=("latency 5%",))


# ------------------------------------------------------------------ sampling and faults
async def test_errors_hit_the_seeded_fraction_of_a_route_only() -> None:
    def run_once() -> ChaosMiddleware:
        return ChaosMiddleware(
            echo_app, faults=["error 30% 503 /orders"], enabled=True, environment="staging", seed=7
        )

    first, second = run_once(), run_once()
    outcomes = []
    for chaos in (first, second):
        async with client(chaos) as c:
            answers = [await c.get("/orders/1") for _ in range(200)]
            others = [await c.get("/catalog") for _ in range(20)]
        outcomes.append([a.status_code for a in answers])
        assert {o.status_code for o in others} == {200}  # another route: untouched
        failed = [a for a in answers if a.status_code == 503]
        assert 40 <= len(failed) <= 80  # ~30% of 200
        assert failed[0].headers["buttress-chaos"] == "error"
        assert failed[0].headers["retry-after"] == "1"
        assert failed[0].json()["detail"] == "injected fault (chaos)"
        assert chaos.injected["error"] == len(failed)
    assert outcomes[0] == outcomes[1]  # the same seed, the same requests


async def test_latency_and_slow_body_wait_on_the_clock(clock: FakeClock) -> None:
    chaos = ChaosMiddleware(
        echo_app,
        faults=["latency 100% 250ms", "slow_body 100% 2s /upload"],
        enabled=True,
        environment="staging",
        clock=clock,
    )
    async with client(chaos) as c:
        start = clock.now()
        assert (await c.get("/x")).text == "ok"
        assert clock.now() - start == pytest.approx(0.25)
        start = clock.now()
        assert (await c.post("/upload", content=b"payload")).text == "payload"
        assert clock.now() - start == pytest.approx(2.25)  # latency, then one slow chunk
    assert chaos.injected["latency"] == 2
    assert chaos.injected["slow_body"] == 1


async def test_switched_at_run_time_from_settings() -> None:
    app = harden(echo_app, HardenSettings(chaos_faults=("error 100% 500",), **QUIET))
    chaos = app.parts.chaos
    assert chaos is not None
    assert not chaos.enabled
    async with client(app) as c:
        assert (await c.get("/x")).status_code == 200
        with pytest.raises(ConfigurationError):  # still production
            chaos.enable()
        staging = HardenSettings(
            environment="staging", chaos=True, chaos_faults=("error 100% 502",), **QUIET
        )
        chaos.apply_settings(staging)
        answer = await c.get("/x")
        assert answer.status_code == 502
        assert answer.json()["code"] == "upstream_error"
        assert (await c.get("/health/live")).status_code == 200  # probes are never hit
        chaos.disable()
        assert (await c.get("/x")).status_code == 200
    assert harden(echo_app, HardenSettings(**QUIET)).parts.chaos is None  # nothing: no stage


APP = """
from buttress.asgi import HardenSettings, harden

async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})

app = harden(app, HardenSettings.from_env())
"""


def test_drop_cuts_the_connection_under_uvicorn(tmp_path: Any) -> None:
    import os

    (tmp_path / "svc.py").write_text(APP)
    port = free_port()
    env = {
        **os.environ,
        "BUTTRESS_ENVIRONMENT": "staging",
        "BUTTRESS_CHAOS": "true",
        "BUTTRESS_CHAOS_FAULTS": "drop 100% /orders",
        "BUTTRESS_DRAIN_DELAY": "0",
        "BUTTRESS_ACCESS_LOG": "false",
    }
    base = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "uvicorn", "svc:app", "--port", str(port)]
    with served(args, f"{base}/health/live", cwd=tmp_path, env=env):
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(f"{base}/orders/1", timeout=5)
        assert httpx.get(f"{base}/catalog", timeout=5).text == "ok"
