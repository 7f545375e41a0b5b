"""`RateLimiter`: GCRA (the generic cell rate algorithm), in memory, per key, with burst.

GCRA keeps one number per key, the theoretical arrival time (TAT). With emission interval
``T = per / rate`` and burst ``B``, a request of cost ``n`` at time ``now`` is admitted when
``max(TAT, now) + n*T - B*T <= now``, and then ``TAT = max(TAT, now) + n*T``. In any interval
of length ``t`` at most ``B + t / T`` requests are admitted, the answer needs no timer,
and ``Retry-After`` is exact: the state only moves forward, so a denied key stays denied
until exactly ``retry_after`` has passed. The shared stores run the same algorithm (in Redis,
as one Lua script).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from buttress._clock import SYSTEM_CLOCK, Clock
from buttress.errors import ConfigurationError, RateLimited
from buttress.resilience._deadline import _DEADLINE
from buttress.resilience._policy import (
    AsyncLink,
    BuildContext,
    Policy,
    SyncLink,
    check_callable,
    check_int,
    check_positive,
)
from buttress.telemetry import CallRejectedEvent

__all__ = ["RateDecision", "RateLimiter"]

# Floating-point slack: sums of emission intervals differ from their products by a few ulps,
# and an ulp of a monotonic reading grows with uptime (1e-9 s at ~48 days). The slack is a
# nanosecond plus a few ulps of ``now``: far below any clock's resolution, and it keeps
# "exactly on time" requests admitted at any uptime.
_EPSILON = 1e-9
_ULPS = 8 * 2.0**-52
_SCALE = 1.0 + _ULPS  # now * _SCALE + _EPSILON == now + _slack(now)


def _slack(now: float) -> float:
    return now * _ULPS + _EPSILON


@dataclass(frozen=True, slots=True)
class RateDecision:
    """The full answer of a limiter, for response headers.

    Attributes:
        allowed: whether the request was admitted (and counted).
        limit: the burst size ``B``.
        remaining: requests that could still be admitted right now.
        retry_after: seconds until this request could be admitted (0 when allowed).
        reset_after: seconds until the key is back to a full burst.
    """

    allowed: bool
    limit: int
    remaining: int
    retry_after: float
    reset_after: float


class RateLimiter(Policy):
    """Admit at most ``rate`` requests per ``per`` seconds per key, with bursts of ``burst``.

    Args:
        rate: requests per period, > 0.
        per: the period in seconds (default 1).
        burst: requests admitted at once from idle (default ``max(1, ceil(rate))``).
        key: in a pipeline, a function of the call's arguments returning the key to limit
            (default: one key for every call).
        max_wait: in a pipeline, wait up to this long for a permit instead of raising
            `RateLimited` (default 0: never wait). Waiting reserves the slot, so waiters
            are served in order and the limit holds.
        max_keys: keys kept in memory before expired ones are swept (default 100,000);
            past that, the least recently created keys are dropped.
        name: label for events and metrics.
        clock: time source.

    Example::

        per_user = RateLimiter(100, per=60.0, burst=20)
        if not per_user.allow(user_id):
            ...
        Pipeline(RateLimiter(50), Retry()).call(fn)   # outbound: at most 50 calls/s
    """

    __slots__ = (
        "_interval",
        "_lock",
        "_now",
        "_offset",
        "_sweep_at",
        "_tats",
        "_tau",
        "burst",
        "clock",
        "key",
        "max_keys",
        "max_wait",
        "per",
        "rate",
    )
    kind = "rate_limiter"

    def __init__(
        self,
        rate: float,
        per: float = 1.0,
        *,
        burst: int | None = None,
        key: Callable[..., Hashable] | None = None,
        max_wait: float = 0.0,
        max_keys: int = 100_000,
        name: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__(name)
        self.rate = check_positive("RateLimiter", "rate", rate)
        self.per = check_positive("RateLimiter", "per", per)
        if burst is None:
            burst = max(1, math.ceil(self.rate))
        self.burst = check_int("RateLimiter", "burst", burst, minimum=1)
        check_callable("RateLimiter", "key", key)
        self.key = key
        self.max_wait = check_positive("RateLimiter", "max_wait", max_wait, allow_zero=True)
        self.max_keys = check_int("RateLimiter", "max_keys", max_keys, minimum=1)
        self.clock = clock
        self._interval = self.per / self.rate
        self._tau = self._interval * self.burst
        self._offset = self._tau + _EPSILON
        self._now = clock.now
        self._lock = threading.Lock()
        self._tats: dict[Hashable, float] = {}
        self._sweep_at = self.max_keys

    def __repr__(self) -> str:
        return f"RateLimiter(rate={self.rate!r}, per={self.per!r}, burst={self.burst})"

    # ------------------------------------------------------------ decisions
    def try_acquire(self, key: Hashable = None, cost: int = 1, now: float | None = None) -> float:
        """Admit one request of ``cost``: 0.0 when admitted, else seconds to wait.

        The fastest form: one lock, one dict lookup, no allocation. A ``cost`` above the
        burst can never be admitted: the answer is ``math.inf``.
        """
        if now is None:
            now = self.clock.now()
        if cost > self.burst:
            return math.inf  # larger than the burst: can never be admitted
        increment = self._interval * cost
        tats = self._tats
        limit = now * _SCALE + self._offset  # now + slack(now) + tau
        # A key's TAT only moves forward, so a denial read without the lock is as exact as
        # one read with it: an over-limit key costs no lock at all (cheaper under abuse).
        tat = tats.get(key, now)
        if tat + increment > limit and tat > now:
            return tat + increment - self._tau - now
        lock = self._lock
        lock.acquire()
        old = tats.get(key)
        new_tat = (now if old is None or old < now else old) + increment
        if new_tat > limit:
            lock.release()
            return new_tat - self._tau - now
        tats[key] = new_tat
        if old is None and len(tats) > self._sweep_at:  # only a new key can grow the dict
            self._sweep(now)
        lock.release()
        return 0.0

    def allow(self, key: Hashable = None, cost: int = 1) -> bool:
        """Admit one request for ``key`` and count it; False when over the limit.

        `try_acquire` with the answer reduced to a bool, written out in full: this is the
        call a per-request limiter makes, and a delegating call would cost a fifth of it.
        """
        now = self._now()
        if cost == 1:
            increment = self._interval
        elif cost > self.burst:
            return False
        else:
            increment = self._interval * cost
        tats = self._tats
        limit = now * _SCALE + self._offset  # now + slack(now) + tau
        tat = tats.get(key, now)
        if tat + increment > limit and tat > now:
            return False
        lock = self._lock
        lock.acquire()
        old = tats.get(key)
        new_tat = (now if old is None or old < now else old) + increment
        if new_tat > limit:
            lock.release()
            return False
        tats[key] = new_tat
        if old is None and len(tats) > self._sweep_at:  # only a new key can grow the dict
            self._sweep(now)
        lock.release()
        return True

    def decide(self, key: Hashable = None, cost: int = 1, now: float | None = None) -> RateDecision:
        """Admit one request and return the numbers for ``RateLimit`` headers."""
        if cost > self.burst:
            raise ConfigurationError(
                f"RateLimiter.decide(cost={cost!r}): must be <= burst ({self.burst}); "
                "such a request could never be admitted"
            )
        if now is None:
            now = self.clock.now()
        interval = self._interval
        with self._lock:
            tat = max(self._tats.get(key, now), now)
            new_tat = tat + interval * cost
            allow_at = new_tat - self._tau
            allowed = allow_at <= now + _slack(now)
            if allowed:
                self._tats[key] = new_tat
                tat = new_tat
                if len(self._tats) > self._sweep_at:
                    self._sweep(now)
        remaining = max(0, math.floor((self._tau - (tat - now) + _slack(now)) / interval))
        return RateDecision(
            allowed=allowed,
            limit=self.burst,
            remaining=remaining,
            retry_after=0.0 if allowed else allow_at - now,
            reset_after=max(tat - now, 0.0),
        )

    def reserve(self, key: Hashable = None, cost: int = 1, max_wait: float = 0.0) -> float | None:
        """Reserve a slot up to ``max_wait`` ahead: the wait (0 = now), or None when too far.

        The caller must wait the returned time before acting: the slot is already counted.
        """
        now = self.clock.now()
        with self._lock:
            tat = max(self._tats.get(key, now), now)
            new_tat = tat + self._interval * cost
            wait = new_tat - self._tau - now
            if wait > max_wait:
                return None
            self._tats[key] = new_tat
            if len(self._tats) > self._sweep_at:
                self._sweep(now)
        return max(wait, 0.0)

    def reset(self, key: Hashable = None) -> None:
        """Forget ``key``: its next request starts from a full burst."""
        with self._lock:
            self._tats.pop(key, None)

    def __len__(self) -> int:
        return len(self._tats)

    def _sweep(self, now: float) -> None:
        # lock held. Keys whose TAT has passed are idle: dropping them changes nothing.
        tats = self._tats
        for k in [k for k, tat in tats.items() if tat <= now]:
            del tats[k]
        if len(tats) > self.max_keys:  # still too many live keys: drop the oldest created
            for k in list(tats)[: len(tats) - self.max_keys]:
                del tats[k]
        # next sweep when we grow by half again (amortised O(1) per decision)
        self._sweep_at = max(self.max_keys, len(tats) + self.max_keys // 2)

    # ------------------------------------------------------------ drivers
    def _rejected(self, ctx: BuildContext, retry_after: float) -> RateLimited:
        exc = RateLimited(
            f"rate limit {self.name!r} exceeded ({self.rate:g} per {self.per:g} s, "
            f"burst {self.burst}); retry in {retry_after:.3g} s",
            retry_after=retry_after,
            policy=self.name,
        )
        ctx.emit(
            CallRejectedEvent(
                pipeline=ctx.pipeline, policy=self.name, code=exc.code, retry_after=retry_after
            )
        )
        return exc

    def _wait_for(self, key: Hashable) -> float | None:
        """Reserve within ``max_wait`` and the deadline; the wait, or None to reject."""
        limit = self.max_wait
        at = _DEADLINE.get()
        if at is not None:
            limit = min(limit, at - self.clock.now())
        if limit <= 0:
            return None
        return self.reserve(key, 1, limit)

    def _wrap(self, inner: SyncLink, ctx: BuildContext) -> SyncLink:
        try_acquire = self.try_acquire
        key_of = self.key
        waits = self.max_wait > 0
        clock = self.clock

        def limiter_link(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            key = None if key_of is None else key_of(*args, **kwargs)
            retry_after = try_acquire(key)
            if retry_after:
                wait = self._wait_for(key) if waits else None
                if wait is None:
                    raise self._rejected(ctx, retry_after)
                clock.sleep(wait)
            return inner(fn, args, kwargs)

        return limiter_link

    def _awrap(self, inner: AsyncLink, ctx: BuildContext) -> AsyncLink:
        try_acquire = self.try_acquire
        key_of = self.key
        waits = self.max_wait > 0
        clock = self.clock

        async def limiter_link(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            key = None if key_of is None else key_of(*args, **kwargs)
            retry_after = try_acquire(key)
            if retry_after:
                wait = self._wait_for(key) if waits else None
                if wait is None:
                    raise self._rejected(ctx, retry_after)
                await clock.asleep(wait)
            return await inner(fn, args, kwargs)

        return limiter_link
