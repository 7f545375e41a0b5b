"""Property tests (hypothesis) for the resilience state machines and limiters.

Invariants, not examples:

* `CircuitBreaker`: a rule-based state machine checked against a model after every step
  (probe bound, generation fencing, cancellation, exact ``retry_after``);
* `RateLimiter` (GCRA): the ``burst + rate * t`` bound over any interval, exact
  ``retry_after``, ``decide()`` == ``try_acquire()``;
* `Backoff`, `Retry` and `RetryBudget`: delays within their bounds and the deadline, the
  number of attempts, the budget's cap;
* `Bulkhead` with threads: never more than ``max_concurrent`` inside, nothing leaked.

Time is a `FakeClock` everywhere except the thread test, which needs real interleavings.
The asyncio properties (bulkhead tasks, cancellation through a pipeline, retries in
``acall``) live in ``test_properties_async.py``.
"""

from __future__ import annotations

import math
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, event, example, given, reject, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from buttress import (
    Backoff,
    Bulkhead,
    BulkheadFull,
    CircuitBreaker,
    CircuitOpen,
    ConfigurationError,
    Pipeline,
    RateLimiter,
    Retry,
    RetryBudget,
    Timeout,
    deadline,
)
from buttress.errors import RateLimited
from buttress.testing import FakeClock

# Floating-point slack, in seconds, for bounds that hold exactly in real arithmetic.
SLACK = 1e-9

STATES = {"closed", "open", "half_open"}


# ====================================================================== circuit breaker
# Durations on a 1/4 s grid hit the "exactly at open_until" boundaries; free floats
# exercise the rest. The model uses the breaker's own arithmetic, so both agree exactly.
grid_durations = st.sampled_from([0.25, 0.5, 1.0, 2.0, 5.0])
advances = st.one_of(
    st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0, 10.0, 40.0]),
    st.floats(0.0, 12.0, allow_nan=False, allow_infinity=False),
)
elapsed_times = st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0, 3.0])


@st.composite
def breaker_configs(draw: st.DrawFn) -> dict[str, Any]:
    minimum_calls = draw(st.integers(1, 6))
    break_duration = draw(grid_durations)
    cfg: dict[str, Any] = {
        "failure_rate": draw(st.one_of(st.sampled_from([0.25, 0.5, 1.0]), st.floats(0.05, 1.0))),
        "minimum_calls": minimum_calls,
        "consecutive_failures": draw(st.none() | st.integers(1, 3)),
        "half_open_probes": draw(st.integers(1, 4)),
        "break_duration": break_duration,
        "break_multiplier": draw(st.sampled_from([1.0, 1.5, 2.0, 3.0])),
        "max_break_duration": break_duration * draw(st.sampled_from([1, 2, 4, 8])),
        "slow_call_duration": draw(st.none() | st.sampled_from([0.25, 0.5, 1.0])),
        "slow_call_rate": draw(st.sampled_from([0.5, 1.0])),
    }
    if draw(st.booleans()):
        cfg["window_calls"] = draw(st.integers(minimum_calls, minimum_calls + 6))
    else:
        cfg["window"] = draw(st.sampled_from([1.0, 2.5, 5.0, 10.0, 30.0]))
    return cfg


