"""RateLimiter (GCRA): bursts, exact retry-after, keys, waiting, decisions, cleanup."""

from __future__ import annotations

import pytest

from buttress import ConfigurationError, Pipeline, RateLimited, RateLimiter, deadline
from buttress.resilience import RateDecision
from buttress.testing import FakeClock


def test_burst_then_steady_rate(clock: FakeClock) -> None:
    limiter = RateLimiter(2, per=1.0, burst=3, clock=clock)
    assert [limiter.allow("k") for _ in range(4)] == [True, True, True, False]
    assert limiter.try_acquire("k") == pytest.approx(0.5)
    clock.advance(0.5)
    assert limiter.allow("k")
    assert not limiter.allow("k")


def test_retry_after_is_exact(clock: FakeClock) -> None:
    limiter = RateLimiter(10, per=60.0, burst=1, clock=clock)
    assert limiter.allow()
    wait = limiter.try_acquire()
    assert wait == pytest.approx(6.0)
    clock.advance(wait - 0.001)
    assert not limiter.allow()
    clock.advance(0.001)
    assert limiter.allow()


def test_keys_are_independent(clock: FakeClock) -> None:
    limiter = RateLimiter(1, per=60.0, burst=1, clock=clock)
    assert limiter.allow("alice")
    assert limiter.allow("bob")
    assert not limiter.allow("alice")


def test_cost(clock: FakeClock) -> None:
    limiter = RateLimiter(10, burst=10, clock=clock)
    assert limiter.allow(cost=7)
    assert not limiter.allow(cost=4)
    assert limiter.allow(cost=3)


def test_decide_gives_header_numbers(clock: FakeClock) -> None:
    limiter = RateLimiter(1, per=1.0, burst=5, clock=clock)
    first = limiter.decide("k")
    assert (first.allowed, first.limit, first.remaining, first.retry_after) == (True, 5, 4, 0.0)
    assert first.reset_after == pytest.approx(1.0)
    for _ in range(4):
        limiter.decide("k")
    denied = limiter.decide("k")
    assert (denied.allowed, denied.remaining) == (False, 0)
    assert denied.retry_after == pytest.approx(1.0)
    assert denied.reset_after == pytest.approx(5.0)
    with pytest.raises(ConfigurationError, match="cost"):
        limiter.decide("k", cost=6)


def test_pipeline_rejects_with_rate_limited(clock: FakeClock, events) -> None:
    pipe = Pipeline(RateLimiter(1, per=10.0, burst=1, clock=clock, name="api"))
    assert pipe.call(lambda: 1) == 1
    with pytest.raises(RateLimited) as caught:
        pipe.call(lambda: 1)
    assert caught.value.retry_after == pytest.approx(10.0)
    assert caught.value.policy == "api"
    assert events.kinds() == ["call_rejected"]


def test_pipeline_key_function(clock: FakeClock) -> None:
    pipe = Pipeline(RateLimiter(1, per=10.0, burst=1, key=lambda user: user, clock=clock))
    assert pipe.call(lambda user: user, "alice") == "alice"
    assert pipe.call(lambda user: user, "bob") == "bob"
    with pytest.raises(RateLimited):
        pipe.call(lambda user: user, "alice")


def test_pipeline_can_wait_for_a_permit(clock: FakeClock) -> None:
    pipe = Pipeline(RateLimiter(2, per=1.0, burst=1, max_wait=1.0, clock=clock))
    for _ in range(3):
        pipe.call(lambda: None)
    assert clock.sleeps == [pytest.approx(0.5), pytest.approx(0.5)]


def test_waiting_never_outlasts_the_deadline(clock: FakeClock) -> None:
    pipe = Pipeline(RateLimiter(1, per=10.0, burst=1, max_wait=60.0, clock=clock))
    pipe.call(lambda: None)
    with deadline(5.0, clock=clock), pytest.raises(RateLimited):
        pipe.call(lambda: None)


