"""Celery + Redis: duplicates from 4 processes, a dependency down, the request's context."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest
import redis
from celery import Celery
from tests.jobs._send import Producer
from tests.jobs.conftest import REDIS5, wait_until

from buttress.asgi.context import bound_context
from buttress.jobs import open_dlq
from buttress.jobs.celery import CeleryJobs

pytestmark = [pytest.mark.redis, pytest.mark.process]


def _enqueue(queue: str, items: list[str]) -> None:
    producer = Producer(REDIS5)
    for item in items:
        producer.send("t.effect", item, queue=queue, key=f"dup-{item}")
    producer.close()


def _drained(queue: str) -> bool:
    client = redis.Redis.from_url(REDIS5)
    try:
        return client.llen(queue) == 0 and client.hlen("unacked") == 0
    finally:
        client.close()


def test_1000_jobs_half_duplicates_from_4_processes(
    flags, make_workers, queue_name: str, tmp_path: Path
) -> None:
    workers = make_workers(
        JOBS_BROKER=REDIS5, JOBS_STORE=REDIS5, JOBS_DLQ=f"sqlite:///{tmp_path / 'dlq.db'}",
        JOBS_LEASE="1",
    )  # fmt: skip
    workers.start(queue_name, pool="prefork", concurrency=3)
    distinct = [f"k{i}" for i in range(500)]
    everything = distinct + distinct  # every key twice: 1,000 jobs, 50 % duplicates
    # each process sends a quarter; the two copies of a key go from different processes
    slices = [everything[i::4] for i in range(4)]
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_enqueue, args=(queue_name, part)) for part in slices]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    wait_until(lambda: flags.hlen("effects") == 500, 60, "every distinct key to run")
    wait_until(lambda: _drained(queue_name), 30, "duplicates to settle")
    effects = {k.decode(): int(v) for k, v in flags.hgetall("effects").items()}
    assert effects == dict.fromkeys(distinct, 1)


def test_dependency_down_retries_stop_at_budget_and_deadline_dead_letters(
    flags, make_workers, queue_name: str, tmp_path: Path
) -> None:
    dlq_url = f"sqlite:///{tmp_path / 'dlq.db'}"
    workers = make_workers(
        JOBS_BROKER=REDIS5, JOBS_STORE=REDIS5, JOBS_DLQ=dlq_url, JOBS_ATTEMPTS="5",
        JOBS_DEADLINE="4", JOBS_PARK="0.5", JOBS_BUDGET_RATIO="0.2", JOBS_BUDGET_MIN="0",
    )  # fmt: skip
    workers.start(queue_name)
    producer = Producer(REDIS5)
    for i in range(20):
        producer.send("t.dependency", i, queue=queue_name)
    dlq = open_dlq(dlq_url)
    wait_until(lambda: dlq.count() == 20, 30, "every job in the DLQ")
    calls = int(flags.get("dependency_calls"))
    # 20 first attempts + at most 20 % of them as retries: no retry storm (5 attempts
    # each without a budget would be 100 calls)
    assert 20 <= calls <= 24
    reasons = {r.reason for r in dlq.list()}
    assert reasons == {"deadline"}
    assert all(r.error_type in ("", "Unavailable") for r in dlq.list())
    dlq.close()
    producer.close()


def test_request_id_and_trace_id_reach_worker_logs_and_spans(
    flags, make_workers, queue_name: str, tmp_path: Path
) -> None:
    spans = tmp_path / "spans.jsonl"
    logs = tmp_path / "worker.log"
    workers = make_workers(
        JOBS_BROKER=REDIS5, JOBS_STORE=REDIS5, JOBS_DLQ=f"sqlite:///{tmp_path / 'dlq.db'}",
        JOBS_SPANS=str(spans), JOBS_LOG=str(logs),
    )  # fmt: skip
    workers.start(queue_name)
    # the enqueuing side: a CeleryJobs app, inside a request's context
    app = Celery("jobs_test_api", broker=REDIS5)
    jobs = CeleryJobs(app, store=REDIS5, dlq=REDIS5)

    @jobs.task(name="t.context")
    def context_job(tag: str) -> None:  # the worker's implementation runs, not this one
        raise AssertionError("runs in the worker")

    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent = "00f067aa0ba902b7"
    carrier = {"traceparent": f"00-{trace_id}-{parent}-01", "x-request-id": "req-ctx-42"}
    with bound_context(carrier) as trace:
        assert trace is not None
        jobs.enqueue(context_job, "c1", queue=queue_name)
    wait_until(lambda: flags.get("ctx_done:c1"), 20, "the context job")
    lines = [json.loads(line) for line in logs.read_text().splitlines() if line.startswith("{")]
    mine = [line for line in lines if "c1" in json.dumps(line)]
    assert len(mine) == 2  # the structlog line and the standard-library line
    for line in mine:
        assert line["request_id"] == "req-ctx-42"
        assert line["trace_id"] == trace_id
    wait_until(spans.exists, 5, "the span file")
    [span] = [json.loads(s) for s in spans.read_text().splitlines() if "t.context" in s]
    assert span["name"] == "job t.context"
    assert span["trace_id"] == trace_id
    # the job's span is a child of the span that enqueued it (the request's own span)
    assert span["parent"] == trace.span_id
    assert span["attributes"]["buttress.request_id"] == "req-ctx-42"
    assert span["attributes"]["messaging.system"] == "celery"
    app.pool.force_close_all()
    app.close()