class _WindowModel:
    """The sliding window, as a plain list of outcomes (no ring buffer)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.count: int | None = cfg.get("window_calls")
        self.inv = 0.0
        if self.count is None:
            width = cfg["window"] / 10  # the breaker's own arithmetic: ten buckets
            self.inv = 1.0 / width
        self.entries: list[tuple[int, bool, bool]] = []  # (bucket tick, failed, slow)

    def clear(self) -> None:
        self.entries.clear()

    def add(self, now: float, failed: bool, slow: bool) -> None:
        tick = math.floor(now * self.inv) if self.count is None else 0
        self.entries.append((tick, failed, slow))
        if self.count is not None and len(self.entries) > self.count:
            del self.entries[0]

    def live(self, now: float) -> list[tuple[int, bool, bool]]:
        if self.count is not None:
            return self.entries
        tick = math.floor(now * self.inv)
        return [e for e in self.entries if e[0] > tick - 10]

    def counts(self, now: float) -> tuple[int, int, int]:
        live = self.live(now)
        return len(live), sum(e[1] for e in live), sum(e[2] for e in live)


class BreakerModel:
    """What the documented semantics say the breaker must do (see `_breaker.py`)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.state = "closed"
        self.gen = 0
        self.open_until = 0.0
        self.current_break = 0.0  # the duration of the open period in force
        self.breaks = 0
        self.probes_out = 0
        self.probe_ok = 0
        self.probe_failed = 0
        self.consecutive = 0
        self.window = _WindowModel(cfg)
        # per half-open generation: probes admitted and probes given back by cancellation
        self.admitted: dict[int, int] = {}
        self.released: dict[int, int] = {}

    def visible_state(self, now: float) -> str:
        if self.state == "open" and now >= self.open_until:
            return "half_open"
        return self.state

    def _transition(self, to: str) -> None:
        self.state = to
        self.gen += 1
        self.probes_out = self.probe_ok = self.probe_failed = 0
        self.consecutive = 0
        self.window.clear()

    def _open(self, now: float) -> None:
        cfg = self.cfg
        duration = min(
            cfg["break_duration"] * cfg["break_multiplier"] ** self.breaks,
            cfg["max_break_duration"],
        )
        self.breaks += 1
        self.open_until = now + duration
        self.current_break = duration
        self._transition("open")

    def force_open(self, now: float, duration: float) -> None:
        self._transition("open")
        self.open_until = now + duration
        self.current_break = duration

    def reset(self) -> None:
        self.breaks = 0
        self._transition("closed")

    def acquire(self, now: float) -> tuple[str, float]:
        """``("permit", generation)`` or ``("reject", retry_after)``."""
        if self.state == "closed":
            return "permit", self.gen
        if self.state == "open":
            if now < self.open_until:
                return "reject", self.open_until - now
            self._transition("half_open")
        if self.probes_out + self.probe_ok + self.probe_failed >= self.cfg["half_open_probes"]:
            return "reject", min(self.cfg["break_duration"], 1.0)
        self.probes_out += 1
        self.admitted[self.gen] = self.admitted.get(self.gen, 0) + 1
        return "permit", self.gen

    def _slow(self, elapsed: float) -> bool:
        limit = self.cfg["slow_call_duration"]
        return limit is not None and elapsed >= limit

    def _probe_done(self, now: float, failed: bool) -> None:
        self.probes_out -= 1
        if failed:
            self.probe_failed += 1
        else:
            self.probe_ok += 1
        n = self.cfg["half_open_probes"]
        if self.probe_failed / n >= self.cfg["failure_rate"]:
            self._open(now)
        elif self.probe_ok + self.probe_failed >= n:
            self.breaks = 0
            self._transition("closed")

    def _evaluate(self, now: float) -> None:
        cfg = self.cfg
        limit = cfg["consecutive_failures"]
        if limit is not None and self.consecutive >= limit:
            self._open(now)
            return
        calls, failures, slow = self.window.counts(now)
        if calls < cfg["minimum_calls"]:
            return
        slow_rate_hit = (
            cfg["slow_call_duration"] is not None and slow / calls >= cfg["slow_call_rate"]
        )
        if failures / calls >= cfg["failure_rate"] or slow_rate_hit:
            self._open(now)

    def success(self, permit: int, elapsed: float, now: float) -> None:
        if permit != self.gen:
            return
        slow = self._slow(elapsed)
        if self.state == "closed":
            self.window.add(now, False, slow)
            if slow:
                self._evaluate(now)
            else:
                self.consecutive = 0
        elif self.state == "half_open":
            self._probe_done(now, failed=slow)

    def failure(self, permit: int, elapsed: float, now: float) -> None:
        if permit != self.gen:
            return
        if self.state == "closed":
            self.window.add(now, True, self._slow(elapsed))
            self.consecutive += 1
            self._evaluate(now)
        elif self.state == "half_open":
            self._probe_done(now, failed=True)

    def release(self, permit: int) -> None:
        if permit == self.gen and self.state == "half_open" and self.probes_out > 0:
            self.probes_out -= 1
            self.released[self.gen] = self.released.get(self.gen, 0) + 1


@dataclass(frozen=True)
class Permit:
    generation: int
    serial: int


