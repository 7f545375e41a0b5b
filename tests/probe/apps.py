"""Small apps the probe's modes run against (served by the tests, in a thread or a process).

- `redis_app`: hardened, its rate limits and idempotency records in Redis, and Redis a
  critical readiness check (the fault mode stops that Redis); served as a process:
  ``python -m uvicorn tests.probe.apps:redis_app --factory`` with ``PROBE_REDIS_URL`` set.
- `flipping_app`: ``GET /work`` answers 200 until the test sets ``state["failing"]``, then
  500 (a deploy that goes bad); ``GET /slow`` takes ``delay`` seconds.
- `configured_app`: the same routes hardened with the given settings (parity).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from fastapi import FastAPI, Response

from buttress.asgi import HardenSettings, Limit, RateLimitRule, harden
from buttress.asgi.health import RedisCheck


def _routes(app: FastAPI, state: dict[str, Any]) -> None:
    @app.get("/work")
    async def work() -> Response:
        if state.get("failing"):
            return Response("broken", status_code=500)
        return Response('{"ok": true}', media_type="application/json")

    @app.get("/slow")
    async def slow() -> dict[str, bool]:
        await asyncio.sleep(state.get("delay", 0.2))
        return {"ok": True}


def redis_app() -> Any:
    """Hardened, with Redis as its store and a critical readiness check."""
    url = os.environ["PROBE_REDIS_URL"]
    app = FastAPI()
    _routes(app, {})
    return harden(
        app,
        HardenSettings(
            store_url=url,
            drain_delay=0.5,
            shutdown_grace=3.0,
            health_cache_ttl=0.2,
            health_check_timeout=0.5,
            configure_logging=False,
        ),
        checks=[RedisCheck(url=url, timeout=0.5)],
        rate_limits=[RateLimitRule([Limit("work", "1000/second")], path="/work")],
    )


def flipping_app(delay: float = 0.2) -> tuple[FastAPI, dict[str, Any]]:
    """Unhardened: ``/work`` fails once ``state["failing"]`` is set; ``/slow`` sleeps."""
    app = FastAPI()
    state: dict[str, Any] = {"delay": delay}
    _routes(app, state)
    return app, state


def configured_app(settings: HardenSettings) -> Any:
    """The routes, hardened with ``settings`` (two of these differ for the parity test)."""
    app = FastAPI()
    _routes(app, {})
    return harden(app, settings)
