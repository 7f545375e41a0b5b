"""The taskiq broker the taskiq jobs tests run in real ``taskiq worker`` processes.

Configured by environment: TQ_BROKER (an amqp:// vhost URL), TQ_QUEUE (this test's queue;
its delay queue is ``<queue>.delay``), JOBS_STORE, JOBS_DLQ, JOBS_PG (a PostgreSQL
database for side effects), JOBS_REDIS (counters and flags), JOBS_LOG (JSON log lines),
JOBS_ATTEMPTS, JOBS_LEASE.
"""

from __future__ import annotations

import asyncio
import logging
import os

import psycopg
import redis.asyncio as aioredis
import structlog
from taskiq import TaskiqEvents, TaskiqState
from tests.jobs.taskiq_broker import make_broker

from buttress.errors import ButtressError, ErrorCode
from buttress.jobs import JobPolicy, current_job
from buttress.jobs.taskiq import TaskiqJobs
from buttress.resilience import Backoff, RetryBudget

QUEUE = os.environ["TQ_QUEUE"]
PG = os.environ.get("JOBS_PG", "")


broker = make_broker(os.environ["TQ_BROKER"], QUEUE, qos=int(os.environ.get("TQ_QOS", "4")))
jobs = TaskiqJobs(
    broker,
    store=os.environ["JOBS_STORE"],
    dlq=os.environ["JOBS_DLQ"],
    policy=JobPolicy(
        attempts=int(os.environ.get("JOBS_ATTEMPTS", "3")),
        backoff=Backoff.constant(0.2),
        deadline=60.0,
        lease=float(os.environ.get("JOBS_LEASE", "2")),
        park=0.5,
    ),
    budget=lambda _queue: RetryBudget(ratio=0.2, min_per_second=10.0, ttl=60.0),
)
flags = aioredis.Redis.from_url(os.environ["JOBS_REDIS"])
log = logging.getLogger("jobs_test.taskiq")


class Unavailable(ButtressError):
    """The dependency is down (retriable)."""

    default_code = ErrorCode.UPSTREAM_UNAVAILABLE


@broker.on_event(TaskiqEvents.WORKER_STARTUP)
async def _ready(_: TaskiqState) -> None:
    path = os.environ.get("JOBS_LOG")
    if path:
        from buttress.asgi._logging import configure_logging

        configure_logging(json=True, stream=open(path, "a", buffering=1))  # noqa: SIM115
    await flags.set(f"ready:{os.getpid()}", 1, ex=600)


@jobs.task(name="tq.write_row")
async def write_row(order: int) -> int:
    """Insert one row in a transaction that stays open until the test lets it commit."""
    job = current_job()
    assert job is not None
    async with await psycopg.AsyncConnection.connect(PG) as conn:
        await conn.execute("INSERT INTO orders (id, job_key) VALUES (%s, %s)", (order, job.key))
        await flags.incr(f"started:{order}")
        await flags.set(f"pid:{order}", os.getpid())
        for _ in range(400):  # at most 20 s
            if await flags.get(f"go:{order}") is not None:
                break
            await asyncio.sleep(0.05)
        await conn.commit()
    return order


@jobs.task(name="tq.poison")
async def poison(item: str) -> str:
    """Fails every time until the test sets the 'fixed' flag."""
    await flags.incr(f"calls:{item}")
    if await flags.get("fixed") is None:
        raise Unavailable(f"poison {item}: the handler cannot process it")
    await flags.incr(f"done:{item}")
    return item


@jobs.task(name="tq.effect")
async def effect(item: str) -> str:
    """One side effect per run: counted per key."""
    await flags.hincrby("effects", item, 1)
    return item


@jobs.task(name="tq.context")
async def context_job(tag: str) -> None:
    """Logs two lines (the test reads the request id and trace id in them)."""
    structlog.get_logger("jobs_test").warning("context_job", tag=tag)
    log.warning("stdlib line of %s", tag)
    await flags.set(f"ctx_done:{tag}", 1)
