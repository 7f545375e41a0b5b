"""Retry, Backoff and RetryBudget: what is retried, how long it waits, when it stops."""

from __future__ import annotations

import random

import httpx
import pytest

from buttress import (
    Backoff,
    CircuitBreaker,
    CircuitOpen,
    Pipeline,
    RateLimited,
    Retry,
    RetryBudget,
    Timeout,
    deadline,
)
from buttress.errors import ConfigurationError
from buttress.testing import FakeClock, instant_retries


class Flaky:
    """Fails ``failures`` times with ``error``, then returns ``result``."""

    def __init__(self, failures: int, error: BaseException | None = None, result: object = "ok"):
        self.failures = failures
        self.error = error or ConnectionError("flaky")
        self.result = result
        self.calls = 0

    def __call__(self) -> object:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return self.result

    async def acall(self) -> object:
        return self()


def test_retriable_errors_are_retried_until_success(clock: FakeClock, events) -> None:
    flaky = Flaky(2)
    retry = Retry(attempts=3, backoff=Backoff.constant(0.5), clock=clock)
    assert Pipeline(retry).call(flaky) == "ok"
    assert flaky.calls == 3
    assert clock.sleeps == [0.5, 0.5]
    assert events.kinds() == ["retry_scheduled", "retry_scheduled"]
    assert [e.attempt for e in events] == [1, 2]  # type: ignore[attr-defined]


async def test_async_retry(clock: FakeClock) -> None:
    flaky = Flaky(2)
    pipe = Pipeline(Retry(attempts=3, backoff=Backoff.constant(0.25), clock=clock))
    assert await pipe.acall(flaky.acall) == "ok"
    assert clock.sleeps == [0.25, 0.25]


def test_gives_up_after_attempts_and_reraises_the_last_real_error(clock: FakeClock, events) -> None:
    errors = [ConnectionError(f"try {i}") for i in range(3)]
    it = iter(errors)

    def fail() -> None:
        raise next(it)

    with pytest.raises(ConnectionError) as caught:
        Pipeline(Retry(attempts=3, backoff=Backoff.constant(1.0), clock=clock)).call(fail)
    assert caught.value is errors[-1]
    assert caught.value.__notes__ == [
        "buttress: gave up after 3 attempts in 2.0 s (attempts exhausted)"
    ]
    assert events.kinds()[-1] == "retry_gave_up"
    assert events[-1].reason == "attempts_exhausted"  # type: ignore[attr-defined]


def test_non_retriable_errors_are_raised_at_once(clock: FakeClock, events) -> None:
    flaky = Flaky(5, ValueError("bug"))
    with pytest.raises(ValueError, match="bug"):
        Pipeline(Retry(attempts=5, clock=clock)).call(flaky)
    assert flaky.calls == 1
    assert clock.sleeps == []
    assert events.kinds() == []


def test_retry_on_accepts_types_tuples_and_predicates(clock: FakeClock) -> None:
    for retry_on in (ValueError, (KeyError, ValueError), lambda e: "again" in str(e)):
        flaky = Flaky(1, ValueError("again"))
        assert Pipeline(Retry(attempts=2, retry_on=retry_on, clock=clock)).call(flaky) == "ok"
        assert flaky.calls == 2
    with pytest.raises(ConfigurationError, match="retry_on"):
        Retry(retry_on=42)  # type: ignore[arg-type]


def test_retry_after_hint_is_honoured(clock: FakeClock) -> None:
    flaky = Flaky(1, RateLimited("slow down", retry_after=3.0))
    retry = Retry(attempts=2, backoff=Backoff.constant(0.1), clock=clock)
    assert Pipeline(retry).call(flaky) == "ok"
    assert clock.sleeps == [3.0]


def test_fail_fast_rejections_of_inner_policies_are_not_retried(clock: FakeClock) -> None:
    breaker = CircuitBreaker(consecutive_failures=1, clock=clock)
    pipe = Pipeline(Retry(attempts=5, backoff=Backoff.constant(0.1), clock=clock), breaker)
    with pytest.raises(CircuitOpen):
        pipe.call(Flaky(1))  # trips the breaker; the retry then meets CircuitOpen and stops
    assert breaker.state == "open"
    assert clock.sleeps == [0.1]  # one backoff after the real failure, none for the break
    with pytest.raises(CircuitOpen):
        pipe.call(Flaky(0))
    assert clock.sleeps == [0.1]


