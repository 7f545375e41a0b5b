"""Fallback and Hedge."""

from __future__ import annotations

import asyncio

import pytest

from buttress import (
    CircuitBreaker,
    CircuitOpen,
    ConfigurationError,
    Fallback,
    Hedge,
    Pipeline,
    Retry,
    Timeout,
)
from buttress.testing import instant_retries


def boom() -> None:
    raise ConnectionError("down")


def test_fallback_value_and_handler(events) -> None:
    assert Pipeline(Fallback(value=[])).call(boom) == []
    assert Pipeline(Fallback(lambda exc: f"cached ({type(exc).__name__})")).call(boom) == (
        "cached (ConnectionError)"
    )
    assert events.kinds() == ["fallback_used", "fallback_used"]


def test_fallback_only_for_matching_errors() -> None:
    pipe = Pipeline(Fallback(value=0, on=CircuitOpen))
    with pytest.raises(ConnectionError):
        pipe.call(boom)
    breaker = CircuitBreaker(consecutive_failures=1)
    pipe = Pipeline(Fallback(value="degraded", on=CircuitOpen), breaker)
    with pytest.raises(ConnectionError):
        pipe.call(boom)
    assert pipe.call(boom) == "degraded"  # the open breaker is caught by the fallback


def test_fallback_outside_retry_sees_the_final_error() -> None:
    seen: list[BaseException] = []

    def handler(exc: BaseException) -> str:
        seen.append(exc)
        return "fallback"

    with instant_retries():
        assert Pipeline(Fallback(handler), Retry(attempts=3)).call(boom) == "fallback"
    assert "gave up after 3 attempts" in seen[0].__notes__[0]


async def test_async_fallback_handler() -> None:
    async def handler(exc: BaseException) -> str:
        await asyncio.sleep(0)
        return "async fallback"

    async def fail() -> None:
        raise ConnectionError("down")

    assert await Pipeline(Fallback(handler)).acall(fail) == "async fallback"
    with pytest.raises(ConfigurationError, match="async pipeline"):
        Pipeline(Fallback(handler)).call(boom)


async def test_cancellation_is_never_replaced_by_a_fallback() -> None:
    async def hang() -> None:
        await asyncio.sleep(10)

    task = asyncio.ensure_future(Pipeline(Fallback(value=1)).acall(hang))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_fallback_needs_exactly_one_of_handler_or_value() -> None:
    with pytest.raises(ConfigurationError, match="exactly one"):
        Fallback()
    with pytest.raises(ConfigurationError, match="exactly one"):
        Fallback(lambda e: 1, value=2)
    with pytest.raises(ConfigurationError, match="on="):
        Fallback(value=1, on="errors")  # type: ignore[arg-type]


async def test_hedge_first_success_wins_and_losers_are_cancelled(events) -> None:
    cancelled: list[int] = []
    attempt = 0

    async def replica() -> int:
        nonlocal attempt
        attempt += 1
        me = attempt
        try:
            await asyncio.sleep(1.0 if me == 1 else 0.01)
        except asyncio.CancelledError:
            cancelled.append(me)
            raise
        return me

    assert await Pipeline(Hedge(delay=0.02)).acall(replica) == 2
    assert cancelled == [1]
    assert events.kinds() == ["hedge_launched"]


async def test_hedge_fast_first_attempt_launches_nothing(events) -> None:
    async def fast() -> str:
        return "fast"

    assert await Pipeline(Hedge(delay=0.5)).acall(fast) == "fast"
    assert events.kinds() == []


async def test_hedge_retriable_failure_launches_the_next_at_once() -> None:
    calls = 0

    async def first_fails() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("replica 1 down")
        return calls

    assert await Pipeline(Hedge(delay=10.0)).acall(first_fails) == 2


async def test_hedge_all_fail_raises_the_last_error() -> None:
    async def fail() -> None:
        raise ConnectionError("all down")

    with pytest.raises(ConnectionError):
        await Pipeline(Hedge(delay=0.0, max_hedges=2)).acall(fail)


async def test_hedge_non_retriable_error_is_raised() -> None:
    async def bug() -> None:
        raise ValueError("bug")

    with pytest.raises(ValueError, match="bug"):
        await Pipeline(Hedge(delay=10.0)).acall(bug)


async def test_hedge_under_a_timeout_cancels_every_attempt() -> None:
    running = 0

    async def slow() -> None:
        nonlocal running
        running += 1
        try:
            await asyncio.sleep(5)
        finally:
            running -= 1

    with pytest.raises(TimeoutError):
        await Pipeline(Timeout(0.1), Hedge(delay=0.01, max_hedges=2)).acall(slow)
    assert running == 0


def test_hedge_needs_asyncio() -> None:
    with pytest.raises(ConfigurationError, match="asyncio"):
        Pipeline(Hedge()).call(lambda: 1)
    with pytest.raises(ConfigurationError, match="at most one Hedge"):
        Pipeline(Hedge(), Hedge())
    with pytest.raises(ConfigurationError, match="max_hedges"):
        Hedge(max_hedges=0)