async def test_async_pipeline_waits_on_the_clock(clock: FakeClock) -> None:
    pipe = Pipeline(RateLimiter(4, per=1.0, burst=1, max_wait=1.0, clock=clock))

    async def work() -> int:
        return 1

    assert [await pipe.acall(work) for _ in range(3)] == [1, 1, 1]
    assert clock.sleeps == [pytest.approx(0.25), pytest.approx(0.25)]


def test_idle_keys_are_swept(clock: FakeClock) -> None:
    limiter = RateLimiter(1, per=1.0, burst=1, max_keys=10, clock=clock)
    for i in range(10):
        limiter.allow(i)
    clock.advance(2.0)  # every key idle again
    for i in range(10, 16):
        limiter.allow(i)
    assert len(limiter) <= 10


def test_live_keys_are_never_dropped_new_keys_wait(clock: FakeClock) -> None:
    limiter = RateLimiter(1, per=100.0, burst=1, max_keys=4, clock=clock)
    assert [limiter.allow(i) for i in range(12)] == [True] * 4 + [False] * 8
    assert len(limiter) == 4
    assert limiter.try_acquire(11) == pytest.approx(100.0)  # until key 0 expires
    assert not any(limiter.allow(i) for i in range(4))  # their state is intact
    clock.advance(100.0)
    assert limiter.allow(11)


def test_a_flood_of_new_keys_never_resets_an_exhausted_one(clock: FakeClock) -> None:
    """Issue 8: 10x ``max_keys`` attacker keys leave an exhausted victim denied."""
    limiter = RateLimiter(10, per=3600, max_keys=1000, clock=clock)
    assert all(limiter.allow("victim") for _ in range(10))
    assert not limiter.allow("victim")
    admitted = [limiter.allow(f"attacker-{i}") for i in range(10_000)]
    assert sum(admitted) == 999  # every slot but the victim's
    assert not limiter.allow("victim")
    # a refused key waits until the earliest live key (an attacker's, 360 s) expires
    assert limiter.try_acquire("attacker-9999") == pytest.approx(360.0)
    assert limiter.decide("attacker-9999") == RateDecision(False, 10, 0, 360.0, 0.0)
    assert limiter.reserve("attacker-9999", max_wait=1000.0) is None
    clock.advance(359.0)
    assert not limiter.allow("victim")
    assert limiter.try_acquire("attacker-9999") == pytest.approx(1.0)
    clock.advance(1.0)
    assert limiter.allow("attacker-9999")  # room again: the expired attackers are dropped
    # 360 s earned the victim one request back, as GCRA says; a reset would give it 10
    assert [limiter.allow("victim") for _ in range(10)] == [True] + [False] * 9
    clock.advance(3600.0)
    assert all(limiter.allow("victim") for _ in range(10))  # its TAT passed: a full burst
    assert len(limiter) <= 1000


def test_the_bytes_budget_bounds_long_keys(clock: FakeClock) -> None:
    limiter = RateLimiter(1, per=100.0, burst=1, max_bytes=64 * 1024, clock=clock)
    admitted = sum(limiter.allow("k" * 1000 + str(i)) for i in range(1000))
    assert 40 < admitted < 64  # ~1.2 kB each
    assert limiter.try_acquire("k" * 1000 + "x") == pytest.approx(100.0)


def test_reset(clock: FakeClock) -> None:
    limiter = RateLimiter(1, per=100.0, burst=1, clock=clock)
    assert limiter.allow("k")
    limiter.reset("k")
    assert limiter.allow("k")


def test_default_burst_is_the_rate() -> None:
    assert RateLimiter(50).burst == 50
    assert RateLimiter(0.5).burst == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rate": 0}, "rate"),
        ({"rate": 1, "per": 0}, "per"),
        ({"rate": 1, "burst": 0}, "burst"),
        ({"rate": 1, "max_wait": -1}, "max_wait"),
        ({"rate": 1, "key": "ip"}, "key"),
        ({"rate": 1, "max_keys": 0}, "max_keys"),
        ({"rate": 1, "max_bytes": 100}, "max_bytes"),
        ({"rate": 1, "max_keys": 2**32}, "max_keys"),
    ],
)
def test_invalid_limiter_options(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        RateLimiter(**kwargs)  # type: ignore[arg-type]
