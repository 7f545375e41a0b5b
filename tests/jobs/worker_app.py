"""The Celery app the jobs tests run in real worker processes (configured by environment).

JOBS_BROKER (redis:// or amqp://), JOBS_STORE (buttress store URL), JOBS_DLQ, JOBS_PG
(a PostgreSQL database for side effects), JOBS_REDIS (counters and flags), JOBS_SPANS (a
file for finished spans, JSON lines), JOBS_ATTEMPTS, JOBS_DEADLINE, JOBS_BUDGET_RATIO.
"""

from __future__ import annotations

import json
import logging
import os
import time

import psycopg
import redis
from celery import Celery, signals

from buttress.errors import ButtressError, ErrorCode
from buttress.jobs import JobPolicy, current_job
from buttress.jobs.celery import CeleryJobs
from buttress.resilience import Backoff, RetryBudget

BROKER = os.environ["JOBS_BROKER"]
flags = redis.Redis.from_url(os.environ["JOBS_REDIS"])
PG = os.environ.get("JOBS_PG", "")

app = Celery("jobs_test", broker=BROKER)
app.conf.update(
    broker_transport_options={
        "visibility_timeout": float(os.environ.get("JOBS_VISIBILITY", "4")),
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
        "polling_interval": 0.2,
    },
    broker_connection_retry=True,
    broker_connection_max_retries=None,
    worker_hijack_root_logger=False,
    task_ignore_result=True,
    broker_heartbeat=0,
)

policy = JobPolicy(
    attempts=int(os.environ.get("JOBS_ATTEMPTS", "3")),
    backoff=Backoff.constant(0.2),
    deadline=float(os.environ.get("JOBS_DEADLINE", "60")),
    lease=float(os.environ.get("JOBS_LEASE", "2")),
    park=float(os.environ.get("JOBS_PARK", "0.5")),
)
ratio = float(os.environ.get("JOBS_BUDGET_RATIO", "0.2"))
floor = float(os.environ.get("JOBS_BUDGET_MIN", "10"))
jobs = CeleryJobs(
    app,
    store=os.environ["JOBS_STORE"],
    dlq=os.environ["JOBS_DLQ"],
    policy=policy,
    budget=lambda _queue: RetryBudget(ratio=ratio, min_per_second=floor, ttl=60.0),
)

log = logging.getLogger("jobs_test.app")


class Unavailable(ButtressError):
    """The dependency is down (retriable)."""

    default_code = ErrorCode.UPSTREAM_UNAVAILABLE


@signals.worker_init.connect
def _setup(**_: object) -> None:
    setup_tracing()
    path = os.environ.get("JOBS_LOG")
    if path:
        from buttress.asgi._logging import configure_logging

        configure_logging(json=True, stream=open(path, "a", buffering=1))  # noqa: SIM115


@signals.worker_ready.connect
def _ready(**_: object) -> None:
    flags.set(f"ready:{os.getpid()}", 1, ex=600)


def setup_tracing() -> None:
    path = os.environ.get("JOBS_SPANS")
    if not path:
        return
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    from buttress.jobs import _observe

    class FileExporter(SpanExporter):
        def export(self, spans):  # type: ignore[no-untyped-def]
            with open(path, "a") as out:
                for span in spans:
                    ctx = span.context
                    out.write(
                        json.dumps(
                            {
                                "name": span.name,
                                "trace_id": f"{ctx.trace_id:032x}",
                                "span_id": f"{ctx.span_id:016x}",
                                "parent": f"{span.parent.span_id:016x}" if span.parent else None,
                                "attributes": dict(span.attributes or {}),
                            }
                        )
                        + "\n"
                    )
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(FileExporter()))
    trace.set_tracer_provider(provider)
    _observe.reset_tracing()


@jobs.task(name="t.write_row")
def write_row(order: int) -> int:
    """Insert one row in a transaction that stays open until the test lets it commit."""
    job = current_job()
    assert job is not None
    with psycopg.connect(PG, autocommit=False) as conn:
        conn.execute("INSERT INTO orders (id, job_key) VALUES (%s, %s)", (order, job.key))
        flags.incr(f"started:{order}")
        deadline = time.monotonic() + 20
        while flags.get(f"go:{order}") is None and time.monotonic() < deadline:
            time.sleep(0.05)
        conn.commit()
    return order


@jobs.task(name="t.poison")
def poison(item: str) -> str:
    """Fails every time until the test sets the 'fixed' flag."""
    flags.incr(f"calls:{item}")
    if flags.get("fixed") is None:
        raise Unavailable(f"poison {item}: the handler cannot process it")
    flags.incr(f"done:{item}")
    return item


@jobs.task(name="t.effect")
def effect(item: str) -> str:
    """One side effect per run: counted per key."""
    flags.hincrby("effects", item, 1)
    return item


@jobs.task(name="t.dependency")
def dependency(item: int) -> None:
    """Calls a dependency that is down (counted)."""
    flags.incr("dependency_calls")
    raise Unavailable("the dependency is down")


@jobs.task(name="t.context")
def context_job(tag: str) -> None:
    """Logs a line (the test reads the request id and trace id in it)."""
    import structlog

    structlog.get_logger("jobs_test").warning("context_job", tag=tag)
    log.warning("stdlib line of %s", tag)
    flags.set(f"ctx_done:{tag}", 1)


@jobs.task(name="t.slow")
def slow(item: str) -> str:
    """Takes a while; counted."""
    time.sleep(0.1)
    flags.hincrby("slow_effects", item, 1)
    return item
