"""GCRA (the generic cell rate algorithm): its value types and its one arithmetic.

GCRA keeps one number per key, the theoretical arrival time (TAT). With emission interval
``T`` (seconds per request) and burst ``B``, so ``tau = B*T``, a request of cost ``n`` at
time ``now`` finds ``tat = max(TAT, now)`` and is admitted when

    tat + n*T  <=  now * SCALE + (tau + EPSILON)

and then ``TAT = tat + n*T``. In any interval of length ``t`` at most ``B + t/T`` requests
are admitted; a denied request consumes nothing, so it stays denied until exactly
``retry_after = tat + n*T - tau - now`` has passed.

``now * SCALE + EPSILON`` is the one tolerance: ``now`` plus a nanosecond plus 8 ulps of
``now``. Sums of intervals differ from their products by a few ulps, and an ulp of a clock
reading grows with its size (1e-9 s at ~48 days of monotonic uptime, 2.4e-7 s for Unix
time): the slack keeps "exactly on time" requests admitted on any clock, and stays far
below any clock's resolution.

Every implementation evaluates exactly these expressions, in this order, on IEEE doubles,
so they agree bit for bit: `decide` (one key, with the numbers for ``RateLimit`` headers),
`gcra` (several keys, all or nothing), the in-memory `buttress.resilience.RateLimiter`
(whose boolean fast path inlines the admission test above), the stores' Lua
(``buttress/stores/lua/gcra*.lua``) and SQL (``buttress/stores/sql/postgres.sql``), and
the local denial cache. The stores only decide whether to write; the numbers a caller sees
always come from `gcra` here, replayed on the TATs the store read.

Standard library (and `buttress.errors`) only: every other module may import this one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from buttress.errors import ConfigurationError

__all__ = [
    "EPSILON",
    "SCALE",
    "Rate",
    "RateDecision",
    "RateRequest",
    "charge_request",
    "decide",
    "gcra",
]

#: The absolute part of the tolerance (seconds).
EPSILON: Final = 1e-9
#: ``now * SCALE`` is ``now`` plus 8 ulps of ``now`` (the relative part of the tolerance).
SCALE: Final = 1.0 + 8 * 2.0**-52

_floor = math.floor


@dataclass(frozen=True, slots=True, init=False)
class RateDecision:
    """The full answer of a limiter, for response headers.

    Attributes:
        allowed: whether the request was admitted (and counted).
        limit: the burst size ``B``.
        remaining: requests that could still be admitted right now.
        retry_after: seconds until this request could be admitted (0 when allowed).
        reset_after: seconds until the key is back to a full burst.

    Example::

        decision = RateDecision(allowed=True, limit=10, remaining=9, retry_after=0.0,
                                reset_after=0.1)
    """

    allowed: bool
    limit: int
    remaining: int
    retry_after: float
    reset_after: float

    def __init__(
        self, allowed: bool, limit: int, remaining: int, retry_after: float, reset_after: float
    ) -> None:
        # the slots' own setters: a frozen dataclass's generated __init__ goes through
        # object.__setattr__ per field, which costs twice as much (a decision per request)
        _set_allowed(self, allowed)
        _set_limit(self, limit)
        _set_remaining(self, remaining)
        _set_retry_after(self, retry_after)
        _set_reset_after(self, reset_after)


_new = object.__new__
_slots: dict[str, Any] = dict(vars(RateDecision))
_set_allowed = _slots["allowed"].__set__
_set_limit = _slots["limit"].__set__
_set_remaining = _slots["remaining"].__set__
_set_retry_after = _slots["retry_after"].__set__
_set_reset_after = _slots["reset_after"].__set__
del _slots


# ---------------------------------------------------------------- rates
_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
}
_RATE_RE = re.compile(r"^\s*(\d+)\s*(?:/|per)\s*(\d+(?:\.\d+)?)?\s*([a-z]+)\s*$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Rate:
    """A GCRA limit: ``limit`` requests per ``period`` seconds, bursts of up to ``burst``.

    ``burst`` defaults to ``limit`` (a fresh key may spend its whole quota at once, like a
    fixed window, but it refills smoothly instead of all at the window's end). Use
    `Rate.parse` for the string form.

    Example::

        Rate(100, 60.0)                 # 100 per minute
        Rate.parse("10/second;burst=20")
        Rate.parse("1000/day")
    """

    limit: int
    period: float
    burst: int = 0  # 0: same as limit

    def __post_init__(self) -> None:
        if not isinstance(self.limit, int) or isinstance(self.limit, bool) or self.limit < 1:
            raise ConfigurationError(f"Rate.limit must be an integer >= 1, got {self.limit!r}")
        if not isinstance(self.period, int | float) or not 0 < self.period < math.inf:
            raise ConfigurationError(
                f"Rate.period must be a finite number of seconds > 0, got {self.period!r}"
            )
        if not isinstance(self.burst, int) or isinstance(self.burst, bool) or self.burst < 0:
            raise ConfigurationError(
                f"Rate.burst must be an integer >= 1 (0: the same as limit), got {self.burst!r}"
            )
        if self.burst == 0:
            object.__setattr__(self, "burst", self.limit)
        object.__setattr__(self, "period", float(self.period))

    @property
    def interval(self) -> float:
        """Seconds between two requests at the sustained rate (GCRA's emission interval)."""
        return self.period / self.limit

    @classmethod
    def parse(cls, text: str) -> Rate:
        """Parse ``"N/unit"``, ``"N/K unit"`` or ``"N per unit"``, with ``";burst=B"``.

        Units: s, second, m, minute, h, hour, d, day (and plurals).

        Example::

            Rate.parse("100/minute") == Rate(100, 60.0)
            Rate.parse("5/10s;burst=1") == Rate(5, 10.0, burst=1)
        """
        main, _, extra = str(text).partition(";")
        match = _RATE_RE.match(main)
        unit = _UNITS.get(match.group(3).lower()) if match else None
        if match is None or unit is None:
            raise ConfigurationError(
                f"rate {text!r}: expected 'N/unit' such as '10/second', '100/minute', "
                "'5/10s' or '1000/day', optionally followed by ';burst=B'"
            )
        burst = 0
        if extra:
            name, _, value = extra.partition("=")
            if name.strip().lower() != "burst" or not value.strip().isdigit():
                raise ConfigurationError(f"rate {text!r}: the only option is ';burst=<integer>'")
            burst = int(value)
        period = float(match.group(2) or 1) * unit
        return cls(int(match.group(1)), period, burst)

    def __str__(self) -> str:
        burst = "" if self.burst == self.limit else f";burst={self.burst}"
        return f"{self.limit}/{self.period:g}s{burst}"


@dataclass(frozen=True, slots=True)
class RateRequest:
    """One limit to check for one request: the key, its `Rate`, and the cost (default 1)."""

    key: str
    rate: Rate
    cost: int = 1


# ---------------------------------------------------------------- the arithmetic
def decide(
    stored: float | None,
    now: float,
    interval: float,
    tau: float,
    burst: int,
    cost: int,
) -> tuple[RateDecision, float | None]:
    """One key's decision and its new TAT (None when denied: nothing is consumed).

    ``stored`` is the key's TAT (None when absent), ``interval`` the emission interval
    ``T``, ``tau`` exactly ``interval * burst``. This is the single-key hot path of every
    in-process limiter, and the step `gcra` repeats per key.

    Example::

        rate = Rate(5, 1.0)
        decision, tat = decide(None, 1000.0, rate.interval, rate.interval * 5, 5, 1)
        decision.remaining, tat            # (4, 1000.2)
    """
    tat = now if stored is None or stored < now else stored
    new_tat = tat + interval * cost
    limit = now * SCALE + (tau + EPSILON)
    d = _new(RateDecision)
    _set_limit(d, burst)
    if new_tat <= limit:
        _set_allowed(d, True)
        _set_remaining(d, _floor((limit - new_tat) / interval))
        _set_retry_after(d, 0.0)
        _set_reset_after(d, new_tat - now)
        return d, new_tat
    remaining = _floor((limit - tat) / interval)
    _set_allowed(d, False)
    _set_remaining(d, remaining if remaining > 0 else 0)  # noqa: FURB136 - no call
    _set_retry_after(d, new_tat - tau - now)
    _set_reset_after(d, tat - now)
    return d, None


def gcra(
    tats: Sequence[float | None], now: float, requests: Sequence[RateRequest]
) -> tuple[list[RateDecision], list[float] | None]:
    """Decide several limits at once, all or nothing: the decisions and the new TATs.

    ``tats[i]`` is the stored theoretical arrival time of ``requests[i].key`` (None when
    absent). The new TATs are returned only when every limit admits the request; when any
    denies, nothing is consumed (a request refused by the daily quota does not spend the
    per-second burst), and the limits that would have admitted it are reported as they
    stand (not allowed, ``retry_after`` 0). The Redis scripts and the PostgreSQL
    statements run this function's admission test on the server, to decide what to write.

    Example::

        second, day = Rate(5, 1.0), Rate(1000, 86400.0)
        requests = [RateRequest("u:1", second), RateRequest("u:1:day", day)]
        decisions, new = gcra([None, None], 1000.0, requests)
    """
    decisions: list[RateDecision] = []
    new: list[float] = []
    allowed_all = True
    for stored, req in zip(tats, requests, strict=True):
        rate = req.rate
        interval = rate.period / rate.limit
        decision, tat = decide(stored, now, interval, interval * rate.burst, rate.burst, req.cost)
        decisions.append(decision)
        if tat is None:
            allowed_all = False
        else:
            new.append(tat)
    if allowed_all:
        return decisions, new
    # nothing consumed: report the admitting ones as they stand before this request
    for i, (stored, req) in enumerate(zip(tats, requests, strict=True)):
        if decisions[i].allowed:
            rate = req.rate
            interval = rate.period / rate.limit
            now_d, _ = decide(stored, now, interval, interval * rate.burst, rate.burst, 0)
            decisions[i] = RateDecision(False, rate.burst, now_d.remaining, 0.0, now_d.reset_after)
    return decisions, None


# ---------------------------------------------------------------- charging after the fact
def charge_request(key: str, rate: Rate, cost: int, slack: int = 0) -> RateRequest:
    """The request that charges ``cost`` units to ``key`` *after* the work was done.

    A cost known only from the response (rows exported, tokens generated, bytes stored)
    cannot be refused any more; it must be counted. This request's burst is widened by
    ``max(cost, 0) + slack``, which turns GCRA's admission test into

        max(TAT, now) + cost*T  <=  now + (B + max(cost, 0) + slack)*T
        <=>  max(TAT, now)  <=  now + tau + slack*T           (cost >= 0)

    so, with ``slack`` 0, the charge lands exactly when the key is not overdrawn, and then
    leaves it at most ``cost`` units beyond its limit. When a request is admitted only
    while the key is not overdrawn (a cost-0 check before the handler), a key whose
    requests are served one at a time is never more than one request's cost beyond its
    limit, and refused until it is back under it. A charge that finds the key overdrawn
    already (another request's charge landed in between) is retried by the caller with
    ``slack`` covering the overdraft, so nothing is forgotten. A negative ``cost`` is a
    refund (storage freed); the stored TAT never goes below ``now`` (nothing is owed).

    Example::

        day = Rate(1000, 86400.0)
        request = charge_request("rows:tenant-7", day, 250)
        request.rate.burst, request.cost            # (1250, 250)
    """
    burst = rate.burst + max(cost, 0) + max(slack, 0)
    return RateRequest(key, Rate(rate.limit, rate.period, burst), cost)
