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
from buttress.resilience._policy import (
    AsyncLink,
    BuildContext,
    Policy,
    SyncLink,
    call_terminal,
    check_callable,
    check_int,
    check_positive,
    check_ratio,
)
from buttress.resilience._registry import registry
from buttress.telemetry import CallRejectedEvent, CircuitStateChangedEvent, Hook, emit

__all__ = ["BreakerSnapshot", "CircuitBreaker"]

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

    __slots__ = ("by_count", "calls", "failures", "inv", "n", "ring", "slow", "tick", "width")

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

    def clear(self) -> None:
        self.calls = self.failures = self.slow = 0
        if self.by_count:
            self.ring.clear()
            self.tick = 0
        else:
            self.ring[:] = [0] * (3 * self.n)  # in place: drivers hold a reference

    def add(self, now: float, failed: bool, slow: bool) -> None:
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
        "_open_until",
        "_probe_failed",
        "_probe_ok",
        "_probes_out",
        "_state",
        "_window",
        "break_duration",
        "break_multiplier",
        "clock",
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
        self._lock = threading.Lock()
        self._state: str = CLOSED
        self._gen = 0
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
    def acquire(self, now: float | None = None) -> int:
        """Ask to make a call: returns a permit (the generation) or raises `CircuitOpen`."""
        if self._state is CLOSED:
            return self._gen
        return self._acquire_slow(self.clock.now() if now is None else now)

    def _acquire_slow(self, now: float) -> int:
        change: CircuitStateChangedEvent | None = None
        with self._lock:
            state = self._state
            if state == CLOSED:
                return self._gen
            if state == OPEN:
                if now < self._open_until:
                    raise CircuitOpen(
                        f"circuit {self.name!r} is open",
                        retry_after=self._open_until - now,
                        policy=self.name,
                    )
                change = self._transition(HALF_OPEN, "break elapsed")
            # half-open: a bounded number of probes
            if self._probes_out + self._probe_ok + self._probe_failed >= self.half_open_probes:
                gen = -1
            else:
                self._probes_out += 1
                gen = self._gen
        if change is not None:
            self._emit(change)
        if gen < 0:
            raise CircuitOpen(
                f"circuit {self.name!r} is half-open and its probes are taken",
                retry_after=min(self.break_duration, 1.0),
                policy=self.name,
            )
        return gen

    def on_success(self, permit: int, elapsed: float, now: float | None = None) -> None:
        """Record a successful call made under ``permit``."""
        if permit != self._gen:
            return
        if now is None:
            now = self.clock.now()
        slow = self.slow_call_duration is not None and elapsed >= self.slow_call_duration
        change = None
        with self._lock:
            if permit != self._gen:
                return
            if self._state == CLOSED:
                self._window.add(now, False, slow)
                if slow:
                    change = self._evaluate(now)
                else:
                    self._consecutive = 0
            elif self._state == HALF_OPEN:
                change = self._probe_done(now, failed=slow)
        if change is not None:
            self._emit(change)

    def on_failure(self, permit: int, elapsed: float, now: float | None = None) -> None:
        """Record a failed call made under ``permit``."""
        if permit != self._gen:
            return
        if now is None:
            now = self.clock.now()
        slow = self.slow_call_duration is not None and elapsed >= self.slow_call_duration
        change = None
        with self._lock:
            if permit != self._gen:
                return
            if self._state == CLOSED:
                self._window.add(now, True, slow)
                self._consecutive += 1
                change = self._evaluate(now)
            elif self._state == HALF_OPEN:
                change = self._probe_done(now, failed=True)
        if change is not None:
            self._emit(change)

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
            change = self._transition(OPEN, reason)
            self._open_until = now + (duration if duration is not None else self.break_duration)
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
    def _permit(self, ctx: BuildContext) -> int:
        try:
            return self._acquire_slow(self.clock.now())
        except CircuitOpen as exc:
            ctx.emit(
                CallRejectedEvent(
                    pipeline=ctx.pipeline,
                    policy=self.name,
                    code=exc.code,
                    retry_after=exc.retry_after,
                )
            )
            raise

    def _outcome(self, permit: int, start: float, exc: BaseException | None, result: Any) -> None:
        end = self.clock.now()
        if exc is not None:
            failed = self.is_failure(exc)
        else:
            failed = self.is_failure_result is not None and self.is_failure_result(result)
        if failed:
            self.on_failure(permit, end - start, end)
        elif isinstance(exc, Rejected):
            # a local rejection (a full bulkhead, the caller's own deadline) says nothing
            # about the dependency either way: give the permit back, count nothing
            self.release(permit)
        else:
            self.on_success(permit, end - start, end)

    def _fast_path(self) -> tuple[bool, Any, Any, Any, float, int]:
        """What the drivers bind for a closed breaker's success (see ``breaker_link``).

        The common case (a time window, no slow-call tracking, no result predicate) is
        recorded inline by the link: one clock read, one lock, four integer updates.
        """
        simple = (
            self.slow_call_duration is None
            and self.is_failure_result is None
            and not self._window.by_count
        )
        w = self._window
        return simple, self._lock, w, w.ring, w.inv, w.n

    def _wrap(self, inner: SyncLink, ctx: BuildContext) -> SyncLink:
        direct = inner is call_terminal  # innermost: call fn here, one frame fewer
        now = self.clock.now
        release = self.release
        outcome = self._outcome
        on_success = self.on_success
        floor = math.floor
        simple, lock, window, ring, inv, n = self._fast_path()

        def breaker_link(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            permit = self._gen if self._state is CLOSED else self._permit(ctx)
            start = 0.0 if simple else now()
            try:
                result = fn(*args, **kwargs) if direct else inner(fn, args, kwargs)
            except Exception as exc:
                outcome(permit, start, exc, None)
                raise
            except BaseException:
                release(permit)
                raise
            if not simple:
                outcome(permit, start, None, result)
                return result
            end = now()
            tick = floor(end * inv)
            lock.acquire()
            if permit == self._gen and self._state is CLOSED:
                if tick != window.tick:
                    window._roll(tick)
                ring[(tick % n) * 3] += 1
                window.calls += 1
                self._consecutive = 0
                lock.release()
            else:
                lock.release()
                on_success(permit, 0.0, end)
            return result

        return breaker_link

    def _awrap(self, inner: AsyncLink, ctx: BuildContext) -> AsyncLink:
        direct = inner is call_terminal  # innermost: call fn here, one frame fewer
        now = self.clock.now
        release = self.release
        outcome = self._outcome
        on_success = self.on_success
        floor = math.floor
        simple, lock, window, ring, inv, n = self._fast_path()

        async def breaker_link(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            permit = self._gen if self._state is CLOSED else self._permit(ctx)
            start = 0.0 if simple else now()
            try:
                result = await (fn(*args, **kwargs) if direct else inner(fn, args, kwargs))
            except Exception as exc:
                outcome(permit, start, exc, None)
                raise
            except BaseException:
                release(permit)
                raise
            if not simple:
                outcome(permit, start, None, result)
                return result
            end = now()
            tick = floor(end * inv)
            lock.acquire()
            if permit == self._gen and self._state is CLOSED:
                if tick != window.tick:
                    window._roll(tick)
                ring[(tick % n) * 3] += 1
                window.calls += 1
                self._consecutive = 0
                lock.release()
            else:
                lock.release()
                on_success(permit, 0.0, end)
            return result

        return breaker_link
