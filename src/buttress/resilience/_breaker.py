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

The window of outcomes and the default failure predicate live in ``_breaker_window.py``;
the drivers, in ``_drivers_async.py``; the fleet-wide sharing, in ``_fleet_breaker.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Final

from buttress._clock import SYSTEM_CLOCK, Clock
from buttress.errors import CircuitOpen, ConfigurationError, ErrorCode, Rejected
from buttress.resilience import _drivers_async, _drivers_sync
from buttress.resilience._breaker_window import (
    BreakerSnapshot,
    BreakerWindow,
    default_is_failure,
)
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

__all__ = ["BreakerSnapshot", "CircuitBreaker", "default_is_failure"]

CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half_open"


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
        self._window = BreakerWindow(
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
        left = self.open_for(now)
        if left:
            raise self.rejection(ctx, left)
        return self._acquire_slow(now, ctx)

    def open_for(self, now: float) -> float:
        """Seconds the breaker stays open after ``now``, when it rejects every call then.

        0.0 when `acquire` might let a call through: closed, half-open, or a break that
        has elapsed (the next `acquire` moves it to half-open). No lock, no state change:
        with `rejection`, what a pipeline uses to reject a call up front.
        """
        if self._state is OPEN:
            left = self._open_until - now
            if left > 0:
                return left
        return 0.0

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
            raise self.rejection(ctx, self._open_until - now)
        if gen == -1:
            raise self.rejection(
                ctx,
                min(self.break_duration, 1.0),
                f"circuit {self.name!r} is half-open and its probes are taken",
            )
        return gen

    def rejection(
        self, ctx: BuildContext | None, retry_after: float, text: str | None = None
    ) -> CircuitOpen:
        """The `CircuitOpen` to raise (``text``: default "circuit ... is open").

        Reports a `CallRejectedEvent` to ``ctx``'s hooks (the pipeline asking), if any.
        """
        if ctx is not None and ctx.listening:
            ctx.emit(
                CallRejectedEvent(
                    pipeline=ctx.pipeline,
                    policy=self.name,
                    code=ErrorCode.CIRCUIT_OPEN,
                    retry_after=retry_after,
                )
            )
        return CircuitOpen.by_policy(self.name, text or self._open_text, retry_after)

    def on_success(self, permit: int, elapsed: float = 0.0, now: float | None = None) -> None:
        """Record a successful call made under ``permit`` that took ``elapsed`` seconds."""
        if now is None:
            now = self.clock.now()
        slow_after = self.slow_call_duration
        # closed, not slow, in the window's current bucket: counted without the lock (one
        # increment, see `BreakerWindow.try_success`); a success never changes the state
        if (
            permit == self.closed_permit >= 0  # (-1: not closed)
            and (slow_after is None or elapsed < slow_after)
            and self._window.try_success(now)
        ):
            self._consecutive = 0
            return
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
