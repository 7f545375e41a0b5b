"""The asyncio drivers of `Retry`, `CircuitBreaker`, `Bulkhead` and `Fallback`.

This file is the one source of those drivers: ``_drivers_sync.py``, the thread drivers,
is generated from it by ``scripts/unasync.py`` (``async def`` -> ``def``, ``await``
dropped, ``asleep`` -> ``sleep``, ...). Edit this file, then run
``python scripts/unasync.py``; ``./dev lint`` and ``tests/resilience/test_unasync.py``
fail while the generated file is out of date.

A driver moves a call through a policy and nothing else: every decision (retry or not and
after how long, whether the breaker admits the call, what counts as a failure, whether a
bulkhead slot is free) is taken by the policy's sans-I/O core through its public methods.
Each ``*_link`` function compiles one policy into one link of a pipeline's chain (see
`buttress.resilience.Policy`); the link binds what it uses to locals once, at build time.
A link whose ``inner`` is the pipeline's terminal calls the function itself, one frame
fewer on every call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from buttress.resilience._policy import BuildContext, call_terminal

if TYPE_CHECKING:
    from buttress.resilience._breaker import CircuitBreaker
    from buttress.resilience._bulkhead import Bulkhead
    from buttress.resilience._fallback import Fallback
    from buttress.resilience._policy import AsyncLink
    from buttress.resilience._retry import Retry

__all__ = ["breaker_link", "bulkhead_acquire", "bulkhead_link", "fallback_link", "retry_link"]


def retry_link(retry: Retry, inner: AsyncLink, ctx: BuildContext) -> AsyncLink:
    """`Retry`: call, and after a failure ask the policy how long to wait, or give up."""
    direct = inner is call_terminal
    clock = retry.clock
    now = clock.now
    deposit = retry.budget.deposit if retry.budget is not None else None
    after_error = retry.after_error
    after_result = retry.after_result
    retry_on_result = retry.retry_on_result

    async def link(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        start = now()
        if deposit is not None:
            deposit(start)
        attempt = 1
        previous = 0.0
        while True:
            try:
                result = await (fn(*args, **kwargs) if direct else inner(fn, args, kwargs))
            except Exception as exc:
                delay = after_error(ctx, attempt, exc, previous, start)
                if delay is None:
                    raise
            else:
                if retry_on_result is None or not retry_on_result(result):
                    return result
                delay = after_result(ctx, attempt, result, previous, start)
                if delay is None:
                    return result
            if not retry.skip_sleeps:
                await clock.asleep(delay)
            previous = delay
            attempt += 1

    return link


def breaker_link(breaker: CircuitBreaker, inner: AsyncLink, ctx: BuildContext) -> AsyncLink:
    """`CircuitBreaker`: ask for a permit, call, record the outcome under that permit."""
    direct = inner is call_terminal
    now = breaker.clock.now
    acquire = breaker.acquire
    on_success = breaker.on_success
    record_error = breaker.record_error
    record_result = breaker.record_result
    release = breaker.release
    # without slow-call tracking or a result predicate a success needs no start time
    timed = breaker.slow_call_duration is not None or breaker.is_failure_result is not None

    async def link(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        permit = breaker.closed_permit  # a closed breaker's permit, in one read
        if permit < 0:
            permit = acquire(None, ctx)  # not closed: ask
        start = now() if timed else 0.0
        try:
            result = await (fn(*args, **kwargs) if direct else inner(fn, args, kwargs))
        except Exception as exc:
            record_error(permit, exc, start)
            raise
        except BaseException:  # cancellation: never an outcome, the permit goes back
            release(permit)
            raise
        if timed:
            record_result(permit, result, start)
        else:
            on_success(permit, 0.0, now())
        return result

    return link


async def bulkhead_acquire(bulkhead: Bulkhead, ctx: BuildContext) -> None:
    """Take a slot of ``bulkhead``, waiting in its queue if allowed; or raise `BulkheadFull`."""
    if bulkhead.try_acquire():
        return
    if bulkhead.max_queued == 0:
        raise bulkhead.full(ctx, "no queue")
    timeout = bulkhead.wait_budget()
    if timeout is not None and timeout <= 0:
        raise bulkhead.full(ctx, "no time left to wait")
    waiter = bulkhead.task_waiter()
    if not bulkhead.enqueue(waiter):
        raise bulkhead.full(ctx, "queue full")
    if waiter.granted:
        return
    try:
        got = await waiter.wait(timeout)
    except BaseException:
        if bulkhead.abandon(waiter):
            bulkhead.release()  # granted while we were being interrupted: pass it on
        raise
    if got or bulkhead.abandon(waiter):
        return
    raise bulkhead.full(ctx, f"waited {timeout:.3g} s for a slot")


def bulkhead_link(bulkhead: Bulkhead, inner: AsyncLink, ctx: BuildContext) -> AsyncLink:
    """`Bulkhead`: hold a slot for the duration of the call."""
    direct = inner is call_terminal
    try_acquire = bulkhead.try_acquire
    release = bulkhead.release

    async def link(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not try_acquire():
            await bulkhead_acquire(bulkhead, ctx)
        try:
            return await (fn(*args, **kwargs) if direct else inner(fn, args, kwargs))
        finally:
            release()

    return link


def fallback_link(fallback: Fallback, inner: AsyncLink, ctx: BuildContext) -> AsyncLink:
    """`Fallback`: replace a failure the policy accepts by its value or handler's answer."""
    on = fallback.on
    areplace = fallback.areplace

    async def link(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            return await inner(fn, args, kwargs)
        except Exception as exc:
            if not on(exc):
                raise
            return await areplace(ctx, exc)

    return link
