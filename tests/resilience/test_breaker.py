"""CircuitBreaker: trips, rejects, probes, closes; generations; cancellation; registry."""

from __future__ import annotations

import asyncio
import gc

import httpx
import pytest

from buttress import CircuitBreaker, CircuitOpen, ConfigurationError, Pipeline, Timeout, deadline
from buttress.errors import BulkheadFull, DeadlineExceeded, ErrorCode
from buttress.resilience import registry
from buttress.testing import FakeClock


def boom() -> None:
    raise ConnectionError("down")


def ok() -> str:
    return "ok"


def fail_n(pipe: Pipeline, n: int) -> None:
    for _ in range(n):
        with pytest.raises(ConnectionError):
            pipe.call(boom)


def test_consecutive_failures_trip_a_low_traffic_breaker(clock: FakeClock, events) -> None:
    breaker = CircuitBreaker(consecutive_failures=3, minimum_calls=100, clock=clock)
    pipe = Pipeline(breaker)
    fail_n(pipe, 3)
    assert breaker.state == "open"
    with pytest.raises(CircuitOpen) as caught:
        pipe.call(ok)
    assert caught.value.retry_after == pytest.approx(5.0)
    assert caught.value.code is ErrorCode.CIRCUIT_OPEN
    assert "circuit_state_changed" in events.kinds()
    assert events.kinds()[-1] == "call_rejected"


def test_success_resets_the_consecutive_count(clock: FakeClock) -> None:
    breaker = CircuitBreaker(consecutive_failures=3, minimum_calls=100, clock=clock)
    pipe = Pipeline(breaker)
    for _ in range(5):
        fail_n(pipe, 2)
        pipe.call(ok)
    assert breaker.state == "closed"


def test_failure_rate_over_the_window(clock: FakeClock) -> None:
    breaker = CircuitBreaker(
        failure_rate=0.5, minimum_calls=10, window=10.0, consecutive_failures=None, clock=clock
    )
    pipe = Pipeline(breaker)
    for _ in range(5):
        pipe.call(ok)
    fail_n(pipe, 4)
    assert breaker.state == "closed"  # 9 calls < minimum
    fail_n(pipe, 1)
    assert breaker.state == "open"  # 5 / 10


def test_old_outcomes_slide_out_of_the_time_window(clock: FakeClock) -> None:
    breaker = CircuitBreaker(
        failure_rate=0.5, minimum_calls=4, window=10.0, consecutive_failures=None, clock=clock
    )
    pipe = Pipeline(breaker)
    fail_n(pipe, 3)
    clock.advance(11.0)  # the failures expire
    for _ in range(3):
        pipe.call(ok)
    fail_n(pipe, 1)
    assert breaker.snapshot().calls == 4
    assert breaker.state == "closed"  # 1 / 4


def test_count_window(clock: FakeClock) -> None:
    breaker = CircuitBreaker(
        failure_rate=0.5, minimum_calls=4, window_calls=4, consecutive_failures=None, clock=clock
    )
    pipe = Pipeline(breaker)
    fail_n(pipe, 1)
    for _ in range(4):
        pipe.call(ok)  # pushes the failure out of the 4-call ring
    assert breaker.snapshot().failures == 0
    fail_n(pipe, 2)
    assert breaker.state == "open"


def test_slow_calls_trip_the_breaker(clock: FakeClock) -> None:
    breaker = CircuitBreaker(
        slow_call_duration=1.0,
        slow_call_rate=0.5,
        minimum_calls=2,
        consecutive_failures=None,
        clock=clock,
    )

    def slow() -> str:
        clock.advance(2.0)
        return "late"

    pipe = Pipeline(breaker)
    pipe.call(ok)
    pipe.call(slow)
    assert breaker.state == "open"


def test_half_open_probe_closes_on_success(clock: FakeClock, events) -> None:
    breaker = CircuitBreaker(consecutive_failures=1, break_duration=5.0, clock=clock)
    pipe = Pipeline(breaker)
    fail_n(pipe, 1)
    clock.advance(5.0)
    assert breaker.state == "half_open"
    assert pipe.call(ok) == "ok"
    assert breaker.state == "closed"
    transitions = [(e.from_state, e.to_state) for e in events if e.kind == "circuit_state_changed"]
    assert transitions == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_half_open_probe_failure_reopens_with_growing_break(clock: FakeClock) -> None:
    breaker = CircuitBreaker(
        consecutive_failures=1,
        break_duration=2.0,
        break_multiplier=2.0,
        max_break_duration=5.0,
        clock=clock,
    )
    pipe = Pipeline(breaker)
    fail_n(pipe, 1)
    for expected in (4.0, 5.0, 5.0):  # 2 -> 4 -> 8 capped at 5
        clock.advance(10.0)
        fail_n(pipe, 1)  # the probe fails
        assert breaker.snapshot().open_remaining == pytest.approx(expected)


def test_half_open_admits_only_the_permitted_probes(clock: FakeClock) -> None:
    breaker = CircuitBreaker(consecutive_failures=1, half_open_probes=2, clock=clock)
    fail_n(Pipeline(breaker), 1)
    clock.advance(5.0)
    p1 = breaker.acquire()
    p2 = breaker.acquire()
    with pytest.raises(CircuitOpen, match="probes are taken"):
        breaker.acquire()
    breaker.release(p1)  # a cancelled probe frees its slot
    p3 = breaker.acquire()
    breaker.on_success(p2, 0.01)
    breaker.on_success(p3, 0.01)
    assert breaker.state == "closed"


