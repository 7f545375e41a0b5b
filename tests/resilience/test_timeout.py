"""Timeout and deadline(): async cancellation, sync cooperation, narrowing, events."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from buttress import DeadlineExceeded, ErrorCode, Pipeline, Timeout, deadline
from buttress.errors import ConfigurationError
from buttress.resilience import current_deadline, remaining
from buttress.testing import FakeClock


async def test_async_timeout_cancels_the_call_and_raises_upstream_timeout(events) -> None:
    cancelled = []

    async def slow() -> None:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    started = time.monotonic()
    with pytest.raises(DeadlineExceeded) as caught:
        await Pipeline(Timeout(0.05)).acall(slow)
    elapsed = time.monotonic() - started
    assert cancelled == [True]
    assert caught.value.code is ErrorCode.UPSTREAM_TIMEOUT
    assert caught.value.retriable
    assert 0.05 <= elapsed < 1.0  # never early; coalesced at most ~1.6 % late (+ loop latency)
    assert isinstance(caught.value.__cause__, asyncio.CancelledError)
    assert events.kinds() == ["timeout"]


async def test_async_timeout_inside_a_shorter_deadline_reports_deadline_exceeded() -> None:
    async def slow() -> None:
        await asyncio.sleep(5)

    with deadline(0.03), pytest.raises(DeadlineExceeded) as caught:
        await Pipeline(Timeout(10.0)).acall(slow)
    assert caught.value.code is ErrorCode.DEADLINE_EXCEEDED
    assert not caught.value.retriable


async def test_async_timeout_does_not_swallow_an_outer_cancellation() -> None:
    async def slow() -> None:
        await asyncio.sleep(5)

    task = asyncio.ensure_future(Pipeline(Timeout(10.0)).acall(slow))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def test_fast_call_returns_and_leaves_no_pending_cancel() -> None:
    async def fast() -> int:
        await asyncio.sleep(0)
        return 7

    pipe = Pipeline(Timeout(0.05))
    for _ in range(50):
        assert await pipe.acall(fast) == 7
    await asyncio.sleep(0.1)  # the buckets fire with nothing left in them
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0


async def test_call_that_swallows_the_cancellation_keeps_its_result() -> None:
    async def stubborn() -> str:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            return "swallowed"
        return "slept"

    assert await Pipeline(Timeout(0.02)).acall(stubborn) == "swallowed"
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0
    await asyncio.sleep(0)  # no stray CancelledError is delivered later


async def test_nested_timeouts_the_inner_one_fires_first() -> None:
    async def slow() -> None:
        await asyncio.sleep(5)

    inner = Pipeline(Timeout(0.02, name="inner"))

    async def call_inner() -> None:
        await inner.acall(slow)

    with pytest.raises(DeadlineExceeded) as caught:
        await Pipeline(Timeout(1.0, name="outer")).acall(call_inner)
    assert caught.value.policy == "inner"


async def test_timeout_propagates_the_deadline_to_the_call() -> None:
    seen: list[float | None] = []

    async def look() -> None:
        seen.append(remaining())

    await Pipeline(Timeout(2.0)).acall(look)
    assert seen[0] is not None
    assert 1.5 < seen[0] <= 2.0
    assert current_deadline() is None  # reset afterwards


async def test_fake_clock_drives_async_timeouts() -> None:
    clock = FakeClock()

    async def sleeps_on_the_fake_clock() -> None:
        await clock.asleep(10.0)  # advancing time fires the timeout's timer
        await asyncio.sleep(0)

    with pytest.raises(DeadlineExceeded):
        await Pipeline(Timeout(5.0, clock=clock)).acall(sleeps_on_the_fake_clock)
    assert clock.pending_timers == 0


def test_sync_timeout_sets_the_deadline_and_reports_overruns(events) -> None:
    clock = FakeClock()
    seen: list[float | None] = []

    def work() -> str:
        seen.append(remaining(clock))
        clock.advance(3.0)  # overruns the 2 s budget
        return "done"

    assert Pipeline(Timeout(2.0, clock=clock)).call(work) == "done"
    assert seen == [2.0]
    assert [e.kind for e in events] == ["timeout"]
    assert events[0].elapsed == 3.0  # type: ignore[attr-defined]


def test_sync_timeout_refuses_to_start_after_the_deadline() -> None:
    clock = FakeClock()
    calls = []
    with deadline(1.0, clock=clock):
        clock.advance(1.5)
        with pytest.raises(DeadlineExceeded) as caught:
            Pipeline(Timeout(5.0, clock=clock)).call(lambda: calls.append(1))
    assert calls == []
    assert caught.value.code is ErrorCode.DEADLINE_EXCEEDED


def test_deadline_only_narrows() -> None:
    clock = FakeClock()
    with deadline(5.0, clock=clock) as outer:
        assert outer.at == 5.0
        with deadline(10.0, clock=clock) as inner:
            assert inner.at == 5.0
            assert deadline.current() == 5.0
        with deadline(1.0, clock=clock):
            assert deadline.remaining(clock) == 1.0
        assert deadline.current() == 5.0
    assert deadline.current() is None


def test_deadline_check() -> None:
    clock = FakeClock()
    deadline.check(clock)  # no deadline: nothing to check
    with deadline(1.0, clock=clock):
        deadline.check(clock)
        clock.advance(1.0)
        with pytest.raises(DeadlineExceeded):
            deadline.check(clock)


async def test_deadline_as_async_context_manager() -> None:
    async with deadline(3.0) as d:
        assert d.at is not None
        assert current_deadline() == d.at
    assert current_deadline() is None


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "1", None, True])
def test_invalid_timeouts_are_refused_with_the_option_named(bad: object) -> None:
    with pytest.raises(ConfigurationError, match=r"Timeout\(seconds="):
        Timeout(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -1, "2", None])
def test_invalid_deadlines_are_refused(bad: object) -> None:
    with pytest.raises(ConfigurationError, match=r"deadline\(seconds="):
        deadline(bad)  # type: ignore[arg-type]


async def _calls_then_one_slow(pipe: Pipeline, seconds: float) -> float:
    """Quick calls for ``seconds`` (through many timer buckets), then a slow one: its time."""

    async def quick() -> int:
        return 1

    async def slow() -> None:
        await asyncio.sleep(5)

    until = time.monotonic() + seconds
    while time.monotonic() < until:
        assert await pipe.acall(quick) == 1
        await asyncio.sleep(0.0005)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        await pipe.acall(slow)
    return time.monotonic() - started


async def test_nested_timeouts_fire_after_many_calls_reused_their_buckets() -> None:
    # two widths of timer bucket (2 s -> 1/32 s, 64 ms -> 1 ms) that each link remembers
    pipe = Pipeline(Timeout(2.0), Timeout(0.064))
    elapsed = await _calls_then_one_slow(pipe, 0.2)
    assert 0.064 <= elapsed < 0.5


def test_one_pipeline_times_out_right_in_two_event_loops_at_once() -> None:
    pipe = Pipeline(Timeout(2.0), Timeout(0.064))
    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(asyncio.run, _calls_then_one_slow(pipe, 0.2)) for _ in range(2)]
        for run in runs:
            assert 0.064 <= run.result(timeout=10) < 0.5
