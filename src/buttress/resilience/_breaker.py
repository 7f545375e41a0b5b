"""`CircuitBreaker`: stop calling a dependency that is failing, probe it, and come back.

States and transitions (resilience4j and Polly semantics, with their known bugs fixed):

* **closed**: calls pass. Outcomes are counted in a sliding window (time-based, in ten
  buckets, or count-based). The breaker opens when, with at least ``minimum_calls`` in the
  window, the failure rate reaches ``failure_rate`` or the slow-call rate reaches
  ``slow_call_rate``, or, whatever the traffic, after ``consecutive_failures`` failures in
  a row (so a low-traffic dependency still trips).
* **open**: calls are rejected with `CircuitOpen` (``retry_after`` = time left) for
  ``break_duration`` (growing by ``break_multiplier`` on each re-open, up to
  ``max_break_duration``).
* **half-open**: ``half_open_probes`` trial calls are let through (a cancelled probe gives
  its slot back). As soon as the failed probes reach ``failure_rate`` of them the breaker
  re-opens; when all have finished below that rate it closes (resilience4j's rule; with
  the default of one probe: a success closes, a failure re-opens).

Every transition starts a new *generation*. A permit carries the generation it was issued
in, and an outcome from an older generation is ignored, so a slow success that started
before the breaker opened can never close it. Cancellation (`asyncio.CancelledError`,
`KeyboardInterrupt`) is never a failure: it only gives the permit back.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from buttress._clock import SYSTEM_CLOCK, Clock
from buttress.errors import (
    CircuitOpen,
    ConfigurationError,
    DeadlineExceeded,
    ErrorCode,
    Rejected,
    classify,
)
from buttress.resilience import _drivers_async, _drivers_sync
from buttress.resilience._policy import (
    AsyncLink,
    BuildContext,
    Policy,
    SyncLink,
    check_callable,
    check_int,
    check_positive,
    check_ratio,
)
from buttress.resilience._registry import registry
from buttress.telemetry import CallRejectedEvent, CircuitStateChangedEvent, Hook, emit

__all__ = ["BreakerSnapshot", "CircuitBreaker"]

_floor = math.floor

CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half_open"


def default_is_failure(exc: BaseException) -> bool:
    """The default failure predicate.

    A failure is what says the dependency is unwell: timeouts, connection errors, 5xx,
    unknown errors. Client errors (a 404, a validation error) and local rejections (a full
    bulkhead, a rate limit) are not the dependency's fault and do not count.
    """
    if isinstance(exc, Rejected):
        if not isinstance(exc, DeadlineExceeded):
            return False
        if exc.code is ErrorCode.DEADLINE_EXCEEDED:
            return False  # the caller's own deadline ran out: not the dependency's fault
    info = classify(exc)
    return info is not None and not info.code.is_client_error


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """A consistent view of a breaker, for health checks and dashboards."""

    name: str
    state: str
    generation: int
    calls: int
    failures: int
    slow_calls: int
    failure_rate: float
    consecutive_failures: int
    open_remaining: float


class _Window:
    """Sliding window of outcomes: time-based (ten buckets) or count-based (a ring)."""

    __slots__ = (
        "by_count",
        "calls",
        "failures",
        "inv",
        "n",
        "ring",
        "slot",
        "slow",
        "tick",
        "width",
    )

    def __init__(self, *, seconds: float | None, count: int | None, now: float) -> None:
        self.calls = self.failures = self.slow = 0
        if count is not None:
            self.by_count = True
            self.n = count
            self.ring: list[int] = []  # bit 0 failure, bit 1 slow; used as a circular buffer
            self.tick = 0  # next write position once the ring is full
            self.width = self.inv = 0.0
        else:
            assert seconds is not None  # noqa: S101 - narrowed by the caller
            self.by_count = False
            self.n = 10
            self.width = seconds / self.n
            self.inv = 1.0 / self.width
            self.ring = [0] * (3 * self.n)  # per bucket: calls, failures, slow
            self.tick = math.floor(now * self.inv)
        self.slot = (self.tick % self.n) * 3  # the current bucket's calls in the ring

    def clear(self) -> None:
        self.calls = self.failures = self.slow = 0
        if self.by_count:
            self.ring.clear()
            self.tick = 0
        else:
            self.ring[:] = [0] * (3 * self.n)

    def record_success(self, now: float) -> None:
        """Count one success that was not slow (the hot path of a closed breaker)."""
        if self.by_count:
            self.record(now, False, False)
            return
        tick = _floor(now * self.inv)
        if tick == self.tick:
            self.ring[self.slot] += 1
        else:
            self._roll(tick)
            self.ring[(tick % self.n) * 3] += 1
        self.calls += 1

    def record_failure(self, now: float, slow: bool) -> None:
        """Count one failure (``slow``: it was a slow call too)."""
        self.record(now, True, slow)

    def record(self, now: float, failed: bool, slow: bool) -> None:
        """Count one outcome."""
        ring = self.ring
        if self.by_count:
            code = (1 if failed else 0) | (2 if slow else 0)
            if len(ring) < self.n:
                ring.append(code)
            else:
                old = ring[self.tick]
                self.calls -= 1
                self.failures -= old & 1
                self.slow -= (old >> 1) & 1
                ring[self.tick] = code
                self.tick = (self.tick + 1) % self.n
        else:
            tick = math.floor(now * self.inv)
            if tick != self.tick:
                self._roll(tick)
            i = (tick % self.n) * 3
            ring[i] += 1
            if failed:
                ring[i + 1] += 1
            if slow:
                ring[i + 2] += 1
        self.calls += 1
        if failed:
            self.failures += 1
        if slow:
            self.slow += 1

    def _roll(self, tick: int) -> None:
        last = self.tick
        if tick < last:  # clock went backwards (never with a monotonic clock): keep counting
            return
        ring = self.ring
        if tick - last >= self.n:
            self.clear()
        else:
            for t in range(last + 1, tick + 1):
                i = (t % self.n) * 3
                self.calls -= ring[i]
                self.failures -= ring[i + 1]
                self.slow -= ring[i + 2]
                ring[i] = ring[i + 1] = ring[i + 2] = 0
        self.tick = tick
        self.slot = (tick % self.n) * 3

    def expire(self, now: float) -> None:
        if not self.by_count:
            tick = math.floor(now * self.inv)
            if tick != self.tick:
                self._roll(tick)


class CircuitBreaker(Policy):
    """Fail fast while a dependency is failing; probe it; close when it recovers.

    Args:
        failure_rate: open when failures / calls in the window reach this (default 0.5).
        minimum_calls: calls needed in the window before rates are judged (default 20).
        window: the sliding window in seconds (default 30), time-based.
        window_calls: use a count-based window of this many calls instead.
        consecutive_failures: open after this many failures in a row whatever the traffic
            (default 5; None disables).
        slow_call_duration: calls slower than this count as slow (default None: off).
        slow_call_rate: open when slow calls / calls reach this (default 1.0).
        break_duration: how long to stay open before probing (default 5 s).
        break_multiplier: factor applied to the break on each consecutive re-open
            (default 1: constant).
        max_break_duration: cap for the growing break (default 300 s).
        half_open_probes: trial calls let through when half-open; the breaker closes when
            their failure rate stays under ``failure_rate`` (default 1: one success closes).
        is_failure: predicate on exceptions (default: `default_is_failure`).
        is_failure_result: predicate on results that count as failures (e.g. HTTP 503).
        name: label for events, metrics and the registry (named breakers are listed by
            `buttress.resilience.registry` for health checks).
        clock: time source.
        hooks: extra event hooks for this breaker's state changes.

    Attributes:
        closed_permit: while the breaker is closed, the permit `acquire` would return
            (the generation); -1 otherwise. One read, for drivers on the hot path; the
            breaker alone writes it.

    Example::

        breaker = CircuitBreaker(failure_rate=0.5, minimum_calls=20, window=30.0,
                                 break_duration=5.0, name="payments")
        Pipeline(breaker).call(charge, order)
    """

    __slots__ = (
        "__weakref__",
        "_breaks",
        "_consecutive",
        "_gen",
        "_hooks",
        "_lock",
        "_open_text",
        "_open_until",
        "_probe_failed",
        "_probe_ok",
        "_probes_out",
        "_state",
        "_window",
        "break_duration",
        "break_multiplier",
        "clock",
        "closed_permit",
        "consecutive_failures",
        "failure_rate",
        "half_open_probes",
        "is_failure",
        "is_failure_result",
        "max_break_duration",
        "minimum_calls",
        "slow_call_duration",
        "slow_call_rate",
        "window",
        "window_calls",
    )
    kind = "circuit_breaker"

    def __init__(
        self,
        *,
        failure_rate: float = 0.5,
        minimum_calls: int = 20,
        window: float = 30.0,
        window_calls: int | None = None,
        consecutive_failures: int | None = 5,
        slow_call_duration: float | None = None,
        slow_call_rate: float = 1.0,
        break_duration: float = 5.0,
        break_multiplier: float = 1.0,
        max_break_duration: float = 300.0,
        half_open_probes: int = 1,
        is_failure: Callable[[BaseException], bool] | None = None,
        is_failure_result: Callable[[Any], bool] | None = None,
        name: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
        hooks: tuple[Hook, ...] | list[Hook] = (),
    ) -> None:
        super().__init__(name)
        owner = "CircuitBreaker"
        self.failure_rate = check_ratio(owner, "failure_rate", failure_rate)
        self.minimum_calls = check_int(owner, "minimum_calls", minimum_calls, minimum=1)
        self.window = check_positive(owner, "window", window)
        self.window_calls = (
            None
            if window_calls is None
            else check_int(owner, "window_calls", window_calls, minimum=1)
        )
        if self.window_calls is not None and self.window_calls < self.minimum_calls:
            raise ConfigurationError(
                f"{owner}(window_calls={window_calls!r}): must be >= minimum_calls "
                f"({minimum_calls}), or the failure rate could never be judged"
            )
        self.consecutive_failures = (
            None
            if consecutive_failures is None
            else check_int(owner, "consecutive_failures", consecutive_failures, minimum=1)
        )
        self.slow_call_duration = (
            None
            if slow_call_duration is None
            else check_positive(owner, "slow_call_duration", slow_call_duration)
        )
        self.slow_call_rate = check_ratio(owner, "slow_call_rate", slow_call_rate)
        self.break_duration = check_positive(owner, "break_duration", break_duration)
        if (
            isinstance(break_multiplier, bool)
            or not isinstance(break_multiplier, int | float)
            or not (1.0 <= break_multiplier <= 100.0)
        ):
            raise ConfigurationError(
                f"{owner}(break_multiplier={break_multiplier!r}): must be a number in [1, 100]"
            )
        self.break_multiplier = float(break_multiplier)
        self.max_break_duration = check_positive(owner, "max_break_duration", max_break_duration)
        if self.max_break_duration < self.break_duration:
            raise ConfigurationError(
                f"{owner}(max_break_duration={max_break_duration!r}): must be >= break_duration "
                f"({break_duration!r})"
            )
        self.half_open_probes = check_int(owner, "half_open_probes", half_open_probes, minimum=1)
        check_callable(owner, "is_failure", is_failure)
        check_callable(owner, "is_failure_result", is_failure_result)
        self.is_failure = is_failure or default_is_failure
        self.is_failure_result = is_failure_result
        self.clock = clock
        self._hooks = tuple(hooks)
        self._open_text = f"circuit {self.name!r} is open"
        self._lock = threading.Lock()
        self._state: str = CLOSED
        self._gen = 0
        self.closed_permit = 0
        self._open_until = 0.0
        self._breaks = 0
        self._probes_out = 0
        self._probe_ok = 0
        self._probe_failed = 0
        self._consecutive = 0
        self._window = _Window(
            seconds=None if self.window_calls is not None else self.window,
            count=self.window_calls,
            now=clock.now(),
        )
        if name is not None:
            registry.add_breaker(self)

    def __repr__(self) -> str:
        return f"CircuitBreaker(name={self.name!r}, state={self._state!r})"

    # ------------------------------------------------------------ inspection
    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half_open`` (an expired open reads as half-open)."""
        state = self._state
        if state == OPEN and self.clock.now() >= self._open_until:
            return HALF_OPEN
        return state

    @property
    def generation(self) -> int:
        """Bumped on every transition; permits from older generations are ignored."""
        return self._gen

    def snapshot(self) -> BreakerSnapshot:
        """A consistent view of the breaker's state and window."""
        now = self.clock.now()
        with self._lock:
            w = self._window
            w.expire(now)
            state = self._state
            remaining = max(self._open_until - now, 0.0) if state == OPEN else 0.0
            if state == OPEN and remaining == 0.0:
                state = HALF_OPEN
            return BreakerSnapshot(
                name=self.name,
                state=state,
                generation=self._gen,
                calls=w.calls,
                failures=w.failures,
                slow_calls=w.slow,
                failure_rate=(w.failures / w.calls) if w.calls else 0.0,
                consecutive_failures=self._consecutive,
                open_remaining=remaining,
            )

    # ------------------------------------------------------------ permission protocol
    def acquire(self, now: float | None = None, ctx: BuildContext | None = None) -> int:
        """Ask to make a call: returns a permit (the generation) or raises `CircuitOpen`.

        ``ctx``: the pipeline asking, whose hooks hear of a rejection (`CallRejectedEvent`).
        A closed breaker answers with two reads, an open one without taking the lock.
        """
        permit = self.closed_permit
        if permit >= 0:
            return permit
        if now is None:
            now = self.clock.now()
        if self._state is OPEN:
            until = self._open_until
            if now < until:
                raise self._rejected(ctx, self._open_text, until - now)
        return self._acquire_slow(now, ctx)

    def _acquire_slow(self, now: float, ctx: BuildContext | None) -> int:
        change: CircuitStateChangedEvent | None = None
        gen = -1
        with self._lock:
            state = self._state
            if state == CLOSED:
                return self._gen
            if state == OPEN:
                if now < self._open_until:
                    gen = -2
                else:
                    change = self._transition(HALF_OPEN, "break elapsed")
                    state = HALF_OPEN
            if state == HALF_OPEN:  # a bounded number of probes
                if self._probes_out + self._probe_ok + self._probe_failed >= self.half_open_probes:
                    gen = -1
                else:
                    self._probes_out += 1
                    gen = self._gen
        if change is not None:
            self._emit(change)
        if gen == -2:
            raise self._rejected(ctx, self._open_text, self._open_until - now)
        if gen == -1:
            raise self._rejected(
                ctx,
                f"circuit {self.name!r} is half-open and its probes are taken",
                min(self.break_duration, 1.0),
            )
        return gen

    def _rejected(self, ctx: BuildContext | None, text: str, retry_after: float) -> CircuitOpen:
        if ctx is not None and ctx.listening:
            ctx.emit(
                CallRejectedEvent(
                    pipeline=ctx.pipeline,
                    policy=self.name,
                    code=ErrorCode.CIRCUIT_OPEN,
                    retry_after=retry_after,
                )
            )
        return CircuitOpen.by_policy(self.name, text, retry_after)

    def on_success(self, permit: int, elapsed: float = 0.0, now: float | None = None) -> None:
        """Record a successful call made under ``permit`` that took ``elapsed`` seconds."""
        if now is None:
            now = self.clock.now()
        slow_after = self.slow_call_duration
        lock = self._lock
        lock.acquire()  # not `with`: the hot path of every call (a `with` costs twice as much)
        if (
            permit == self._gen
            and self._state is CLOSED
            and (slow_after is None or elapsed < slow_after)
        ):
            self._window.record_success(now)
            self._consecutive = 0
            lock.release()
            return
        try:
            if permit != self._gen:
                return
            slow = slow_after is not None and elapsed >= slow_after
            change = None
            state = self._state
            if state is CLOSED:  # a slow success
                self._window.record(now, False, True)
                change = self._evaluate(now)
            elif state is HALF_OPEN:
                change = self._probe_done(now, failed=slow)
        finally:
            lock.release()
        if change is not None:
            self._emit(change)

    def on_failure(self, permit: int, elapsed: float = 0.0, now: float | None = None) -> None:
        """Record a failed call made under ``permit`` that took ``elapsed`` seconds."""
        if permit != self._gen:
            return
        if now is None:
            now = self.clock.now()
        slow = self.slow_call_duration is not None and elapsed >= self.slow_call_duration
        change = None
        with self._lock:
            if permit != self._gen:
                return
            state = self._state
            if state is CLOSED:
                self._window.record_failure(now, slow)
                self._consecutive += 1
                change = self._evaluate(now)
            elif state is HALF_OPEN:
                change = self._probe_done(now, failed=True)
        if change is not None:
            self._emit(change)

    def record_error(self, permit: int, error: BaseException, start: float = 0.0) -> None:
        """Record that the call made under ``permit`` (started at ``start``) raised ``error``.

        ``is_failure`` decides: a failure counts against the dependency; a local rejection
        (a full bulkhead, the caller's own deadline) says nothing about it either way and
        only gives the permit back; anything else (a client error) is a success.
        """
        now = self.clock.now()
        if self.is_failure(error):
            self.on_failure(permit, now - start, now)
        elif isinstance(error, Rejected):
            self.release(permit)
        else:
            self.on_success(permit, now - start, now)

    def record_result(self, permit: int, result: Any, start: float = 0.0) -> None:
        """Record that the call made under ``permit`` (started at ``start``) returned ``result``."""
        now = self.clock.now()
        predicate = self.is_failure_result
        if predicate is not None and predicate(result):
            self.on_failure(permit, now - start, now)
        else:
            self.on_success(permit, now - start, now)

    def release(self, permit: int) -> None:
        """Give a permit back without an outcome (cancellation, ignored errors)."""
        if permit != self._gen or self._state is CLOSED:
            return
        with self._lock:
            if permit == self._gen and self._state == HALF_OPEN and self._probes_out > 0:
                self._probes_out -= 1

    # ------------------------------------------------------------ manual control
    def force_open(
        self,
        duration: float | None = None,
        *,
        reason: str = "forced open",
        generation: int | None = None,
    ) -> int | None:
        """Open now (for ``duration`` seconds, default ``break_duration``).

        ``reason`` goes into the state-change event. With ``generation``, act only if the
        breaker is still in that generation (an atomic compare-and-set, for controllers
        such as `SharedBreakerState`). Returns the new generation, or None when nothing
        was done.
        """
        now = self.clock.now()
        with self._lock:
            if generation is not None and generation != self._gen:
                return None
            self._open_until = now + (duration if duration is not None else self.break_duration)
            change = self._transition(OPEN, reason)
        self._emit(change)
        return change.generation

    def reset(self, *, reason: str = "reset", generation: int | None = None) -> int | None:
        """Close now and forget the window (``reason``, ``generation``: as `force_open`)."""
        with self._lock:
            if generation is not None and generation != self._gen:
                return None
            self._breaks = 0
            change = self._transition(CLOSED, reason)
        self._emit(change)
        return change.generation

    # ------------------------------------------------------------ internals (lock held)
    def _probe_done(self, now: float, *, failed: bool) -> CircuitStateChangedEvent | None:
        """A half-open probe finished: reopen, close, or wait for the other probes."""
        self._probes_out -= 1
        if failed:
            self._probe_failed += 1
        else:
            self._probe_ok += 1
        n = self.half_open_probes
        if self._probe_failed / n >= self.failure_rate:
            return self._open(now, f"{self._probe_failed} of {n} probes failed")
        if self._probe_ok + self._probe_failed >= n:
            self._breaks = 0
            return self._transition(CLOSED, f"{self._probe_ok} of {n} probes succeeded")
        return None

    def _evaluate(self, now: float) -> CircuitStateChangedEvent | None:
        if self.consecutive_failures is not None and self._consecutive >= self.consecutive_failures:
            return self._open(now, f"{self._consecutive} consecutive failures")
        w = self._window
        if w.calls >= self.minimum_calls:
            if w.failures / w.calls >= self.failure_rate:
                return self._open(now, f"failure rate {w.failures}/{w.calls}")
            if self.slow_call_duration is not None and w.slow / w.calls >= self.slow_call_rate:
                return self._open(now, f"slow-call rate {w.slow}/{w.calls}")
        return None

    def _open(self, now: float, reason: str) -> CircuitStateChangedEvent:
        duration = min(
            self.break_duration * self.break_multiplier**self._breaks, self.max_break_duration
        )
        self._breaks += 1
        self._open_until = now + duration
        return self._transition(OPEN, reason)

    def _transition(self, to: str, reason: str) -> CircuitStateChangedEvent:
        before = self._state
        self._state = to
        self._gen += 1
        self.closed_permit = self._gen if to == CLOSED else -1
        self._probes_out = 0
        self._probe_ok = 0
        self._probe_failed = 0
        self._consecutive = 0
        self._window.clear()  # every state counts from scratch (the event says why it moved)
        return CircuitStateChangedEvent(
            policy=self.name, from_state=before, to_state=to, generation=self._gen, reason=reason
        )

    def _emit(self, event: CircuitStateChangedEvent) -> None:
        emit(event, self._hooks)

    # ------------------------------------------------------------ drivers
    def wrap(self, inner: SyncLink, ctx: BuildContext) -> SyncLink:
        """The thread link (generated from the asyncio one)."""
        return _drivers_sync.breaker_link(self, inner, ctx)

    def awrap(self, inner: AsyncLink, ctx: BuildContext) -> AsyncLink:
        """The asyncio link (see ``_drivers_async.breaker_link``)."""
        return _drivers_async.breaker_link(self, inner, ctx)
