"""Celery workers killed mid-job and brokers restarted: nothing lost, nothing run twice."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import psycopg
import pytest
import redis
from tests.jobs._send import Producer
from tests.jobs.conftest import REDIS5, private_redis, wait_until

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.process]


def _rows(pg: str) -> list[tuple[int, str]]:
    with psycopg.connect(pg) as conn:
        return [(r[0], r[1]) for r in conn.execute("SELECT id, job_key FROM orders ORDER BY id")]


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest) -> str:
    if request.param == "redis":
        return REDIS5
    url: str = request.getfixturevalue("rabbit_vhost")
    return url


def test_sigkill_mid_job_writes_exactly_one_row(
    broker: str, flags, pg_db: str, make_workers, queue_name: str, tmp_path: Path
) -> None:
    workers = make_workers(
        JOBS_BROKER=broker, JOBS_STORE=REDIS5, JOBS_DLQ=f"sqlite:///{tmp_path / 'dlq.db'}",
        JOBS_PG=pg_db, JOBS_VISIBILITY="3", JOBS_LEASE="1.5",
    )  # fmt: skip
    first = workers.start(queue_name)
    producer = Producer(broker)
    producer.send("t.write_row", 7, queue=queue_name, key="order-7")
    # the row is inserted, its transaction still open: kill the worker there
    wait_until(lambda: flags.get("started:7"), 20, "the job to start")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    assert _rows(pg_db) == []  # the killed run's insert never committed
    flags.set("go:7", 1)  # from now on the job commits at once
    workers.start(queue_name)
    wait_until(lambda: _rows(pg_db), 30, "the redelivered job to commit its row")
    # a marker after it, through the same worker: once it ran, the queue is settled
    producer.send("t.effect", "after-crash", queue=queue_name)
    wait_until(lambda: flags.hget("effects", "after-crash"), 20, "the marker job")
    time.sleep(0.5)
    assert _rows(pg_db) == [(7, "order-7")]
    assert int(flags.get("started:7")) == 2  # killed once, ran once more, never again
    producer.close()


def test_broker_restart_redis_nothing_lost_nothing_twice(
    flags, make_workers, queue_name: str, tmp_path: Path
) -> None:
    with private_redis() as (url, restart):
        workers = make_workers(
            JOBS_BROKER=url, JOBS_STORE=REDIS5, JOBS_DLQ=f"sqlite:///{tmp_path / 'dlq.db'}",
            JOBS_VISIBILITY="3",
        )  # fmt: skip
        workers.start(queue_name)
        producer = Producer(url)
        items = [f"r{i}" for i in range(30)]
        for item in items:
            producer.send("t.slow", item, queue=queue_name, key=f"restart-{item}")
        wait_until(lambda: flags.hlen("slow_effects") >= 5, 20, "some jobs to run")
        restart()  # messages waiting and unacked survive in the AOF; connections drop
        wait_until(
            lambda: flags.hlen("slow_effects") == len(items), 40, "every job after the restart"
        )
        broker = redis.Redis.from_url(url)
        wait_until(
            lambda: broker.llen(queue_name) == 0 and broker.hlen("unacked") == 0,
            20, "the broker queue to drain",
        )  # fmt: skip
        broker.close()
        effects = {k.decode(): int(v) for k, v in flags.hgetall("slow_effects").items()}
        assert effects == dict.fromkeys(items, 1)
        producer.close()


def test_broker_connections_closed_rabbitmq_nothing_lost_nothing_twice(
    flags, rabbit_vhost: str, make_workers, queue_name: str, tmp_path: Path
) -> None:
    vhost = rabbit_vhost.rsplit("/", 1)[1]
    workers = make_workers(
        JOBS_BROKER=rabbit_vhost, JOBS_STORE=REDIS5, JOBS_DLQ=f"sqlite:///{tmp_path / 'dlq.db'}"
    )
    workers.start(queue_name)
    producer = Producer(rabbit_vhost)
    items = [f"a{i}" for i in range(30)]
    for item in items:
        producer.send("t.slow", item, queue=queue_name, key=f"amqp-{item}")
    wait_until(lambda: flags.hlen("slow_effects") >= 5, 20, "some jobs to run")
    # force-close every connection of this test's vhost only (the shared broker stays up)
    subprocess.run(
        ["rabbitmqctl", "-q", "close_all_connections", "-p", vhost, "buttress test"],
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    wait_until(lambda: flags.hlen("slow_effects") == len(items), 60, "every job after the cut")
    producer.send("t.effect", "after-cut", queue=queue_name)
    wait_until(lambda: flags.hget("effects", "after-cut"), 30, "the marker job")
    effects = {k.decode(): int(v) for k, v in flags.hgetall("slow_effects").items()}
    assert effects == dict.fromkeys(items, 1)
    producer.close()


def test_sigterm_finishes_the_job_in_flight_then_stops(
    flags, pg_db: str, make_workers, queue_name: str, tmp_path: Path
) -> None:
    workers = make_workers(
        JOBS_BROKER=REDIS5, JOBS_STORE=REDIS5, JOBS_DLQ=f"sqlite:///{tmp_path / 'dlq.db'}",
        JOBS_PG=pg_db,
    )  # fmt: skip
    first = workers.start(queue_name)
    producer = Producer(REDIS5)
    producer.send("t.write_row", 8, queue=queue_name, key="order-8")
    producer.send("t.effect", "queued-behind", queue=queue_name)
    wait_until(lambda: flags.get("started:8"), 20, "the job to start")
    first.send_signal(signal.SIGTERM)  # warm shutdown: take nothing new, finish this one
    time.sleep(0.3)
    assert first.poll() is None  # still finishing the job in flight
    flags.set("go:8", 1)
    first.wait(timeout=20)
    assert _rows(pg_db) == [(8, "order-8")]
    assert flags.hget("effects", "queued-behind") is None  # not taken during shutdown
    # the next worker gets what was waiting, and does not run the finished job again
    workers.start(queue_name)
    wait_until(lambda: flags.hget("effects", "queued-behind"), 20, "the waiting job")
    assert int(flags.get("started:8")) == 1
    assert _rows(pg_db) == [(8, "order-8")]
    producer.close()
