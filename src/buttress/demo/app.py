"""The demo service: a small orders API hardened by buttress, on embedded defaults.

``buttress demo`` serves it with uvicorn on 127.0.0.1:8000. Everything is local: orders live
in SQLite (a file in a temporary directory unless ``BUTTRESS_DEMO_DB`` says otherwise), and
``GET /price/{sku}`` calls a deliberately flaky price service that the demo starts on
another loopback port, through a `buttress.http` client (retries, breaker, fallback).

Routes: ``POST /orders`` (requires an ``Idempotency-Key``: a retried POST never creates a
second order), ``GET /orders``, ``GET /orders/{order_id}``, ``GET /price/{sku}`` (rate
limited per client: 25 at once, then 60 a minute), ``GET /slow`` (for deadlines),
``GET /boom`` (for errors), plus what `harden` adds.

Shared state (rate limits, idempotency records) lives in the store named by
``BUTTRESS_STORE_URL`` (``memory://`` by default; ``buttress demo --workers N`` defaults to
a SQLite file shared by the workers; Redis and PostgreSQL URLs work too).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Header, HTTPException, Path, Query
from pydantic import BaseModel, Field

from buttress import Fallback, Pipeline, Timeout
from buttress.asgi import HardenSettings, Limit, RateLimitRule, harden
from buttress.asgi._idempotency import MAX_KEY_LENGTH
from buttress.asgi.context import propagate_context
from buttress.asgi.health import CheckResult, DiskCheck, HttpCheck, MemoryCheck, SQLiteCheck
from buttress.demo.flaky import FlakyServer
from buttress.http import async_client

__all__ = ["OrderIn", "create_app"]

_MAX_ID = 2**63 - 1  # SQLite's INTEGER range


class OrderIn(BaseModel):
    """A new order."""

    sku: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$")
    quantity: int = Field(ge=1, le=1000)


class _Store:
    """Orders in SQLite; every call runs in a worker thread with its own connection."""

    def __init__(self, path: str) -> None:
        self.path = path
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                "sku TEXT NOT NULL, quantity INTEGER NOT NULL, created REAL NOT NULL)"
            )

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=5.0)
        db.execute("PRAGMA journal_mode=WAL")
        return db

    def _insert(self, sku: str, quantity: int) -> dict[str, Any]:
        with self._connect() as db:
            cursor = db.execute(
                "INSERT INTO orders (sku, quantity, created) VALUES (?, ?, ?)",
                (sku, quantity, time.time()),
            )
            return {"id": cursor.lastrowid, "sku": sku, "quantity": quantity}

    def _get(self, order_id: int) -> dict[str, Any] | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT id, sku, quantity FROM orders WHERE id = ?", (order_id,)
            ).fetchone()
        return None if row is None else {"id": row[0], "sku": row[1], "quantity": row[2]}

    def _list(self, limit: int, sku: str | None) -> list[dict[str, Any]]:
        with self._connect() as db:
            if sku is None:
                rows = db.execute(
                    "SELECT id, sku, quantity FROM orders ORDER BY id DESC LIMIT ?", (limit,)
                ).fetchall()
            else:
                rows = db.execute(
                    "SELECT id, sku, quantity FROM orders WHERE sku = ? ORDER BY id DESC LIMIT ?",
                    (sku, limit),
                ).fetchall()
        return [{"id": r[0], "sku": r[1], "quantity": r[2]} for r in rows]

    async def insert(self, sku: str, quantity: int) -> dict[str, Any]:
        return await asyncio.to_thread(self._insert, sku, quantity)

    async def get(self, order_id: int) -> dict[str, Any] | None:
        return await asyncio.to_thread(self._get, order_id)

    async def list(self, limit: int, sku: str | None = None) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self._list, limit, sku)


def create_app(
    settings: HardenSettings | None = None,
    *,
    db_path: str | None = None,
    flaky_fail_rate: float = 0.3,
) -> Any:
    """The hardened demo application (an ASGI app; FastAPI inside).

    Example::

        uvicorn --factory buttress.demo.app:create_app --no-proxy-headers
    """
    path = (
        db_path
        or os.environ.get("BUTTRESS_DEMO_DB")
        or os.path.join(tempfile.mkdtemp(prefix="buttress-demo-"), "orders.sqlite3")
    )
    store = _Store(path)
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        flaky = FlakyServer(fail_rate=flaky_fail_rate, slow_rate=0.05, slow_seconds=0.6, seed=7)
        flaky.__enter__()
        state["flaky"] = flaky
        state["http"] = async_client(on_request=[propagate_context])
        try:
            yield
        finally:
            await state["http"].aclose()
            flaky.__exit__(None, None, None)

    app = FastAPI(title="buttress demo: orders", version="1", lifespan=lifespan)
    price_pipeline = Pipeline(
        Fallback(value=None),  # any failure: serve the cached price
        Timeout(1.0),
        name="demo-price",
    )

    @app.post("/orders", status_code=201)
    async def create_order(
        order: OrderIn,
        idempotency_key: str = Header(
            # the middleware validates the key; this only documents it (a refusal here
            # would be a 422 stored under the key): 255 characters, quoted and escaped
            max_length=2 * MAX_KEY_LENGTH + 2,
            description="Required: a retry with the same key replays the first answer",
        ),
    ) -> dict[str, Any]:
        """Create an order (exactly once per Idempotency-Key)."""
        return await store.insert(order.sku, order.quantity)

    @app.get("/orders")
    async def list_orders(
        limit: int = Query(default=50, ge=1, le=500),
        sku: str | None = Query(default=None, max_length=64),
    ) -> list[dict[str, Any]]:
        """The most recent orders (of one SKU, if given)."""
        return await store.list(limit, sku)

    @app.get("/orders/{order_id}")
    async def get_order(order_id: int = Path(ge=1, le=_MAX_ID)) -> dict[str, Any]:
        """One order."""
        found = await store.get(order_id)
        if found is None:
            raise HTTPException(status_code=404, detail=f"order {order_id} does not exist")
        return found

    @app.get("/price/{sku}")
    async def price(sku: str = Path(max_length=64)) -> dict[str, Any]:
        """The price from the flaky price service, or a cached one when it is down."""

        async def fetch() -> Any:
            response = await state["http"].get(state["flaky"].url)
            response.raise_for_status()
            return response.json()["price"]

        value = await price_pipeline.acall(fetch)
        return {
            "sku": sku,
            "price": 42 if value is None else value,
            "cached": value is None,
            "worker": os.getpid(),  # shows that the rate limit holds across workers
        }

    @app.get("/slow")
    async def slow(seconds: float = Query(default=2.0, ge=0, le=10)) -> dict[str, float]:
        """Sleeps (bounded at 10 s), to see the request deadline at work."""
        await asyncio.sleep(seconds)
        return {"slept": seconds}

    @app.get("/boom")
    async def boom() -> None:
        """Fails, to see problem+json and the logs."""
        raise RuntimeError("the demo failed on purpose (this text never reaches clients)")

    class _FlakyCheck(HttpCheck):
        """The price service (non-critical: the API degrades to cached prices)."""

        def __init__(self) -> None:
            super().__init__("http://127.0.0.1:9/", name="price-service", critical=False)

        async def run(self) -> CheckResult:
            flaky = state.get("flaky")
            if flaky is None:
                return CheckResult(status="warn", output="not started")
            self.url = flaky.url
            return await super().run()

    return harden(
        app,
        settings
        or HardenSettings(
            request_timeout=5.0,
            csp_routes={"/docs": None},  # Swagger UI loads its assets from a CDN
            drain_delay=1.0,  # a demo: production keeps 5 s for load balancers to notice
            shed_max_in_flight=16,  # small, so that the self-check can show shedding
            shutdown_grace=5.0,
            store_url=os.environ.get("BUTTRESS_STORE_URL"),
            idempotency_routes={"POST /orders": "required"},
        ),
        checks=[SQLiteCheck(path, name="orders-db"), _FlakyCheck(), DiskCheck(), MemoryCheck()],
        rate_limits=[
            RateLimitRule([Limit("price", "60/minute;burst=25")], path="/price/{sku}"),
            RateLimitRule(
                [Limit("orders", "50/second;burst=100"), Limit("orders-daily", "20000/day")],
                path="/orders",
                methods=["POST"],
            ),
        ],
    )
