"""`RetryBudget`: cap retries to a share of recent requests.

So a fleet cannot amplify an outage (Finagle's ``RetryBudget``: retries <= 20 % of
requests + 10/s, credits expire after 10 s).

Counts live in a ring of ticks (a tenth of ``ttl`` each): a request deposits with one
increment, a retry sums the ring under a lock when it asks for a credit.
"""

from __future__ import annotations

import math
import threading

from buttress._clock import SYSTEM_CLOCK, Clock
from buttress.resilience._policy import check_positive, check_ratio

__all__ = ["RetryBudget"]

_floor = math.floor

# RetryBudget's ring: ticks per ttl (ten), plus one: withdrawals are summed over all eleven
# (a span >= ttl), deposits over ten
_RING = 11


class RetryBudget:
    """Cap retries to a share of recent requests, so a fleet cannot amplify an outage.

    Every call deposits ``ratio`` of a credit; every retry withdraws one. A call counts
    when it enters the `Retry`, whatever becomes of it: one that an open breaker inside
    the retry rejects counts too (also when the `Pipeline` answers that rejection up
    front, without entering the retry's link). Credits expire after ``ttl`` seconds.
    ``min_per_second`` retries per second are always allowed, so low-traffic callers can
    still retry. (Finagle's ``RetryBudget``.) One budget may be shared by many `Retry`
    policies to cap a whole dependency.

    Args:
        ratio: retries allowed per request, in (0, 1] (default 0.2 = 20 %).
        min_per_second: retries always allowed per second (default 10).
        ttl: how long a deposit counts, in seconds (default 10).
        clock: time source.

    Example::

        budget = RetryBudget(ratio=0.2, min_per_second=10)
        Retry(attempts=3, budget=budget)
    """

    __slots__ = (
        "_deposits",
        "_inv",
        "_lock",
        "_tick",
        "_withdrawals",
        "clock",
        "min_per_second",
        "ratio",
        "ttl",
    )

    _N = 10  # ticks per ttl

    def __init__(
        self,
        ratio: float = 0.2,
        min_per_second: float = 10.0,
        *,
        ttl: float = 10.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.ratio = check_ratio("RetryBudget", "ratio", ratio, allow_zero=True)
        self.min_per_second = check_positive(
            "RetryBudget", "min_per_second", min_per_second, allow_zero=True
        )
        self.ttl = check_positive("RetryBudget", "ttl", ttl)
        self.clock = clock
        self._inv = self._N / self.ttl  # ticks per second; a tick is ttl / 10
        self._lock = threading.Lock()
        # counts per tick in a ring; totals are summed when a retry asks (rarely), so the
        # per-request deposit is one increment and never drifts
        self._deposits = [0] * _RING
        self._withdrawals = [0] * _RING
        self._tick = _floor(clock.now() * self._inv)

    def _roll(self, tick: int) -> None:
        """Clear the ticks that expired since the last one seen (lock held)."""
        last = self._tick
        if tick <= last:
            return
        ring = _RING
        for t in range(last + 1, min(tick, last + ring) + 1):
            self._deposits[t % ring] = 0
            self._withdrawals[t % ring] = 0
        self._tick = tick

    def advance(self, tick: int) -> None:
        """Move the window to ``tick`` (``floor(now * 10 / ttl)``), expiring old counts."""
        with self._lock:
            self._roll(tick)

    def deposit(self, now: float | None = None) -> None:
        """Record one request (the hot path: one increment, a lock only once per tick)."""
        tick = _floor((self.clock.now() if now is None else now) * self._inv)
        if tick != self._tick:
            self.advance(tick)
        self._deposits[tick % _RING] += 1

    def _allowed(self, tick: int) -> float:
        # requests of the last ttl only (the eleventh, oldest tick is already too old)
        recent = sum(self._deposits) - self._deposits[(tick + 1) % _RING]
        return self.ratio * recent + self.min_per_second * self.ttl

    def try_withdraw(self, now: float | None = None) -> bool:
        """Take one retry credit; False when the budget is spent."""
        tick = _floor((self.clock.now() if now is None else now) * self._inv)
        with self._lock:
            self._roll(tick)
            # retries of the last eleven ticks: a span of at least ttl, so no ttl-long
            # window ever holds more than the cap
            if sum(self._withdrawals) + 1 > self._allowed(tick):
                return False
            self._withdrawals[tick % _RING] += 1
            return True

    def balance(self, now: float | None = None) -> float:
        """Retries still allowed in the current window."""
        tick = _floor((self.clock.now() if now is None else now) * self._inv)
        with self._lock:
            self._roll(tick)
            return self._allowed(tick) - sum(self._withdrawals)

    def __repr__(self) -> str:
        return (
            f"RetryBudget(ratio={self.ratio!r}, min_per_second={self.min_per_second!r}, "
            f"ttl={self.ttl!r})"
        )
