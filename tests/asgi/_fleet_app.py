"""The app the fleet tests run under uvicorn with several workers.

Environment: ``BUTTRESS_STORE_URL`` and ``BUTTRESS_STORE_NAMESPACE`` (the shared store),
``FLEET_LOG`` (a file every handler run appends one line to, so the test can count runs
across processes), ``FLEET_FAIL_MODE`` (rate-limit fail mode).

Routes: ``POST /orders`` (Idempotency-Key required; the handler takes 50 ms, so duplicates
overlap), ``GET /limited`` (10 at once, then 50 per second, per client).
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from buttress.asgi import HardenSettings, Limit, RateLimitRule, harden


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["method"] == "POST":
        await asyncio.sleep(0.05)
        with open(os.environ["FLEET_LOG"], "a", encoding="utf-8") as log:
            log.write(f"{os.getpid()} {body.decode(errors='replace')}\n")
    payload = json.dumps({"worker": os.getpid(), "path": scope["path"]}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 201 if scope["method"] == "POST" else 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def create_app() -> Any:
    """The hardened fleet app (uvicorn --factory tests.asgi._fleet_app:create_app)."""
    settings = HardenSettings(
        configure_logging=False,
        access_log=False,
        shedding=False,  # the tests count every answer: nothing may be shed
        drain_delay=0.0,
        store_url=os.environ["BUTTRESS_STORE_URL"],
        idempotency_routes={"POST /orders": "required"},
        rate_limit_fail_mode=os.environ.get("FLEET_FAIL_MODE", "open"),  # type: ignore[arg-type]
        rate_limit_store_timeout=0.3,
    )
    return harden(
        _app,
        settings,
        rate_limits=[RateLimitRule(Limit("fleet", "50/second;burst=10"), path="/limited")],
    )
