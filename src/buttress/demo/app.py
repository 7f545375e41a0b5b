"""The demo service: a small orders API hardened by buttress, on embedded defaults.

``buttress demo`` serves it with uvicorn on 127.0.0.1:8000. Everything is local: orders live
in SQLite (a file in a temporary directory unless ``BUTTRESS_DEMO_DB`` says otherwise), and
``GET /price/{sku}`` calls a deliberately flaky price service that the demo starts on
another loopback port, through a `buttress.http` client (retries, breaker, fallback).

Routes: ``POST /orders`` (requires an ``Idempotency-Key``: a retried POST never creates a
second order), ``GET /orders``, ``GET /orders/{order_id}``, ``GET /price/{sku}`` (rate
limited per client: 25 at once, then 60 a minute), ``GET /slow`` (for deadlines),
``GET /boom`` (for errors), ``GET /orders/{order_id}/confirmations`` (what the order's
confirmation job sent, with ``BUTTRESS_DEMO_BROKER``: see `buttress.demo.jobs`),
``GET /orders/export`` (a quota per plan: ``X-Plan: free``
3 a minute, ``pro`` 120), plus what `harden` adds. At start-up it fills a price cache
(about a second): until then ``/health/startup`` and ``/health/ready`` answer 503.

Shared state (rate limits, idempotency records) lives in the store named by
``BUTTRESS_STORE_URL`` (``memory://`` by default; ``buttress demo --workers N`` defaults to
a SQLite file shared by the workers; Redis and PostgreSQL URLs work too).
"""

from __future__ import annotations

import asyncio
import logging
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
from buttress.asgi.health import (
    CheckResult,
    DiskCheck,
    HttpCheck,
    MemoryCheck,
    PostgresCheck,
    RedisCheck,
    SQLiteCheck,
)
from buttress.asgi.quotas import Plans, plan_from_header
from buttress.demo.flaky import FlakyServer
from buttress.demo.jobs import broker_url, confirmations, enqueue_confirmation, ensure_table
from buttress.http import async_client
from buttress.stores._sqlite import retry_while_locked

__all__ = ["OrderIn", "create_app"]

_log = logging.getLogger("buttress.demo")
_MAX_ID = 2**63 - 1  # SQLite's INTEGER range
_WARM_SKUS = tuple(f"sku-{i}" for i in range(5))  # the price cache filled at start-up
_WARM_PAUSE = 0.2  # between two of them: the start-up takes about a second
_EXPORT_PLANS = {"free": "3/minute", "pro": "120/minute"}  # the first is the default


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
        # workers starting together race to switch a new file to WAL, which SQLite's busy
        # handler does not wait for
        retry_while_locked(
            lambda: db.execute("PRAGMA journal_mode=WAL"), timeout=5.0, label="demo orders"
        )
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
    ensure_table(path)  # the confirmations the order job sends (with BUTTRESS_DEMO_BROKER)
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        flaky = FlakyServer(fail_rate=flaky_fail_rate, slow_rate=0.05, slow_seconds=0.6, seed=7)
        flaky.__enter__()
        state["flaky"] = flaky
        state["http"] = async_client(on_request=[propagate_context])
        warming = asyncio.create_task(_warm_prices())
        try:
            yield
        finally:
            warming.cancel()
            await state["http"].aclose()
            flaky.__exit__(None, None, None)

    async def _warm_prices() -> None:
        """Start-up work: fill the price cache (a second or so), then the service is started.

        Until it is done, ``/health/startup`` and ``/health/ready`` answer 503 (the start-up
        probe of Kubernetes waits; no traffic is sent), while ``/health/live`` answers 200.
        """
        try:
            for sku in _WARM_SKUS:
                value = await price_pipeline.acall(_fetch_price)  # a failure: None (fallback)
                state.setdefault("prices", {})[sku] = value
                await asyncio.sleep(_WARM_PAUSE)
        finally:  # started, warm or not: a cold cache only means cached=false answers
            state["warm"] = True

    def prices_warm() -> bool:
        """The start-up check: the price cache is filled."""
        return bool(state.get("warm"))

    async def _fetch_price() -> Any:
        response = await state["http"].get(state["flaky"].url)
        response.raise_for_status()
        return response.json()["price"]

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
        """Create an order (exactly once per Idempotency-Key); its confirmation is a job."""
        created = await store.insert(order.sku, order.quantity)
        if broker_url() is not None:  # the request's id and trace go with the job
            try:
                await asyncio.to_thread(enqueue_confirmation, created["id"])
            except Exception as exc:  # the order stands; the broker's outage is logged
                _log.warning("order %s: confirmation not enqueued: %s", created["id"], exc)
        return created

    @app.get("/orders")
    async def list_orders(
        limit: int = Query(default=50, ge=1, le=500),
        sku: str | None = Query(default=None, max_length=64),
    ) -> list[dict[str, Any]]:
        """The most recent orders (of one SKU, if given)."""
        return await store.list(limit, sku)

    @app.get("/orders/export")
    async def export_orders(sku: str | None = Query(default=None, max_length=64)) -> Any:
        """Every order (up to 500), as an export: a per-plan quota (``X-Plan``: free, pro)."""
        rows = await store.list(500, sku)
        return {"rows": len(rows), "orders": rows}

    @app.get("/orders/{order_id}/confirmations")
    async def order_confirmations(order_id: int = Path(ge=1, le=_MAX_ID)) -> dict[str, int]:
        """How many confirmations the job sent for this order (one, with a broker)."""
        sent = await asyncio.to_thread(confirmations, path, order_id)
        return {"order_id": order_id, "sent": sent}

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
        value = await price_pipeline.acall(_fetch_price)
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

    checks: list[Any] = [
        SQLiteCheck(path, name="orders-db"),
        _FlakyCheck(),
        DiskCheck(),
        MemoryCheck(),
    ]
    store_url = os.environ.get("BUTTRESS_STORE_URL") or ""
    scheme = store_url.partition(":")[0].lower()
    if scheme in ("redis", "rediss"):  # the shared store: without it, not ready
        checks.append(RedisCheck(url=store_url, name="store"))
    elif scheme in ("postgresql", "postgres"):
        checks.append(PostgresCheck(dsn=store_url, name="store"))
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
        checks=checks,
        startup_checks=[prices_warm],
        rate_limits=[
            RateLimitRule([Limit("price", "60/minute;burst=25")], path="/price/{sku}"),
            RateLimitRule(
                [Limit("orders", "50/second;burst=100"), Limit("orders-daily", "20000/day")],
                path="/orders",
                methods=["POST"],
            ),
            # a quota by plan: the demo takes the plan from a header, which only a trusted
            # gateway may set in production (there: your authentication's principal)
            RateLimitRule(
                [Limit("exports", Plans(_EXPORT_PLANS, resolve=plan_from_header("x-plan"), ttl=0))],
                path="/orders/export",
            ),
        ],
    )