class BreakerMachine(RuleBasedStateMachine):
    """Drive a `CircuitBreaker` and its model with the same operations; compare."""

    permits = Bundle("permits")

    def __init__(self) -> None:
        super().__init__()
        self.serial = 0

    @initialize(cfg=breaker_configs(), start=st.sampled_from([0.0, 1000.0, 7777.3]))
    def setup(self, cfg: dict[str, Any], start: float) -> None:
        self.clock = FakeClock(start)
        self.breaker = CircuitBreaker(clock=self.clock, **cfg)
        self.model = BreakerModel(cfg)

    # ---------------------------------------------------------------- helpers
    def _observed(self) -> tuple[Any, ...]:
        s = self.breaker.snapshot()
        return (
            self.breaker.state,
            self.breaker.generation,
            s.state,
            s.generation,
            s.calls,
            s.failures,
            s.slow_calls,
            s.consecutive_failures,
            s.open_remaining,
        )

    def _outcome(self, permit: Permit, record: Any, model_record: Any, elapsed: float) -> None:
        stale = permit.generation != self.breaker.generation
        before = self._observed()
        now = self.clock.now()
        record(permit.generation, elapsed)
        model_record(permit.generation, elapsed, now)
        if stale:  # an outcome from an older generation changes nothing at all
            event("stale outcome ignored")
            assert self._observed() == before
        elif before[0] == "half_open" and self.breaker.state != "half_open":
            event(f"half-open -> {self.breaker.state}")

    # ---------------------------------------------------------------- rules
    @rule(target=permits)
    def acquire(self) -> Any:
        permit = self._acquire()
        return multiple() if permit is None else permit

    @rule(target=permits, count=st.integers(2, 5))
    def acquire_many(self, count: int) -> Any:
        """Concurrent callers: several permits asked for before any outcome."""
        granted = [self._acquire() for _ in range(count)]
        return multiple(*(p for p in granted if p is not None))

    def _acquire(self) -> Permit | None:
        now = self.clock.now()
        kind, value = self.model.acquire(now)
        try:
            permit = self.breaker.acquire()
        except CircuitOpen as exc:
            assert kind == "reject", f"breaker rejected, model expected permit {value}"
            retry_after = exc.retry_after
            assert retry_after is not None
            assert retry_after == pytest.approx(value, rel=1e-12, abs=1e-12)
            # (open_until - now) may exceed the duration by a few ulps of now: SLACK
            assert 0 < retry_after <= self.model.current_break + SLACK or (
                retry_after == min(self.model.cfg["break_duration"], 1.0)
            )
            # the growing break never outgrows its cap
            assert retry_after <= self.model.cfg["max_break_duration"] + SLACK
            return None
        assert kind == "permit", f"breaker admitted, model expected a rejection ({value})"
        assert permit == value
        self.serial += 1
        return Permit(permit, self.serial)

    @precondition(lambda self: self.model.state == "closed")
    @rule(elapsed=elapsed_times)
    def trip(self, elapsed: float) -> None:
        """Calls fail until the breaker opens (or 20 have failed: a success may linger)."""
        for _ in range(20):
            permit = self._acquire()
            assert permit is not None  # a closed breaker admits everything
            self.fail(permit, elapsed)
            if self.model.state != "closed":
                break

    @precondition(lambda self: self.model.state != "closed")
    @rule(fates=st.lists(st.sampled_from(["ok", "fail", "cancel", "slow"]), max_size=6))
    def probe_round(self, fates: list[str]) -> None:
        """The break ends; concurrent callers probe; their outcomes arrive in order."""
        now = self.clock.now()
        if self.model.state == "open":
            self.clock.advance(max(self.model.open_until - now, 0.0))
        permits = [self._acquire() for _ in fates]
        for permit, fate in zip(permits, fates, strict=True):
            if permit is None:
                continue
            if fate == "cancel":
                self.cancel(permit)
            elif fate == "fail":
                self.fail(permit, 0.1)
            else:
                self.succeed(permit, 3.0 if fate == "slow" else 0.1)

    @precondition(lambda self: self.model.state == "open")
    @rule(extra=st.sampled_from([0.0, 0.0, 0.125, 1.0]))
    def wait_out_the_break(self, extra: float) -> None:
        now = self.clock.now()
        self.clock.advance(max(self.model.open_until - now, 0.0) + extra)

    @rule(permit=consumes(permits), elapsed=elapsed_times)
    def succeed(self, permit: Permit, elapsed: float) -> None:
        now = self.clock.now()
        self._outcome(
            permit,
            lambda p, e: self.breaker.on_success(p, e, now),
            self.model.success,
            elapsed,
        )

    @rule(permit=consumes(permits), elapsed=elapsed_times)
    def fail(self, permit: Permit, elapsed: float) -> None:
        now = self.clock.now()
        self._outcome(
            permit,
            lambda p, e: self.breaker.on_failure(p, e, now),
            self.model.failure,
            elapsed,
        )

    @rule(permit=consumes(permits))
    def cancel(self, permit: Permit) -> None:
        """A cancelled call gives its permit back: never a failure, frees a probe slot."""
        before = self.breaker.snapshot()
        state = self.breaker.state
        self.breaker.release(permit.generation)
        self.model.release(permit.generation)
        after = self.breaker.snapshot()
        assert self.breaker.state == state
        assert after.generation == before.generation
        assert after.failures == before.failures
        assert after.calls == before.calls
        assert after.consecutive_failures == before.consecutive_failures

    @rule(seconds=advances)
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @precondition(lambda self: self.model.state == "half_open")
    @rule()
    def fill_probes(self) -> None:
        """Ask for more probes than allowed: exactly the free slots are granted."""
        free = self.model.cfg["half_open_probes"] - (
            self.model.probes_out + self.model.probe_ok + self.model.probe_failed
        )
        event(f"half-open with {free} free probe slots")
        granted = []
        for _ in range(free + 2):
            try:
                granted.append(self.breaker.acquire())
            except CircuitOpen:
                break
        assert len(granted) == free
        for p in granted:  # give them back, as cancelled calls do
            self.breaker.release(p)

    @rule(share=st.sampled_from([0.25, 0.5, 1.0]))
    def force_open(self, share: float) -> None:
        duration = share * self.model.cfg["max_break_duration"]
        self.model.force_open(self.clock.now(), duration)
        self.breaker.force_open(duration)

    @rule()
    def reset(self) -> None:
        self.model.reset()
        self.breaker.reset()

    # ---------------------------------------------------------------- invariants
    @invariant()
    def agrees_with_the_model(self) -> None:
        now = self.clock.now()
        m = self.model
        snap = self.breaker.snapshot()
        assert self.breaker.state in STATES
        assert snap.state in STATES
        assert self.breaker.state == m.visible_state(now) == snap.state
        assert self.breaker.generation == m.gen == snap.generation
        calls, failures, slow = m.window.counts(now)
        assert (snap.calls, snap.failures, snap.slow_calls) == (calls, failures, slow)
        assert snap.consecutive_failures == m.consecutive
        if m.state == "open":
            assert snap.open_remaining == max(m.open_until - now, 0.0)
        else:
            assert snap.open_remaining == 0.0

    @invariant()
    def probes_are_bounded(self) -> None:
        m = self.model
        n = m.cfg["half_open_probes"]
        assert 0 <= m.probes_out <= n
        for gen, admitted in m.admitted.items():
            assert admitted <= n + m.released.get(gen, 0)


BreakerMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestCircuitBreakerStateMachine = BreakerMachine.TestCase


# ====================================================================== GCRA rate limiter
@st.composite
def limiter_configs(draw: st.DrawFn) -> tuple[float, float, int]:
    rate = draw(st.one_of(st.sampled_from([1.0, 3.0, 10.0]), st.floats(0.05, 500.0)))
    per = draw(st.one_of(st.sampled_from([1.0, 60.0]), st.floats(0.01, 100.0)))
    burst = draw(st.integers(1, 8))
    return rate, per, burst


# (gap in emission intervals, cost, key); zero gaps make bursts
arrivals = st.lists(
    st.tuples(
        st.one_of(st.just(0.0), st.floats(0.0, 3.0)),
        st.integers(1, 9),
        st.sampled_from(["a", "b"]),
    ),
    max_size=60,
)


def _check_gcra_bound(
    admitted: list[tuple[float, int]], interval: float, tau: float, burst: int
) -> None:
    """Any interval [t_i, t_j] holds at most ``burst + (t_j - t_i) / interval`` cost."""
    for i, (ti, _) in enumerate(admitted):
        total = 0
        for tj, cost in admitted[i:]:
            total += cost
            # sum(cost) * T - B * T <= t_j - t_i, with the limiter's epsilon and the
            # rounding of up to 60 additions to a TAT the size of t_j
            assert total * interval - tau <= (tj - ti) + SLACK + 64 * math.ulp(tj), (
                f"{total} admitted in {tj - ti} s; limit {burst} + {(tj - ti) / interval}"
            )


