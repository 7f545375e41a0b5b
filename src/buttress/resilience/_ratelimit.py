"""`RateLimiter`: GCRA (the generic cell rate algorithm), in memory, per key, with burst.

GCRA keeps one number per key, the theoretical arrival time (TAT); the algorithm, its
tolerance and its value types live in `buttress._gcra`, shared with every store. In any
interval of length ``t`` at most ``burst + t * rate / per`` requests are admitted, the
answer needs no timer, and ``Retry-After`` is exact: the state only moves forward, so a
denied key stays denied until exactly ``retry_after`` has passed.

Keys live in a bounded `buttress._expiry.ExpiryTable`: a key whose TAT has passed is the
same as a fresh key and may be dropped, a key whose TAT is ahead is never dropped, and a new
key that finds the table full of live keys is denied until one expires (never admitted by
forgetting someone else's state: a flood of new keys cannot reset an exhausted one).
"""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Callable, Hashable
from typing import Any

from buttress._clock import SYSTEM_CLOCK, Clock
from buttress._expiry import ENTRY_BYTES, MAX_KEYS, ExpiryTable
from buttress._gcra import EPSILON, SCALE, RateDecision, decide
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


def _entry_size(key: Hashable, tat: float) -> int:
    """Bytes one key holds: its (shallow) size plus a slot of the table."""
    return ENTRY_BYTES + sys.getsizeof(key)


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
        max_keys: keys held in memory at most (default 100,000). A key whose TAT has
            passed is idle (the same as a fresh key) and is dropped as needed; a key that
            still carries state is never dropped. A *new* key that finds ``max_keys`` live
            keys is denied, with ``retry_after`` the time until the earliest one expires.
        max_bytes: memory budget of the keys (default 64 MiB), approximate: each key counts
            its shallow ``sys.getsizeof`` plus ~170 bytes of bookkeeping. Full, it refuses
            new keys like ``max_keys``.
        name: label for events and metrics.
        clock: time source.

    Example::

        per_user = RateLimiter(100, per=60.0, burst=20)
        if not per_user.allow(user_id):
            ...
        Pipeline(RateLimiter(50), Retry()).call(fn)   # outbound: at most 50 calls/s
    """

    __slots__ = (
        "_get",
        "_interval",
        "_lock",
        "_mask",
        "_now",
        "_offset",
        "_put",
        "_shards",
        "_tats",
        "_tau",
        "burst",
        "clock",
        "key",
        "max_bytes",
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
        max_bytes: int = 64 << 20,
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
        if self.max_keys > MAX_KEYS:
            raise ConfigurationError(f"RateLimiter(max_keys={max_keys!r}): must be below 2**32")
        self.max_bytes = check_int("RateLimiter", "max_bytes", max_bytes, minimum=1024)
        self.clock = clock
        self._interval = self.per / self.rate
        self._tau = self._interval * self.burst
        self._offset = self._tau + EPSILON  # the admission test of `buttress._gcra`
        self._now = clock.now
        self._lock = threading.Lock()
        self._tats: ExpiryTable[Hashable, float] = ExpiryTable(
            self.max_keys, self.max_bytes, expiry=float, size=_entry_size
        )
        # the hot paths read and update a key's shard dict in place (see ExpiryTable.shards)
        self._shards = self._tats.shards
        self._mask = self._tats.mask
        self._get = self._tats.get
        self._put = self._tats.put

    def __repr__(self) -> str:
        return f"RateLimiter(rate={self.rate!r}, per={self.per!r}, burst={self.burst})"

    # ------------------------------------------------------------ decisions
    def try_acquire(self, key: Hashable = None, cost: int = 1, now: float | None = None) -> float:
        """Admit one request of ``cost``: 0.0 when admitted, else seconds to wait.

        The fastest form: one lock, one table lookup, no allocation. A ``cost`` above the
        burst can never be admitted: the answer is ``math.inf``. A new key that finds the
        table full of live keys waits for the earliest one to expire.
        """
        if now is None:
            now = self.clock.now()
        if cost > self.burst:
            return math.inf  # larger than the burst: can never be admitted
        increment = self._interval * cost
        shard = self._shards[hash(key) & self._mask]  # the dict holding key (see ExpiryTable)
        limit = now * SCALE + self._offset  # `buttress._gcra`: admitted iff TAT <= limit
        # A key's TAT only moves forward, so a denial read without the lock is as exact as
        # one read with it: an over-limit key costs no lock at all (cheaper under abuse).
        tat = shard.get(key)
        if tat is not None and tat + increment > limit and tat > now:
            return tat + increment - self._tau - now
        lock = self._lock
        lock.acquire()
        old = shard.get(key)
        new_tat = (now if old is None or old < now else old) + increment
        if new_tat > limit:
            lock.release()
            return new_tat - self._tau - now
        if old is None:  # a new key needs room: refused while every slot is live
            wait = self._put(key, new_tat, now)
            lock.release()
            return wait
        shard[key] = new_tat  # a present key, same size: the table's in-place update
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
        shard = self._shards[hash(key) & self._mask]
        limit = now * SCALE + self._offset  # `buttress._gcra`: admitted iff TAT <= limit
        tat = shard.get(key)
        if tat is not None and tat + increment > limit and tat > now:
            return False
        lock = self._lock
        lock.acquire()
        old = shard.get(key)
        new_tat = (now if old is None or old < now else old) + increment
        if new_tat > limit:
            lock.release()
            return False
        if old is None:  # a new key needs room: refused while every slot is live
            admitted = not self._put(key, new_tat, now)
            lock.release()
            return admitted
        shard[key] = new_tat  # a present key, same size: the table's in-place update
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
        with self._lock:
            old = self._get(key)
            decision, new_tat = decide(old, now, self._interval, self._tau, self.burst, cost)
            if new_tat is not None:
                if old is None:
                    wait = self._put(key, new_tat, now)
                    if wait:  # no room for a new key: denied until the earliest one expires
                        return RateDecision(False, self.burst, 0, wait, 0.0)
                else:
                    self._tats.update(key, new_tat)
        return decision

    def reserve(self, key: Hashable = None, cost: int = 1, max_wait: float = 0.0) -> float | None:
        """Reserve a slot up to ``max_wait`` ahead: the wait (0 = now), or None when too far.

        The caller must wait the returned time before acting: the slot is already counted.
        """
        now = self.clock.now()
        with self._lock:
            old = self._get(key)
            new_tat = (now if old is None or old < now else old) + self._interval * cost
            wait = new_tat - self._tau - now
            if wait > max_wait:
                return None
            if old is None:
                if self._put(key, new_tat, now):
                    return None  # no room for a new key
            else:
                self._tats.update(key, new_tat)
        return max(wait, 0.0)

    def reset(self, key: Hashable = None) -> None:
        """Forget ``key``: its next request starts from a full burst.

        Its slot in the table comes back when its TAT passes (see `buttress._expiry`).
        """
        with self._lock:
            self._tats.delete(key)

    def __len__(self) -> int:
        """Keys held (at most ``max_keys``), idle ones not dropped yet included."""
        return len(self._tats)

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

    def wrap(self, inner: SyncLink, ctx: BuildContext) -> SyncLink:
        """The thread link: take a token, or wait for one up to ``max_wait``, or reject."""
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

    def awrap(self, inner: AsyncLink, ctx: BuildContext) -> AsyncLink:
        """The asyncio link: take a token, or wait for one up to ``max_wait``, or reject."""
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