def test_a_slow_success_from_an_old_generation_cannot_close_it(clock: FakeClock) -> None:
    breaker = CircuitBreaker(consecutive_failures=1, clock=clock)
    old = breaker.acquire()  # issued while closed
    fail_n(Pipeline(breaker), 1)
    assert breaker.state == "open"
    clock.advance(5.0)
    probe = breaker.acquire()
    breaker.on_success(old, 0.1)  # the slow call from before the trip finally returns
    assert breaker.state == "half_open"
    breaker.on_failure(old, 0.1)
    assert breaker.state == "half_open"
    breaker.on_success(probe, 0.1)
    assert breaker.state == "closed"


async def test_cancellation_is_not_a_failure_and_frees_the_probe(clock: FakeClock) -> None:
    breaker = CircuitBreaker(consecutive_failures=1, clock=clock)
    fail_n(Pipeline(breaker), 1)
    clock.advance(5.0)
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.sleep(10)

    task = asyncio.ensure_future(Pipeline(breaker).acall(hang))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.state == "half_open"
    assert breaker.snapshot().failures == 0

    async def fine() -> str:
        return "ok"

    assert await Pipeline(breaker).acall(fine) == "ok"  # the probe slot came back
    assert breaker.state == "closed"


def test_client_errors_and_local_rejections_are_not_failures(clock: FakeClock) -> None:
    breaker = CircuitBreaker(consecutive_failures=1, clock=clock)
    pipe = Pipeline(breaker)
    for error in (
        BulkheadFull("full"),
        httpx.HTTPStatusError(
            "404",
            request=httpx.Request("GET", "http://127.0.0.1/"),
            response=httpx.Response(404),
        ),
    ):

        def raise_it(e: BaseException = error) -> None:
            raise e

        with pytest.raises(type(error)):
            pipe.call(raise_it)
    assert breaker.state == "closed"

    def timeout() -> None:
        raise DeadlineExceeded("slow", code=ErrorCode.UPSTREAM_TIMEOUT)

    with pytest.raises(DeadlineExceeded):
        pipe.call(timeout)
    assert breaker.state == "open"  # timeouts are the dependency's fault


def test_the_callers_own_expired_deadline_is_not_a_failure(clock: FakeClock) -> None:
    breaker = CircuitBreaker(consecutive_failures=2, clock=clock)
    pipe = Pipeline(breaker, Timeout(1.0, clock=clock))
    with deadline(1.0, clock=clock):
        clock.advance(2.0)
        for _ in range(3):
            with pytest.raises(DeadlineExceeded):
                pipe.call(lambda: 1)  # never runs: the deadline passed before it could
    assert breaker.state == "closed"


def test_failure_results(clock: FakeClock) -> None:
    breaker = CircuitBreaker(
        consecutive_failures=2, is_failure_result=lambda r: r.status_code >= 500, clock=clock
    )
    pipe = Pipeline(breaker)
    pipe.call(lambda: httpx.Response(503))
    pipe.call(lambda: httpx.Response(503))
    assert breaker.state == "open"


def test_manual_control_and_snapshot(clock: FakeClock) -> None:
    breaker = CircuitBreaker(name="payments", clock=clock)
    breaker.force_open(30.0)
    snap = breaker.snapshot()
    assert (snap.name, snap.state, snap.open_remaining) == ("payments", "open", 30.0)
    breaker.reset()
    assert breaker.state == "closed"
    assert breaker.generation == 2


def test_named_breakers_are_registered_weakly() -> None:
    breaker = CircuitBreaker(name="registry-test-db")
    assert registry.breaker("registry-test-db") is breaker
    del breaker
    gc.collect()
    assert registry.breaker("registry-test-db") is None
    anonymous = CircuitBreaker()
    assert anonymous not in registry.breakers()


def test_breaker_window_must_cover_two_attempt_timeouts() -> None:
    with pytest.raises(ConfigurationError, match=r"window >= 20 s"):
        Pipeline(CircuitBreaker(window=15.0), Timeout(10.0))
    Pipeline(CircuitBreaker(window=20.0), Timeout(10.0))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"failure_rate": 0}, "failure_rate"),
        ({"failure_rate": 1.5}, "failure_rate"),
        ({"minimum_calls": 0}, "minimum_calls"),
        ({"window": -1}, "window"),
        ({"window_calls": 5, "minimum_calls": 10}, "window_calls"),
        ({"consecutive_failures": 0}, "consecutive_failures"),
        ({"break_duration": 0}, "break_duration"),
        ({"break_multiplier": 0.5}, "break_multiplier"),
        ({"max_break_duration": 1, "break_duration": 5}, "max_break_duration"),
        ({"half_open_probes": 0}, "half_open_probes"),
        ({"is_failure": "yes"}, "is_failure"),
        ({"name": ""}, "name"),
    ],
)
def test_invalid_breaker_options(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        CircuitBreaker(**kwargs)  # type: ignore[arg-type]
