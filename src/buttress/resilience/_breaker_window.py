"""What a `CircuitBreaker` counts and reports: its window, its failures, its snapshot.

`default_is_failure` decides which exceptions say the dependency is unwell.
`BreakerWindow` is the sliding window of outcomes a closed breaker judges: time-based, in
ten buckets, or count-based, a ring of the last ``n`` calls. It is not thread-safe by
itself: the breaker calls it under its lock, but for `try_success`, the closed breaker's
hot path, which counts a success with one increment when it falls in the current bucket
(as `RetryBudget.deposit` counts a request). `BreakerSnapshot` is the consistent view a
breaker gives of its state and window, for health checks and dashboards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from buttress.errors import DeadlineExceeded, ErrorCode, Rejected, classify

__all__ = ["BreakerSnapshot", "BreakerWindow", "default_is_failure"]

_floor = math.floor


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


class BreakerWindow:
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

    def try_success(self, now: float) -> bool:
        """Count one success that was not slow if ``now`` is in the current bucket.

        False when it is not (or the window counts calls): then `record_success`, under
        the breaker's lock, moves the window. Safe without the lock: a bucket the window
        is moving past keeps the count until it expires, as it would have a moment
        earlier, and a success that races a state change lands in a window the change
        clears anyway.
        """
        if self.by_count or _floor(now * self.inv) != self.tick:
            return False
        self.ring[self.slot] += 1
        self.calls += 1
        return True

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
