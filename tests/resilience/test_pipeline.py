"""Pipeline: order, decorator, validation, sync/async parity, composed behaviour."""

from __future__ import annotations

import asyncio

import pytest

from buttress import (
    Backoff,
    Bulkhead,
    CircuitBreaker,
    CircuitOpen,
    ConfigurationError,
    Fallback,
    Pipeline,
    RateLimiter,
    Retry,
    RetryBudget,
    Timeout,
)
from buttress.resilience import AsyncLink, BuildContext, Policy, SyncLink, registry
from buttress.testing import FakeClock, FaultInjection


def test_first_listed_is_outermost() -> None:
    order: list[str] = []

    def probe(name: str):
        from buttress.resilience import Policy

        class Probe(Policy):
            def _wrap(self, inner, ctx):
                def link(fn, a, kw):
                    order.append(name)
                    return inner(fn, a, kw)

                return link

            def _awrap(self, inner, ctx):
                async def link(fn, a, kw):
                    order.append(name)
                    return await inner(fn, a, kw)

                return link

        return Probe(name)

    pipe = Pipeline(probe("outer"), probe("middle"), probe("inner"))
    pipe.call(lambda: None)
    assert order == ["outer", "middle", "inner"]


def test_arguments_and_results_pass_through() -> None:
    pipe = Pipeline(Timeout(5.0), Retry(), CircuitBreaker(), Bulkhead())
    assert pipe.call(lambda a, b=0, *, c: (a, b, c), 1, b=2, c=3) == (1, 2, 3)


async def test_async_arguments_pass_through() -> None:
    pipe = Pipeline(Timeout(5.0), Retry(), CircuitBreaker(), Bulkhead())

    async def add(a: int, b: int) -> int:
        return a + b

    assert await pipe.acall(add, 2, b=3) == 5


async def test_decorator_sync_and_async() -> None:
    pipe = Pipeline(Retry(attempts=2, backoff=Backoff.constant(0.0)))
    calls = 0

    @pipe
    def flaky_sync(x: int) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError
        return x * 2

    @pipe
    async def double(x: int) -> int:
        return x * 2

    assert flaky_sync(4) == 8
    assert await double(5) == 10
    assert flaky_sync.__name__ == "flaky_sync"
    assert double.__name__ == "double"


def test_the_design_example_builds_and_runs() -> None:
    pipe = Pipeline(
        Timeout(30.0),
        Retry(
            attempts=3,
            backoff=Backoff.exponential(base=0.2, cap=5.0, jitter="full"),
            budget=RetryBudget(ratio=0.2, min_per_second=10),
        ),
        CircuitBreaker(failure_rate=0.5, minimum_calls=20, window=30.0, break_duration=5.0),
        Timeout(10.0),
        Bulkhead(max_concurrent=25, max_queued=0),
        name="design-example",
    )
    assert pipe.call(lambda: 42) == 42
    assert registry.pipeline("design-example") is pipe
    assert "Timeout(30.0)" in repr(pipe)


def test_validation_names_the_options() -> None:
    with pytest.raises(ConfigurationError, match=r"attempt Timeout\(10\) must be shorter"):
        Pipeline(Timeout(5.0), Retry(), Timeout(10.0))
    with pytest.raises(ConfigurationError, match=r"policy #2"):
        Pipeline(Retry(), "timeout")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="name"):
        Pipeline(name="")
    with pytest.raises(ConfigurationError, match="hooks"):
        Pipeline(hooks=[1])  # type: ignore[list-item]


def test_a_flaky_dependency_stays_usable_sync() -> None:
    """The point of it all: 30 % failures, the caller sees (almost) none."""
    clock = FakeClock()
    chaos = FaultInjection(error_rate=0.3, seed=42, clock=clock)
    pipe = Pipeline(
        Timeout(10.0, clock=clock),
        Retry(
            attempts=4,
            backoff=Backoff.exponential(base=0.01, cap=0.1),
            budget=RetryBudget(ratio=0.5, clock=clock),  # 30 % failing needs more than 20 %
            clock=clock,
        ),
        CircuitBreaker(failure_rate=0.9, minimum_calls=50, consecutive_failures=10, clock=clock),
        chaos,
    )
    failures = 0
    for _ in range(500):
        try:
            pipe.call(lambda: "ok")
        except ConnectionError:
            failures += 1
    assert failures <= 10  # 0.3 ** 4 = 0.8 % expected


