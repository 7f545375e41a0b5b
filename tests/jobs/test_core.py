"""The engine-free core: idempotent runs, retry decisions, budgets, deadlines, dead letters."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from buttress.errors import ConfigurationError, ErrorCode, RateLimited
from buttress.jobs import Job, JobPolicy, JobRunner, current_job, derive_key, job_status, open_dlq
from buttress.jobs._dlq import DeadLetter
from buttress.resilience import Backoff, RetryBudget
from buttress.stores import MemoryStore

WALL = 1_700_000_000.0


class Wall:
    def __init__(self) -> None:
        self.now = WALL

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def wall() -> Wall:
    return Wall()


@pytest.fixture
def runner(clock, wall) -> JobRunner:
    return JobRunner(
        store=MemoryStore(clock=clock),
        dlq=open_dlq("memory://"),
        policy=JobPolicy(attempts=3, backoff=Backoff.constant(2.0), deadline=60.0, lease=5.0),
        budget=lambda _q: RetryBudget(ratio=1.0, min_per_second=10.0, ttl=60.0, clock=clock),
        clock=clock,
        wall=wall,
    )


def job(**changes) -> Job:
    base = {
        "id": uuid.uuid4().hex,
        "name": "shop.receipt",
        "queue": "mail",
        "args": (42,),
        "enqueued_at": WALL,
        "engine": "test",
    }
    base.update(changes)
    return Job(**base)


def test_runs_once_then_replays_the_recorded_result(runner: JobRunner) -> None:
    calls = []

    def handler(order: int) -> dict[str, int]:
        calls.append(order)
        assert current_job() is not None
        return {"order": order}

    first = runner.run(job(), handler)
    again = runner.run(job(), handler)  # a duplicate: another message, the same arguments
    assert (first.action, first.result, first.replayed) == ("done", {"order": 42}, False)
    assert (again.action, again.result, again.replayed) == ("done", {"order": 42}, True)
    assert calls == [42]
    assert current_job() is None
    status = job_status(runner.store, "shop.receipt", (42,))
    assert (status.state, status.result) == ("completed", {"order": 42})
    assert job_status(runner.store, "shop.receipt", (43,)).state == "absent"


def test_a_given_key_reused_with_other_arguments_is_dead_lettered(runner: JobRunner) -> None:
    assert runner.run(job(key="k1"), lambda order: order).action == "done"
    reused = runner.run(job(key="k1", args=(43,)), lambda order: order)
    assert reused.action == "dead"
    assert reused.reason == "key_reused"
    assert runner.dlq is not None
    assert [r.reason for r in runner.dlq.list()] == ["key_reused"]


def test_retriable_errors_retry_with_backoff_then_exhaust(runner: JobRunner) -> None:
    def down(order: int) -> None:
        raise ConnectionError("refused")

    decision = runner.run(job(), down)
    assert decision.action == "retry"
    assert decision.delay == 2.0
    assert decision.meta["attempt"] == 2
    decision = runner.run(job(attempt=2), down)
    assert (decision.action, decision.meta["attempt"]) == ("retry", 3)
    decision = runner.run(job(attempt=3), down)
    assert (decision.action, decision.reason) == ("dead", "exhausted")
    assert decision.record is not None
    assert decision.record.error_type == "ConnectionError"
    assert decision.record.error_code == ErrorCode.UPSTREAM_UNAVAILABLE.value
    # a failure releases the key: the retry runs the handler again
    assert runner.run(job(attempt=2), lambda order: "ok").result == "ok"


def test_non_retriable_errors_go_to_the_dlq_at_once_unless_retry_on(clock, wall) -> None:
    def broken(order: int) -> None:
        raise KeyError("bug")

    plain = JobRunner(store=MemoryStore(clock=clock), dlq=None, clock=clock, wall=wall)
    decision = plain.run(job(), broken)
    assert (decision.action, decision.reason) == ("dead", "non_retriable")
    assert decision.record is not None  # no DLQ: the adapter dead-letters natively
    told = plain.run(job(args=(2,)), broken, JobPolicy(retry_on=(KeyError,)))
    assert told.action == "retry"


def test_retry_after_is_honoured_and_capped(runner: JobRunner) -> None:
    def limited(order: int) -> None:
        raise RateLimited("slow down", retry_after=30.0)

    assert runner.run(job(), limited).delay == 30.0
    capped = JobPolicy(attempts=3, backoff=Backoff.constant(2.0), max_retry_after=5.0)
    assert runner.run(job(args=(1,)), limited, capped).delay == 5.0


def test_a_retry_that_would_end_past_the_deadline_is_dead_lettered(runner, wall) -> None:
    wall.now = WALL + 59.0  # the next retry (in 2 s) would start past the 60 s deadline
    decision = runner.run(job(), lambda order: (_ for _ in ()).throw(TimeoutError()))
    assert (decision.action, decision.reason) == ("dead", "deadline")
    wall.now = WALL + 61.0  # past it already: not even run
    calls = []
    decision = runner.run(job(args=(5,)), calls.append)
    assert (decision.action, decision.reason, calls) == ("dead", "deadline", [])


def test_the_retry_budget_parks_retries_without_calling_the_handler(clock, wall) -> None:
    runner = JobRunner(
        store=MemoryStore(clock=clock),
        dlq=None,
        clock=clock,
        wall=wall,
        budget=lambda _q: RetryBudget(ratio=0.5, min_per_second=0.0, ttl=60.0, clock=clock),
    )
    calls = []

    def down(order: int) -> None:
        calls.append(order)
        raise ConnectionError("down")

    for i in range(4):  # four first attempts: 4 * 0.5 = 2 retry credits
        assert runner.run(job(args=(i,)), down).action == "retry"
    outcomes = [runner.run(job(args=(i,), attempt=2), down).reason for i in range(4)]
    assert outcomes == ["error", "error", "budget", "budget"]
    assert len(calls) == 6  # 4 + 2 retries: the parked ones never reached the dependency


def test_in_flight_duplicates_come_back_after_the_lease(runner: JobRunner) -> None:
    inner = []

    def handler(order: int) -> str:
        inner.append(runner.run(job(), handler))  # a duplicate arrives while it runs
        return "first"

    assert runner.run(job(), handler).result == "first"
    [duplicate] = inner
    assert duplicate.action == "retry"
    assert duplicate.reason == "in_flight"
    assert 0 < duplicate.delay <= 5.0
    assert duplicate.meta["attempt"] == 1  # waiting is not an attempt


def test_async_driver_runs_async_handlers_once(runner: JobRunner) -> None:
    calls = []

    async def handler(order: int) -> int:
        calls.append(order)
        assert current_job() is not None
        await asyncio.sleep(0)
        return order * 2

    async def main() -> tuple[object, object]:
        first = await runner.arun(job(), handler)
        again = await runner.arun(job(), handler)
        return first.result, again.replayed

    assert asyncio.run(main()) == (84, True)
    assert calls == [42]


def test_async_driver_dead_letters(runner: JobRunner) -> None:
    async def broken(order: int) -> None:
        raise ValueError("bad input")

    decision = asyncio.run(runner.arun(job(), broken))
    assert (decision.action, decision.reason) == ("dead", "non_retriable")
    assert runner.dlq is not None
    assert runner.dlq.count() == 1


def test_meta_round_trip_and_derived_keys() -> None:
    j = job(key=None, context={"x-request-id": "r1"})
    again = Job.from_meta(
        j.meta(attempt=2, delay=1.5),
        id="m2",
        name=j.name,
        queue="mail",
        args=[42],
        kwargs={},
        engine="test",
    )
    assert (again.attempt, again.delay, again.enqueued_at, again.context["x-request-id"]) == (
        2,
        1.5,
        WALL,
        "r1",
    )
    assert again.idempotency_key == derive_key("shop.receipt", (42,), {})
    assert derive_key("a", (1,), {"x": 1}) == derive_key("a", [1], {"x": 1})
    assert derive_key("a", (1,), {}) != derive_key("a", (2,), {})
    plain = Job.from_meta(None, id="m", name="n", queue="", args=(), kwargs={}, engine="e", now=5.0)
    assert (plain.attempt, plain.enqueued_at, plain.queue) == (1, 5.0, "default")


def test_results_that_are_not_json_are_not_replayed(runner: JobRunner) -> None:
    first = runner.run(job(), lambda order: object())
    assert first.action == "done"
    assert runner.run(job(), lambda order: 1).result is None


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("attempts", 0),
        ("attempts", 1.5),
        ("deadline", 0),
        ("lease", 0.1),
        ("ttl", -1),
        ("park", 0),
        ("retry_on", (int,)),
    ],
)
def test_policy_is_validated(option: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=option):
        JobPolicy(**{option: value})


def test_dead_letter_json_round_trip() -> None:
    record = DeadLetter(
        id="x",
        job_id="m",
        name="n",
        queue="q",
        engine="celery",
        args=[1, {"a": 2}],
        kwargs={"b": [3]},
        attempts=2,
        failed_at=1.0,
    )
    assert DeadLetter.from_json(record.to_json()) == record
    assert json.loads(record.to_json())["args"] == [1, {"a": 2}]
