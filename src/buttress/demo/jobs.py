"""The demo's background job: an order confirmation, sent at most once per order.

Configured by ``BUTTRESS_DEMO_BROKER`` (a Celery broker URL: ``redis://...`` or
``amqp://...``). ``POST /orders`` then enqueues ``demo.send_confirmation(order_id)`` with the
idempotency key ``confirm-<order id>``, carrying the request's id and trace; a Celery worker
runs it through `buttress.jobs` (the key taken in the shared store before the side effect,
the result recorded after), so a redelivered or duplicated message never sends a second
confirmation. The side effect is a row in the demo's ``confirmations`` table (SQLite, the
orders file ``BUTTRESS_DEMO_DB``, which the worker must share), deliberately not unique:
``GET /orders/{id}/confirmations`` counts them, and the self-check expects exactly one.

The worker::

    export BUTTRESS_DEMO_DB=/tmp/orders.sqlite3 BUTTRESS_DEMO_BROKER=redis://127.0.0.1:6379/3
    celery -A buttress.demo.jobs worker -P solo
"""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Any

from buttress.errors import ConfigurationError

__all__ = [
    "BROKER_ENV",
    "DB_ENV",
    "broker_url",
    "confirmations",
    "enqueue_confirmation",
    "jobs_store_url",
]

BROKER_ENV = "BUTTRESS_DEMO_BROKER"
DB_ENV = "BUTTRESS_DEMO_DB"
_TABLE = (
    "CREATE TABLE IF NOT EXISTS confirmations "
    "(order_id INTEGER NOT NULL, job_key TEXT NOT NULL, sent REAL NOT NULL)"
)


def broker_url() -> str | None:
    """The configured broker, or None (the demo then sends no job)."""
    return os.environ.get(BROKER_ENV) or None


def _db_path() -> str:
    path = os.environ.get(DB_ENV)
    if not path:
        raise ConfigurationError(
            f"{DB_ENV} is not set: the demo's job worker writes to the orders file the API "
            "uses; start both with the same BUTTRESS_DEMO_DB"
        )
    return path


def jobs_store_url() -> str:
    """Where job keys live: the demo's shared store, else a SQLite file beside the orders."""
    url = os.environ.get("BUTTRESS_STORE_URL") or ""
    if url and not url.startswith("memory:"):
        return url
    return "sqlite:///" + os.path.join(os.path.dirname(os.path.abspath(_db_path())), "jobs.db")


def ensure_table(path: str) -> None:
    """The confirmations table (the API creates it with its orders)."""
    with sqlite3.connect(path) as db:
        db.execute(_TABLE)


def confirmations(path: str, order_id: int) -> int:
    """How many confirmations were sent for ``order_id``."""
    with sqlite3.connect(path) as db:
        db.execute(_TABLE)
        row = db.execute(
            "SELECT count(*) FROM confirmations WHERE order_id = ?", (order_id,)
        ).fetchone()
    return int(row[0])


def _build() -> tuple[Any, Any, Any]:
    from celery import Celery  # type: ignore[import-untyped]  # noqa: PLC0415 - with a broker

    from buttress.jobs import current_job  # noqa: PLC0415
    from buttress.jobs.celery import CeleryJobs  # noqa: PLC0415

    url = broker_url()
    if url is None:
        raise ConfigurationError(f"{BROKER_ENV} is not set: the demo's jobs need a broker URL")
    celery_app = Celery("buttress-demo", broker=url)
    celery_app.conf.update(broker_connection_retry_on_startup=True)
    jobs = CeleryJobs(celery_app, store=jobs_store_url())

    @jobs.task(name="demo.send_confirmation")  # type: ignore[untyped-decorator]
    def send_confirmation(order_id: int) -> dict[str, Any]:
        """Send the order's confirmation (here: one row; a real service sends an e-mail)."""
        job = current_job()
        with sqlite3.connect(_db_path()) as db:
            db.execute(_TABLE)
            db.execute(
                "INSERT INTO confirmations (order_id, job_key, sent) VALUES (?, ?, ?)",
                (order_id, job.idempotency_key if job is not None else "", time.time()),
            )
        return {"order_id": order_id, "sent": True}

    return celery_app, jobs, send_confirmation


_built: tuple[Any, Any, Any] | None = None


def _parts() -> tuple[Any, Any, Any]:
    global _built
    if _built is None:
        _built = _build()
    return _built


def enqueue_confirmation(order_id: int) -> None:
    """Enqueue ``order_id``'s confirmation (key ``confirm-<id>``: a second enqueue is a no-op)."""
    _, jobs, task = _parts()
    jobs.enqueue(task, order_id, key=f"confirm-{order_id}")


def __getattr__(name: str) -> Any:  # `celery -A buttress.demo.jobs` reads `app`
    if name in ("app", "celery"):
        return _parts()[0]
    raise AttributeError(name)