@settings(max_examples=200, deadline=None)
@given(cfg=limiter_configs(), seq=arrivals, start=st.sampled_from([0.0, 1000.0, 86400.7, 3.2e7]))
def test_gcra_never_admits_more_than_burst_plus_rate_times_t(
    cfg: tuple[float, float, int], seq: list[tuple[float, int, str]], start: float
) -> None:
    rate, per, burst = cfg
    clock = FakeClock(start)
    limiter = RateLimiter(rate, per, burst=burst, clock=clock)
    interval = per / rate
    admitted: dict[str, list[tuple[float, int]]] = {"a": [], "b": []}
    for gap, cost, key in seq:
        clock.advance(gap * interval)
        retry_after = limiter.try_acquire(key, cost)
        assert retry_after >= 0.0
        if retry_after == 0.0:
            assert cost <= burst  # a request costlier than the burst is never admitted
            admitted[key].append((clock.now(), cost))
        else:
            assert retry_after > 0.0
    for key_admitted in admitted.values():
        _check_gcra_bound(key_admitted, interval, interval * burst, burst)


@settings(max_examples=200, deadline=None)
@given(cfg=limiter_configs(), seq=arrivals, start=st.sampled_from([0.0, 1000.0, 86400.7, 3.2e7]))
def test_gcra_retry_after_is_exact(
    cfg: tuple[float, float, int], seq: list[tuple[float, int, str]], start: float
) -> None:
    """Denied at t with retry_after r: still denied just before t + r, admitted at t + r."""
    rate, per, burst = cfg
    clock = FakeClock(start)
    limiter = RateLimiter(rate, per, burst=burst, clock=clock)
    interval = per / rate
    admitted: dict[str, list[tuple[float, int]]] = {"a": [], "b": []}
    for gap, raw_cost, key in seq:
        cost = min(raw_cost, burst)  # a costlier request can never be admitted
        clock.advance(gap * interval)
        now = clock.now()
        retry_after = limiter.try_acquire(key, cost)
        if retry_after > 0.0:
            if retry_after > 4 * SLACK:  # not earlier: a denial leaves the state alone
                early = now + retry_after - min(retry_after / 2, 1e-6)
                assert limiter.try_acquire(key, cost, now=early) > 0.0
            clock.advance(retry_after)  # nothing else admitted in between
            assert limiter.try_acquire(key, cost) == 0.0, (
                f"denied again at now + retry_after ({retry_after})"
            )
        admitted[key].append((clock.now(), cost))
    for key_admitted in admitted.values():
        _check_gcra_bound(key_admitted, interval, interval * burst, burst)


@settings(max_examples=200, deadline=None)
@given(cfg=limiter_configs(), seq=arrivals, start=st.sampled_from([0.0, 1000.0, 86400.7, 3.2e7]))
def test_gcra_decide_agrees_with_try_acquire(
    cfg: tuple[float, float, int], seq: list[tuple[float, int, str]], start: float
) -> None:
    rate, per, burst = cfg
    clock = FakeClock(start)
    fast = RateLimiter(rate, per, burst=burst, clock=clock)
    full = RateLimiter(rate, per, burst=burst, clock=clock)
    tau = (per / rate) * burst
    for gap, raw_cost, key in seq:
        cost = min(raw_cost, burst)  # decide() refuses cost > burst at once
        clock.advance(gap * (per / rate))
        retry_after = fast.try_acquire(key, cost)
        decision = full.decide(key, cost)
        assert decision.allowed == (retry_after == 0.0)
        assert decision.retry_after == retry_after
        assert decision.limit == burst
        assert 0 <= decision.remaining <= burst
        assert 0.0 <= decision.reset_after <= tau + SLACK + 64 * math.ulp(clock.now())
        if decision.allowed:
            assert decision.remaining <= burst - cost


@settings(max_examples=150, deadline=None)
@given(cfg=limiter_configs(), seq=arrivals, start=st.sampled_from([0.0, 1000.0, 86400.7, 864000.3]))
# found by hypothesis: a day of monotonic uptime, 260/s, burst 3, a request of cost 2
@example(cfg=(260.0, 1.0, 3), seq=[(0.0, 2, "a")], start=86400.7)
def test_gcra_remaining_is_what_would_be_admitted_now(
    cfg: tuple[float, float, int], seq: list[tuple[float, int, str]], start: float
) -> None:
    """``remaining`` (the RateLimit-Remaining header) == unit requests admissible now."""
    rate, per, burst = cfg
    clock = FakeClock(start)
    limiter = RateLimiter(rate, per, burst=burst, clock=clock)
    history: list[tuple[str, int, float]] = []  # admitted requests, to rebuild the state
    for gap, raw_cost, key in seq:
        cost = min(raw_cost, burst)
        clock.advance(gap * (per / rate))
        now = clock.now()
        decision = limiter.decide(key, cost)
        if decision.allowed:
            history.append((key, cost, now))
        twin = RateLimiter(rate, per, burst=burst, clock=clock)
        for k, c, t in history:
            assert twin.try_acquire(k, c, now=t) == 0.0
        admissible = 0
        while admissible <= burst and twin.try_acquire(key, 1, now=now) == 0.0:
            admissible += 1
        assert decision.remaining == admissible, (
            f"remaining={decision.remaining} but {admissible} unit requests are admitted now"
        )