def test_the_default_budget_stops_a_retry_storm() -> None:
    clock = FakeClock()
    calls = 0

    def down() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError

    pipe = Pipeline(Retry(attempts=3, backoff=Backoff.constant(0.0), clock=clock))
    for _ in range(1000):
        with pytest.raises(ConnectionError):
            pipe.call(down)
    # without a budget: 3,000 calls; with the default (20 % + 10/s over 10 s): 1,000 + 300
    assert calls == 1300


async def test_fault_injection_latency_is_cut_by_the_attempt_timeout() -> None:
    chaos = FaultInjection(latency=1.0, latency_rate=1.0, seed=1)
    pipe = Pipeline(
        Fallback(value="fallback"),
        Retry(attempts=2, backoff=Backoff.constant(0.0)),
        Timeout(0.02),
        chaos,
    )

    async def work() -> str:
        return "real"

    assert await pipe.acall(work) == "fallback"


async def test_open_breaker_makes_the_fallback_answer_at_once() -> None:
    breaker = CircuitBreaker(consecutive_failures=2)
    pipe = Pipeline(Fallback(value="cached", on=CircuitOpen), breaker, RateLimiter(1000))

    async def down() -> None:
        raise ConnectionError

    for _ in range(2):
        with pytest.raises(ConnectionError):
            await pipe.acall(down)
    assert await pipe.acall(down) == "cached"


def test_policies_can_be_shared_between_pipelines() -> None:
    breaker = CircuitBreaker(consecutive_failures=2)
    a = Pipeline(Retry(attempts=1), breaker)
    b = Pipeline(breaker)
    for pipe in (a, b):
        with pytest.raises(ConnectionError):
            pipe.call(_boom)
    assert breaker.state == "open"
    with pytest.raises(CircuitOpen):
        b.call(lambda: None)


def _boom() -> None:
    raise ConnectionError


async def test_many_concurrent_calls_through_one_pipeline() -> None:
    pipe = Pipeline(
        Timeout(5.0), Retry(), CircuitBreaker(), Bulkhead(max_concurrent=10, max_queued=1000)
    )

    async def work(i: int) -> int:
        await asyncio.sleep(0)
        return i

    results = await asyncio.gather(*(pipe.acall(work, i) for i in range(500)))
    assert results == list(range(500))


class Counted(Policy):
    """The custom policy of `Policy`'s docstring: the public hooks, nothing private."""

    kind = "counted"

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name)
        self.calls = 0

    def wrap(self, inner: SyncLink, ctx: BuildContext) -> SyncLink:
        def link(fn, args, kwargs):
            self.calls += 1
            return inner(fn, args, kwargs)

        return link

    def awrap(self, inner: AsyncLink, ctx: BuildContext) -> AsyncLink:
        async def link(fn, args, kwargs):
            self.calls += 1
            return await inner(fn, args, kwargs)

        return link


async def test_a_custom_policy_uses_the_public_hooks(clock) -> None:
    counted = Counted()
    assert counted.name == "counted"
    flaky = iter([ConnectionError("down"), ConnectionError("down")])

    def call() -> str:
        error = next(flaky, None)
        if error is not None:
            raise error
        return "ok"

    pipe = Pipeline(Retry(attempts=3, clock=clock), counted)
    assert pipe.call(call) == "ok"
    assert counted.calls == 3  # inside the retry: every attempt

    async def acall() -> str:
        return "ok"

    assert await pipe.acall(acall) == "ok"
    assert counted.calls == 4


async def test_a_custom_policy_may_support_one_side_only() -> None:
    class ThreadsOnly(Policy):
        def wrap(self, inner: SyncLink, ctx: BuildContext) -> SyncLink:
            return inner

    pipe = Pipeline(ThreadsOnly())
    assert pipe.call(lambda: 5) == 5

    async def five() -> int:
        return 5

    with pytest.raises(ConfigurationError, match="ThreadsOnly has no driver for asyncio"):
        await pipe.acall(five)


def test_the_builtin_policies_expose_their_links() -> None:
    ctx = BuildContext("p")
    for policy in (Retry(), CircuitBreaker(), Bulkhead(), Fallback(value=1), Timeout(1.0)):
        assert callable(policy.wrap(lambda fn, a, kw: fn(*a, **kw), ctx))
        assert callable(policy.awrap(lambda fn, a, kw: fn(*a, **kw), ctx))
