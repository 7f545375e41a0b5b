"""taskiq on RabbitMQ, real ``taskiq worker`` processes: crashes, poison, duplicates, context.

Redis DB 9 holds the flags and the idempotency keys; side effects go to a PostgreSQL
database ``test_tq_*``; the broker is this session's RabbitMQ vhost, a queue per test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from taskiq.kicker import AsyncKicker
from tests.jobs.conftest import ROOT, flushed_redis, orders_database, wait_until
from tests.jobs.taskiq_broker import make_broker

from buttress.asgi.context import bound_context
from buttress.cli import main
from buttress.jobs import META_HEADER, new_meta, open_dlq
from buttress.jobs._health import QueueStats
from buttress.jobs.taskiq import TaskiqJobs

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.process]

REDIS9 = "redis://127.0.0.1:6379/9"


@pytest.fixture
def flags9() -> Iterator[redis.Redis]:
    """Redis DB 9 (this engine's tests), emptied before and after."""
    with flushed_redis(REDIS9) as client:
        yield client


@pytest.fixture
def tq_pg() -> Iterator[str]:
    """A PostgreSQL database ``test_tq_<random>`` with an ``orders`` table; dropped after."""
    with orders_database("test_tq") as url:
        yield url


class TaskiqWorkers:
    """``taskiq worker tests.jobs.taskiq_app:broker`` processes of one test; stopped after."""

    def __init__(self, flags: redis.Redis, env: dict[str, str], tmp: Path) -> None:
        self.flags, self.env, self.tmp = flags, env, tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *, workers: int = 1, wait_tasks: float = 5.0) -> subprocess.Popen[bytes]:
        before = set(self.flags.keys("ready:*"))
        log = open(self.tmp / f"taskiq-{len(self.procs)}.err", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "taskiq", "worker", "tests.jobs.taskiq_app:broker",
                "--workers", str(workers), "--max-async-tasks", "10",
                "--wait-tasks-timeout", str(wait_tasks), "--shutdown-timeout", "3",
                "--log-level", "WARNING", "--no-configure-logging",
            ],
            env={**os.environ, **self.env, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()
        self.procs.append(proc)

        def ready() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"taskiq worker exited: {self.output()[-3000:]}")
            return len(set(self.flags.keys("ready:*")) - before) >= workers

        wait_until(ready, 30, "taskiq workers to be ready")
        return proc

    def output(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.tmp.glob("taskiq-*")))

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
            else:  # the manager is gone; its children must not outlive the test
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def tq(
    flags9: redis.Redis, rabbit_vhost: str, tmp_path: Path
) -> Iterator[Callable[..., TaskiqWorkers]]:
    """A factory of this test's workers on a queue of its own: ``tq(**env) -> workers``."""
    made: list[TaskiqWorkers] = []

    def factory(**env: str) -> TaskiqWorkers:
        base = {
            "TQ_BROKER": rabbit_vhost, "TQ_QUEUE": f"tq_{uuid.uuid4().hex[:10]}",
            "JOBS_REDIS": REDIS9, "JOBS_STORE": REDIS9,
            "JOBS_DLQ": f"sqlite:///{tmp_path / 'dlq.db'}",
        }  # fmt: skip
        workers = TaskiqWorkers(flags9, {**base, **env}, tmp_path)
        made.append(workers)
        return workers

    yield factory
    for workers in made:
        workers.close()


async def _send(
    broker_url: str, queue: str, jobs: list[tuple[str, tuple[Any, ...], str | None]],
    context: Mapping[str, str] | None = None,
) -> None:  # fmt: skip
    """Kick ``(task name, args, key)`` jobs by name, as a producer process would."""
    broker = make_broker(broker_url, queue)
    await broker.startup()
    try:
        for name, args, key in jobs:
            meta = json.dumps(new_meta(key=key, context=context or {}))
            await AsyncKicker(name, broker, {META_HEADER: meta}).kiq(*args)
    finally:
        await broker.shutdown()