@settings(max_examples=100, deadline=None)
@given(cfg=limiter_configs(), extra=st.integers(1, 20), idle=st.floats(0.0, 1e6))
def test_gcra_never_admits_a_cost_above_the_burst(
    cfg: tuple[float, float, int], extra: int, idle: float
) -> None:
    rate, per, burst = cfg
    clock = FakeClock(1000.0)
    limiter = RateLimiter(rate, per, burst=burst, clock=clock)
    clock.advance(idle)
    with pytest.raises(ConfigurationError):
        limiter.decide("k", burst + extra)
    assert limiter.try_acquire("k", burst + extra) > 0.0
    assert limiter.try_acquire("k", burst) == 0.0  # and the refusal took nothing


# ====================================================================== backoff and retry
@st.composite
def backoffs(draw: st.DrawFn) -> Backoff:
    kind = draw(st.sampled_from(["exponential", "constant", "linear", "decorrelated"]))
    # (subnormal delays are left out: ``nominal / 2`` is not exact down there)
    base = draw(st.one_of(st.just(0.0), st.floats(0.0, 2.0, allow_subnormal=False)))
    cap = base + draw(st.floats(0.0, 10.0, allow_subnormal=False))
    jitter = draw(st.sampled_from(["full", "equal", "none"]))
    if kind == "exponential":
        multiplier = draw(st.one_of(st.sampled_from([1.0, 2.0, 100.0]), st.floats(1.0, 100.0)))
        return Backoff.exponential(base, cap, multiplier=multiplier, jitter=jitter)
    if kind == "constant":
        return Backoff.constant(base, jitter=jitter)
    if kind == "linear":
        increment = draw(st.floats(0.0, 3.0, allow_subnormal=False))
        return Backoff.linear(base, increment, cap, jitter=jitter)
    return Backoff.decorrelated(base, cap)


def _check_delay(backoff: Backoff, attempt: int, previous: float, delay: float) -> None:
    """Every schedule: 0 <= delay <= cap and minimum(attempt) <= delay <= nominal(attempt)."""
    assert 0.0 <= delay <= backoff.cap
    nominal = backoff.nominal(attempt)
    assert 0.0 <= nominal <= backoff.cap
    assert backoff.minimum(attempt) <= delay <= nominal
    if backoff.jitter == "full":
        assert 0.0 <= delay <= nominal
    elif backoff.jitter == "equal":
        assert nominal / 2 <= delay <= nominal
    elif backoff.jitter == "none":
        assert delay == nominal
    else:  # decorrelated: [base, cap], and at most multiplier x the previous delay
        assert backoff.base <= delay <= backoff.cap
        high = max(backoff.base, (previous or backoff.base) * backoff.multiplier)
        assert delay <= high * (1 + 1e-12)


@settings(max_examples=300, deadline=None)
@given(
    backoff=backoffs(),
    attempt=st.one_of(st.integers(1, 12), st.integers(1, 5000)),
    previous=st.one_of(st.just(0.0), st.floats(0.0, 20.0, allow_subnormal=False)),
    seed=st.integers(0, 2**32 - 1),
)
def test_backoff_delays_stay_within_bounds(
    backoff: Backoff, attempt: int, previous: float, seed: int
) -> None:
    rng = random.Random(seed)
    for _ in range(5):
        delay = backoff.delay(attempt, previous, rng)
        _check_delay(backoff, attempt, previous, delay)


errors = st.one_of(
    st.builds(ConnectionError, st.just("down")),
    st.builds(lambda hint: RateLimited("429", retry_after=hint), st.floats(0.0, 8.0)),
    st.builds(ValueError, st.just("not retriable")),
)