def test_retry_after_beyond_the_cap_stops_retrying(clock: FakeClock, events) -> None:
    flaky = Flaky(1, RateLimited("come back tomorrow", retry_after=86_400.0))
    with pytest.raises(RateLimited) as caught:
        Pipeline(Retry(attempts=3, max_retry_after=60.0, clock=clock)).call(flaky)
    assert "retry after too long" in caught.value.__notes__[0]
    assert clock.sleeps == []
    assert events[-1].reason == "retry_after_too_long"  # type: ignore[attr-defined]


def test_results_can_be_retried_with_their_retry_after(clock: FakeClock) -> None:
    responses = iter([httpx.Response(503, headers={"Retry-After": "2"}), httpx.Response(200)])
    retry = Retry(
        attempts=3,
        backoff=Backoff.constant(0.1),
        retry_on_result=lambda r: r.status_code >= 500,
        clock=clock,
    )
    result = Pipeline(retry).call(lambda: next(responses))
    assert result.status_code == 200
    assert clock.sleeps == [2.0]


def test_last_rejected_result_is_returned_when_attempts_run_out(clock: FakeClock) -> None:
    retry = Retry(attempts=2, retry_on_result=lambda r: r.status_code >= 500, clock=clock)
    result = Pipeline(retry).call(lambda: httpx.Response(502))
    assert result.status_code == 502


def test_no_retry_whose_backoff_would_outlast_the_deadline(clock: FakeClock, events) -> None:
    flaky = Flaky(5)
    retry = Retry(attempts=5, backoff=Backoff.constant(2.0), clock=clock)
    with deadline(5.0, clock=clock), pytest.raises(ConnectionError) as caught:
        Pipeline(retry).call(flaky)
    assert clock.sleeps == [2.0, 2.0]  # a third sleep would end at t=6 > 5
    assert flaky.calls == 3
    assert "deadline" in caught.value.__notes__[0]


def test_total_timeout_bounds_the_retries(clock: FakeClock) -> None:
    flaky = Flaky(10)
    pipe = Pipeline(
        Timeout(3.0, clock=clock),
        Retry(attempts=10, backoff=Backoff.exponential(base=1.0, cap=1.0), clock=clock),
    )
    with pytest.raises(ConnectionError):
        pipe.call(flaky)
    assert sum(clock.sleeps) < 3.0
    assert flaky.calls < 10 or sum(clock.sleeps) < 3.0


def test_retries_that_cannot_fit_the_total_timeout_are_refused_at_build() -> None:
    with pytest.raises(ConfigurationError, match=r"cannot fit in the total Timeout\(3\)"):
        Pipeline(Timeout(3.0), Retry(attempts=10, backoff=Backoff.constant(1.0)))


def test_budget_caps_retries_fleet_wide(clock: FakeClock, events) -> None:
    budget = RetryBudget(ratio=0.1, min_per_second=0, ttl=10.0, clock=clock)
    retry = Retry(attempts=3, backoff=Backoff.constant(0.0), budget=budget, clock=clock)
    pipe = Pipeline(retry)
    ok = Flaky(0)
    for _ in range(20):  # 20 requests deposit 2 retry credits
        pipe.call(ok)
    failures = 0
    for _ in range(5):
        try:
            pipe.call(Flaky(10))
        except ConnectionError:
            failures += 1
    assert failures == 5
    assert events.kinds().count("retry_scheduled") == 2
    assert "retry_budget_exhausted" in events.kinds()


def test_budget_floor_and_expiry(clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0.5, min_per_second=1.0, ttl=10.0, clock=clock)
    assert budget.balance() == 10.0  # the floor: 1/s over 10 s
    for _ in range(10):
        budget.deposit()
    assert budget.balance() == 15.0
    for _ in range(15):
        assert budget.try_withdraw()
    assert not budget.try_withdraw()
    clock.advance(10.0)  # deposits expire after at most ttl...
    assert budget.balance() == 10.0 - 15
    clock.advance(1.0)  # ...retries are remembered a tick longer, so no ttl window exceeds the cap
    assert budget.balance() == 10.0


