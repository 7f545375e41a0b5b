"""The app that test_shutdown.py runs in a real server process (uvicorn, gunicorn).

A Starlette app with a lifespan of its own, wrapped in `GracefulShutdown`, configured by
environment variables:

* ``SHUTDOWN_LOG``: a file the app appends one event per line to (``app-startup``,
  ``start <id>`` when a request reaches the handler, ``app-shutdown``, ``hook <name>``);
  appends with ``O_APPEND`` are atomic, so lines never interleave.
* ``SHUTDOWN_DRAIN``, ``SHUTDOWN_GRACE``: the drain delay and grace, in seconds.
* ``SHUTDOWN_WORK``: how long ``/work`` takes, in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from buttress.asgi.middleware import GracefulShutdown

_LOG = os.open(os.environ["SHUTDOWN_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
WORK = float(os.environ.get("SHUTDOWN_WORK", "0.3"))


def record(event: str) -> None:
    os.write(_LOG, f"{event}\n".encode())


async def work(request: Request) -> JSONResponse:
    rid = request.query_params.get("id", "-")
    record(f"start {rid}")
    await asyncio.sleep(WORK)
    return JSONResponse({"id": rid})


async def slow(request: Request) -> JSONResponse:
    record("start slow")
    await asyncio.sleep(30)
    return JSONResponse({"slow": True})


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    record("app-startup")
    yield
    record("app-shutdown")


inner = Starlette(routes=[Route("/work", work), Route("/slow", slow)], lifespan=lifespan)
app = GracefulShutdown(
    inner,
    drain_delay=float(os.environ.get("SHUTDOWN_DRAIN", "0.5")),
    grace=float(os.environ.get("SHUTDOWN_GRACE", "5")),
    close_timeout=3.0,
    ready_path="/health/ready",
)
# registered first, closed last: a sync hook (runs in a worker thread)
app.add_close_hook(lambda: record("hook first"), name="first")


@app.add_close_hook
async def second() -> None:
    await asyncio.sleep(0.01)
    record("hook second")