@settings(max_examples=300, deadline=None)
@given(
    backoff=backoffs(),
    attempts=st.integers(1, 6),
    attempt=st.integers(1, 7),
    error=errors,
    previous=st.floats(0.0, 5.0),
    total=st.none() | st.floats(0.01, 20.0),
    max_retry_after=st.sampled_from([0.0, 2.0, 60.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_retry_next_delay_is_bounded_and_fits_the_deadline(
    backoff: Backoff,
    attempts: int,
    attempt: int,
    error: BaseException,
    previous: float,
    total: float | None,
    max_retry_after: float,
    seed: int,
) -> None:
    clock = FakeClock(1000.0)
    retry = Retry(
        attempts,
        backoff=backoff,
        max_retry_after=max_retry_after,
        clock=clock,
        rng=random.Random(seed),
    )
    twin = random.Random(seed)  # the same draws, to know the backoff's own delay
    now = clock.now()
    if total is None:
        decision = retry.next_delay(attempt, error, None, previous, now)
        at = math.inf
    else:
        with deadline(total, clock=clock) as block:
            decision = retry.next_delay(attempt, error, None, previous, now)
        assert block.at is not None
        at = block.at
    hint = getattr(error, "retry_after", None)
    if isinstance(error, ValueError):
        assert getattr(decision, "reason", None) == "not_retriable"
        return
    if attempt >= attempts:
        assert getattr(decision, "reason", None) == "attempts_exhausted"
        return
    own = backoff.delay(attempt, previous, twin)
    if hint is not None and hint > max_retry_after:
        assert getattr(decision, "reason", None) == "retry_after_too_long"
        return
    expected = own if hint is None else max(own, hint)
    if now + expected >= at:
        assert getattr(decision, "reason", None) == "deadline"
        return
    assert isinstance(decision, float)
    assert decision == expected
    assert now + decision < at  # never a retry that outlasts the deadline
    if hint is None:
        _check_delay(backoff, attempt, previous, decision)
    else:
        assert decision >= hint
        assert decision <= max(backoff.cap, hint) <= max(backoff.cap, max_retry_after)


@settings(max_examples=150, deadline=None)
@given(
    backoff=backoffs(),
    attempts=st.integers(1, 8),
    total=st.floats(0.05, 30.0),
    latency=st.sampled_from([0.0, 0.0, 0.01, 0.3, 2.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_retry_pipeline_sleeps_within_bounds_and_inside_the_total_timeout(
    backoff: Backoff, attempts: int, total: float, latency: float, seed: int
) -> None:
    """Pipeline(Timeout(total), Retry(...)) around an always-failing retriable call."""
    clock = FakeClock(1000.0)
    try:
        pipe = Pipeline(
            Timeout(total, clock=clock),
            Retry(attempts, backoff=backoff, clock=clock, rng=random.Random(seed)),
        )
    except ConfigurationError:
        reject()  # the pipeline refuses retries that cannot fit: nothing to run
    starts: list[float] = []

    def down() -> None:
        starts.append(clock.now())
        clock.advance(latency)
        raise ConnectionError("down")

    t0 = clock.now()
    at = t0 + total
    with pytest.raises(ConnectionError) as caught:
        pipe.call(down)
    assert 1 <= len(starts) <= attempts
    assert len(clock.sleeps) == len(starts) - 1
    previous = 0.0
    for n, delay in enumerate(clock.sleeps, start=1):
        _check_delay(backoff, n, previous, delay)
        previous = delay
    assert all(s < at for s in starts)  # no attempt starts after the deadline
    if latency == 0.0:
        assert clock.now() - t0 < total  # total time never exceeds the total timeout
    notes = getattr(caught.value, "__notes__", [])
    assert len(notes) == 1
    if "attempts exhausted" in notes[0]:
        assert len(starts) == attempts
    else:
        assert "(deadline)" in notes[0]
        assert len(starts) < attempts


# ====================================================================== retry budget
budget_ops = st.lists(
    st.tuples(
        st.one_of(st.just(0.0), st.floats(0.0, 0.3)),  # gap, in units of ttl
        st.sampled_from(["deposit", "deposit", "withdraw", "withdraw", "withdraw"]),
    ),
    max_size=120,
)
budget_configs = st.tuples(
    st.one_of(st.sampled_from([0.0, 0.2, 1.0]), st.floats(0.0, 1.0)),  # ratio
    st.sampled_from([0.0, 0.1, 0.5, 1.0]),  # min_per_second
    st.sampled_from([1.0, 2.5, 10.0]),  # ttl
)


def _run_budget(
    cfg: tuple[float, float, float], ops: list[tuple[float, str]], start: float
) -> tuple[list[float], list[float]]:
    ratio, min_per_second, ttl = cfg
    clock = FakeClock(start)
    budget = RetryBudget(ratio, min_per_second, ttl=ttl, clock=clock)
    deposits: list[float] = []
    withdrawals: list[float] = []
    for gap, op in ops:
        clock.advance(gap * ttl)
        if op == "deposit":
            budget.deposit()
            deposits.append(clock.now())
        elif budget.try_withdraw():
            withdrawals.append(clock.now())
            assert budget.balance() >= 0.0  # a withdrawal never overdraws the window
    return deposits, withdrawals


@settings(max_examples=200, deadline=None)
@given(cfg=budget_configs, ops=budget_ops, start=st.sampled_from([0.0, 1000.0, 3.3]))
# found by hypothesis: one retry per second allowed, two taken 0.91 s apart
@example(cfg=(0.0, 1.0, 1.0), ops=[(0.09, "withdraw"), (0.91, "withdraw")], start=0.0)
def test_retry_budget_never_exceeds_its_cap_within_a_ttl_window(
    cfg: tuple[float, float, float], ops: list[tuple[float, str]], start: float
) -> None:
    """Withdrawals in any window [s, s + ttl) <= ratio x deposits + min_per_second x ttl.

    The deposits that may back a withdrawal at time w are those of (w - ttl, w]: credits
    expire after ttl. So the deposits counted for a window [s, s + ttl) are those of
    (s - ttl, s + ttl).
    """
    ratio, min_per_second, ttl = cfg
    deposits, withdrawals = _run_budget(cfg, ops, start)
    for s in withdrawals:  # a window starting at a withdrawal holds the most of them
        taken = sum(1 for w in withdrawals if s <= w < s + ttl)
        backing = sum(1 for d in deposits if s - ttl < d < s + ttl)
        assert taken <= ratio * backing + min_per_second * ttl + 1e-9, (
            f"{taken} retries in [{s}, {s + ttl}) backed by {backing} requests"
        )


@settings(max_examples=200, deadline=None)
@given(cfg=budget_configs, ops=budget_ops, start=st.sampled_from([0.0, 1000.0, 3.3]))
def test_retry_budget_cap_holds_over_nine_tenths_of_ttl(
    cfg: tuple[float, float, float], ops: list[tuple[float, str]], start: float
) -> None:
    """The bound the ten-bucket window guarantees: any window of 0.9 x ttl."""
    ratio, min_per_second, ttl = cfg
    deposits, withdrawals = _run_budget(cfg, ops, start)
    span = 0.9 * ttl * (1 - 1e-9)
    for end in withdrawals:  # a window ending at a withdrawal holds the most of them
        taken = sum(1 for w in withdrawals if end - span <= w <= end)
        backing = sum(1 for d in deposits if end - ttl < d <= end)
        assert taken <= ratio * backing + min_per_second * ttl + 1e-9


# ====================================================================== bulkhead, threads
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    limit=st.integers(1, 4),
    max_queued=st.integers(0, 6),
    queue_timeout=st.sampled_from([None, None, 0.002, 0.05]),
    workers=st.integers(2, 8),
    holds=st.lists(st.sampled_from([0.0, 0.0005, 0.002]), min_size=1, max_size=24),
)
def test_bulkhead_never_exceeds_its_limit_with_threads(
    limit: int,
    max_queued: int,
    queue_timeout: float | None,
    workers: int,
    holds: list[float],
) -> None:
    bulkhead = Bulkhead(limit, max_queued, queue_timeout=queue_timeout)
    pipe = Pipeline(bulkhead)
    lock = threading.Lock()
    inside = 0
    peak = 0
    over: list[int] = []

    def work(hold: float) -> str:
        nonlocal inside, peak
        with lock:
            inside += 1
            peak = max(peak, inside)
            if bulkhead.active > limit or inside > limit:
                over.append(inside)
        if hold:
            time.sleep(hold)  # a tiny real interleaving: the property is about threads
        with lock:
            inside -= 1
        return "ok"

    def call(hold: float) -> str:
        try:
            return pipe.call(work, hold)
        except BulkheadFull:
            return "full"

    with ThreadPoolExecutor(workers) as pool:
        outcomes = list(pool.map(call, holds))
    event(f"peak at the limit: {peak == limit}")
    event(f"some turned away: {'full' in outcomes}")
    assert not over
    assert peak <= limit
    assert bulkhead.active == 0
    assert bulkhead.queued == 0
    assert len(outcomes) == len(holds)
    if queue_timeout is None and limit + max_queued >= workers:
        assert outcomes.count("full") == 0  # room for every thread: nobody is turned away