def send(workers: TaskiqWorkers, *jobs: tuple[str, tuple[Any, ...], str | None], **kw: Any) -> None:
    asyncio.run(_send(workers.env["TQ_BROKER"], workers.env["TQ_QUEUE"], list(jobs), **kw))


def _rows(pg: str) -> list[tuple[int, str]]:
    with psycopg.connect(pg) as conn:
        return [(r[0], r[1]) for r in conn.execute("SELECT id, job_key FROM orders ORDER BY id")]


def _settled(workers: TaskiqWorkers) -> bool:
    """Nothing waiting in the test's queue or its delay queue."""
    stats = QueueStats(workers.env["TQ_BROKER"])
    queue = workers.env["TQ_QUEUE"]
    return stats.measure(queue).depth == 0 and stats.measure(f"{queue}.delay").depth == 0


def test_sigkill_mid_job_writes_exactly_one_row(tq, flags9: redis.Redis, tq_pg: str) -> None:
    workers = tq(JOBS_PG=tq_pg, JOBS_LEASE="1.5")
    workers.start()
    send(workers, ("tq.write_row", (7,), "order-7"))
    # the row is inserted, its transaction still open: SIGKILL the worker process there
    wait_until(lambda: flags9.get("started:7"), 20, "the job to start")
    os.kill(int(flags9.get("pid:7")), signal.SIGKILL)
    time.sleep(0.3)
    assert _rows(tq_pg) == []  # the killed run's insert never committed
    flags9.set("go:7", 1)  # from now on the job commits at once
    # taskiq's process manager restarts the dead worker; RabbitMQ redelivers the unacked
    # message; the killed run's key is in flight until its lease ends, then it runs
    wait_until(lambda: _rows(tq_pg), 30, "the redelivered job to commit its row")
    send(workers, ("tq.effect", ("after-crash",), None))
    wait_until(lambda: flags9.hget("effects", "after-crash"), 20, "the marker job")
    wait_until(lambda: _settled(workers), 10, "the queue to settle")
    time.sleep(0.5)
    assert _rows(tq_pg) == [(7, "order-7")]
    assert int(flags9.get("started:7")) == 2  # killed once, ran once more, never again


def test_sigterm_hands_back_the_job_in_flight(tq, flags9: redis.Redis, tq_pg: str) -> None:
    workers = tq(JOBS_PG=tq_pg, JOBS_LEASE="1.5")
    first = workers.start(wait_tasks=1.0)
    send(workers, ("tq.write_row", (8,), "order-8"))
    wait_until(lambda: flags9.get("started:8"), 20, "the job to start")
    # SIGTERM: stop taking jobs, wait 1 s for the one in flight, exit without acking it
    os.killpg(first.pid, signal.SIGTERM)
    first.wait(timeout=20)
    assert _rows(tq_pg) == []
    flags9.set("go:8", 1)
    workers.start()
    wait_until(lambda: _rows(tq_pg), 30, "the handed-back job to commit in a new worker")
    wait_until(lambda: _settled(workers), 10, "the queue to settle")
    time.sleep(0.5)
    assert _rows(tq_pg) == [(8, "order-8")]
    assert int(flags9.get("started:8")) == 2