def test_instant_retries_skip_sleeps() -> None:
    flaky = Flaky(2)
    retry = Retry(attempts=3, backoff=Backoff.constant(30.0))
    with instant_retries():
        assert Pipeline(retry).call(flaky) == "ok"


def test_per_call_state_is_not_shared_between_concurrent_calls(clock: FakeClock) -> None:
    retry = Retry(attempts=3, backoff=Backoff.decorrelated(base=1.0, cap=100.0), clock=clock)
    pipe = Pipeline(retry)
    for _ in range(3):
        clock.sleeps.clear()
        with pytest.raises(ConnectionError):
            pipe.call(Flaky(10))
        assert clock.sleeps[0] <= 3.0  # each call starts from base, not from the last call


def test_backoff_schedules() -> None:
    rng = random.Random(1)
    exp = Backoff.exponential(base=1.0, cap=10.0, jitter="none")
    assert [exp.delay(n, 0, rng) for n in range(1, 6)] == [1.0, 2.0, 4.0, 8.0, 10.0]
    assert Backoff.linear(base=1.0, increment=0.5, cap=2.0, jitter="none").nominal(4) == 2.0
    assert Backoff.constant(0.3).delay(7, 0.3) == 0.3
    full = Backoff.exponential(base=1.0, cap=10.0)
    assert all(0.0 <= full.delay(n, 0, rng) <= full.nominal(n) for n in range(1, 50))
    equal = Backoff.exponential(base=1.0, cap=10.0, jitter="equal")
    assert all(
        equal.nominal(n) / 2 <= equal.delay(n, 0, rng) <= equal.nominal(n) for n in range(1, 9)
    )
    assert Backoff.exponential(base=1.0, cap=5.0, jitter="none").nominal(5000) == 5.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"base": -1}, "base"),
        ({"base": 2, "cap": 1}, "cap"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"jitter": "lots"}, "jitter"),
    ],
)
def test_invalid_backoff(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        Backoff(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"attempts": 0}, r"Retry\(attempts=0\): must be an integer >= 1"),
        ({"attempts": 2.5}, "attempts"),
        ({"backoff": 1.0}, "backoff"),
        ({"budget": 0.2}, "budget"),
        ({"max_retry_after": -1}, "max_retry_after"),
        ({"retry_on_result": 3}, "retry_on_result"),
    ],
)
def test_invalid_retry_options(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        Retry(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs", [{"ratio": 1.5}, {"ratio": -0.1}, {"min_per_second": -1}, {"ttl": 0}]
)
def test_invalid_budget(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError, match="RetryBudget"):
        RetryBudget(**kwargs)


def test_each_failed_attempt_is_classified_once(clock: FakeClock, monkeypatch) -> None:
    from buttress.resilience import _retry

    seen: list[BaseException] = []
    real = _retry.classify

    def counting(error):
        seen.append(error)
        return real(error)

    monkeypatch.setattr(_retry, "classify", counting)
    flaky = Flaky(2, RateLimited("slow down", retry_after=0.5))
    events: list = []
    pipe = Pipeline(Retry(attempts=3, clock=clock), hooks=[events.append])
    assert pipe.call(flaky) == "ok"
    assert len(seen) == 2  # decision, Retry-After hint and event code: one classification
    assert clock.sleeps[0] >= 0.5
    assert [e.code.wire for e in events if e.kind == "retry_scheduled"] == ["rate_limited"] * 2


def test_a_local_rejection_is_not_classified_at_all(clock: FakeClock, monkeypatch) -> None:
    from buttress.resilience import _retry

    monkeypatch.setattr(_retry, "classify", lambda error: pytest.fail("classified"))
    breaker = CircuitBreaker(clock=clock)
    breaker.force_open(60.0)
    with pytest.raises(CircuitOpen) as caught:
        Pipeline(Retry(attempts=3, clock=clock), breaker).call(lambda: "ok")
    assert not getattr(caught.value, "__notes__", None)  # nothing was retried
