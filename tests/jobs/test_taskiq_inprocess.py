"""taskiq in one process (``InMemoryBroker``): the adapter's wiring, without servers."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from taskiq import InMemoryBroker
from taskiq_aio_pika import AioPikaBroker

from buttress.errors import ButtressError, ConfigurationError, ErrorCode
from buttress.jobs import META_HEADER, JobDeadLettered, JobPolicy, current_job, open_dlq
from buttress.jobs._dlq import DeadLetter
from buttress.jobs.taskiq import TaskiqJobs, replay_record
from buttress.resilience import Backoff
from buttress.stores import open_store


class Unavailable(ButtressError):
    default_code = ErrorCode.UPSTREAM_UNAVAILABLE


def test_a_broker_that_cannot_delay_retries_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="schedule_source"):
        TaskiqJobs(InMemoryBroker(), store="memory://", dlq="memory://")
    with pytest.raises(ConfigurationError, match="delay_queue"):
        TaskiqJobs(AioPikaBroker("amqp://guest:guest@127.0.0.1:5672/"), store="memory://")


def test_replay_without_a_broker_says_what_it_needs() -> None:
    record = DeadLetter(id="r1", job_id="j1", name="t", queue="q", engine="taskiq")
    with pytest.raises(ConfigurationError, match="--broker"):
        replay_record(record, None)
    with pytest.raises(ConfigurationError, match="amqp://"):
        replay_record(record, "nats://127.0.0.1:4222")


def test_runs_once_per_key_retries_through_the_broker_and_dead_letters() -> None:
    broker = InMemoryBroker()
    dlq = open_dlq("memory://")
    policy = JobPolicy(attempts=3, backoff=Backoff.constant(0.01), lease=1.0)
    jobs = TaskiqJobs(
        broker, store=open_store("memory://"), dlq=dlq, policy=policy, native_delay=True
    )
    runs: list[Any] = []
    seen: list[str | None] = []

    @jobs.task(name="t.add")
    async def add(a: int, b: int) -> int:
        job = current_job()
        seen.append(job.key if job is not None else "missing")
        runs.append((a, b))
        return a + b

    @jobs.task(name="t.down")
    async def down(item: str) -> None:
        runs.append(item)
        raise Unavailable("the dependency is down")

    async def scenario() -> None:
        await broker.startup()
        try:
            first = await jobs.enqueue(add, 1, 2, key="sum-1")
            assert (await first.wait_result(timeout=5)).return_value == 3
            # a duplicate: the recorded result, the handler does not run again
            again = await jobs.enqueue(add, 1, 2, key="sum-1")
            assert (await again.wait_result(timeout=5)).return_value == 3
            # a plain .kiq() gets its meta from the middleware (key derived from the args)
            plain = await add.kiq(2, 2)
            assert (await plain.wait_result(timeout=5)).return_value == 4
            # retried through the broker under the same task id, then dead-lettered
            failing = await down.kiq("x")
            result = await failing.wait_result(timeout=5)
            assert isinstance(result.error, JobDeadLettered)
        finally:
            await broker.shutdown()

    asyncio.run(scenario())
    assert runs == [(1, 2), (2, 2), "x", "x", "x"]
    assert seen == ["sum-1", None]
    [record] = dlq.list()
    assert (record.name, record.engine, record.attempts, record.reason) == (
        "t.down", "taskiq", 3, "exhausted",
    )  # fmt: skip


def test_the_middleware_adds_meta_only_to_buttress_tasks() -> None:
    broker = InMemoryBroker()
    jobs = TaskiqJobs(broker, store="memory://", dlq="memory://", native_delay=True)
    sent: list[dict[str, Any]] = []

    @jobs.task(name="t.mine")
    async def mine() -> None: ...

    @broker.task(task_name="t.other")
    async def other() -> None: ...

    async def capture(message: Any) -> None:
        sent.append(json.loads(message.message)["labels"])

    broker.kick = capture  # type: ignore[method-assign]

    async def scenario() -> None:
        await mine.kiq()
        await other.kiq()

    asyncio.run(scenario())
    meta = json.loads(sent[0][META_HEADER])
    assert (meta["attempt"], meta["key"]) == (1, None)
    assert sent[0]["ack_type"] == "when_saved"
    assert META_HEADER not in sent[1]