def test_poison_to_dlq_then_replay_completes_once(
    tq, flags9: redis.Redis, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workers = tq(JOBS_ATTEMPTS="3")
    workers.start()
    dlq_url = workers.env["JOBS_DLQ"]
    send(workers, ("tq.poison", ("p1",), "poison-p1"), context={"x-request-id": "req-poison"})
    dlq = open_dlq(dlq_url)
    wait_until(lambda: dlq.count() == 1, 20, "the poison job in the DLQ")
    [record] = dlq.list()
    assert (record.name, record.engine, record.attempts) == ("tq.poison", "taskiq", 3)
    assert (record.reason, record.error_type) == ("exhausted", "Unavailable")
    assert "cannot process" in record.error
    assert record.request_id == "req-poison"
    assert record.queue == workers.env["TQ_QUEUE"]
    assert int(flags9.get("calls:p1")) == 3  # exactly the configured attempts

    assert main(["jobs", "dlq", "show", record.id, "--dlq", dlq_url, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["engine"] == "taskiq"
    # fixed; `buttress jobs dlq replay` sends it by name to its queue, and it completes once
    flags9.set("fixed", 1)
    broker = workers.env["TQ_BROKER"]
    assert main(["jobs", "dlq", "replay", record.id, "--dlq", dlq_url, "--broker", broker]) == 0
    wait_until(lambda: flags9.get("done:p1") is not None, 20, "the replayed job to complete")
    assert dlq.count() == 0
    # a duplicate enqueue of the same key returns the recorded result: it never runs again
    send(workers, ("tq.poison", ("p1",), "poison-p1"), ("tq.effect", ("marker",), None))
    wait_until(lambda: flags9.hget("effects", "marker"), 20, "the marker job")
    wait_until(lambda: _settled(workers), 10, "the queue to settle")
    assert int(flags9.get("done:p1")) == 1
    assert int(flags9.get("calls:p1")) == 4
    dlq.close()


def _enqueue_part(broker: str, queue: str, items: list[str]) -> None:
    asyncio.run(_send(broker, queue, [("tq.effect", (i,), f"dup-{i}") for i in items]))


def test_200_jobs_half_duplicates_from_2_processes(tq, flags9: redis.Redis) -> None:
    workers = tq(JOBS_LEASE="1", TQ_QOS="10")
    workers.start(workers=2)
    distinct = [f"k{i}" for i in range(100)]
    # every key twice, 200 jobs, 50 % duplicates: the two copies of a key go from the two
    # processes, at about the same time for half of them
    halves = [distinct[:50] + distinct[50:], distinct[50:] + distinct[:50]]
    ctx = multiprocessing.get_context("spawn")
    env = workers.env
    procs = [
        ctx.Process(target=_enqueue_part, args=(env["TQ_BROKER"], env["TQ_QUEUE"], part))
        for part in halves
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    wait_until(lambda: flags9.hlen("effects") == 100, 40, "every distinct key to run")
    wait_until(lambda: _settled(workers), 20, "duplicates to settle")
    time.sleep(0.5)
    effects = {k.decode(): int(v) for k, v in flags9.hgetall("effects").items()}
    assert effects == dict.fromkeys(distinct, 1)


def test_request_id_and_trace_id_reach_worker_logs(tq, flags9: redis.Redis, tmp_path: Path) -> None:
    logs = tmp_path / "worker.log"
    workers = tq(JOBS_LOG=str(logs))
    workers.start()

    async def enqueue_in_request() -> None:
        # the enqueuing side: TaskiqJobs on its own broker, inside a request's context
        broker = make_broker(workers.env["TQ_BROKER"], workers.env["TQ_QUEUE"])
        jobs = TaskiqJobs(broker, store=REDIS9, dlq=REDIS9)

        @jobs.task(name="tq.context")
        async def context_job(tag: str) -> None:  # the worker's implementation runs
            raise AssertionError("runs in the worker")

        await broker.startup()
        try:
            with bound_context(carrier):
                await context_job.kiq("c1")  # a plain .kiq(): the middleware adds the meta
        finally:
            await broker.shutdown()

    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    carrier = {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01", "x-request-id": "req-ctx-9"}
    asyncio.run(enqueue_in_request())
    wait_until(lambda: flags9.get("ctx_done:c1"), 20, "the context job")
    lines = [json.loads(line) for line in logs.read_text().splitlines() if line.startswith("{")]
    mine = [line for line in lines if "c1" in json.dumps(line)]
    assert len(mine) == 2  # the structlog line and the standard-library line
    for line in mine:
        assert line["request_id"] == "req-ctx-9"
        assert line["trace_id"] == trace_id
