"""`Retry`, its `Backoff` schedules and the fleet-protecting `RetryBudget`.

Semantics (DESIGN.md):

* only errors the taxonomy calls retriable are retried (or your own predicate);
* full jitter by default (AWS, "Exponential Backoff and Jitter");
* a ``Retry-After`` / ``RateLimit`` hint carried by the error is honoured: the delay is
  ``max(backoff, hint)``; a hint longer than ``max_retry_after`` stops retrying rather
  than hammering a server that asked for patience;
* no retry whose backoff would outlast the deadline in force;
* a ratio `RetryBudget` (Finagle: retries <= 20 % of requests + 10/s, credits expire
  after 10 s) so a fleet cannot amplify an outage;
* all per-call state (attempt, previous delay) lives in the call, never on the policy;
* when retries run out the last real exception is re-raised, with a note such as
  ``buttress: gave up after 3 attempts in 1.2 s (attempts exhausted)``.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from buttress._clock import SYSTEM_CLOCK, Clock
from buttress.errors import (
    Classification,
    ConfigurationError,
    DeadlineExceeded,
    ErrorCode,
    Rejected,
    classify,
)
from buttress.resilience import _drivers_async, _drivers_sync
from buttress.resilience._deadline import _DEADLINE
from buttress.resilience._policy import (
    AsyncLink,
    BuildContext,
    ErrorMatcher,
    Policy,
    SyncLink,
    check_callable,
    check_int,
    check_positive,
    check_ratio,
    error_predicate,
)
from buttress.telemetry import (
    RetryBudgetExhaustedEvent,
    RetryGaveUpEvent,
    RetryScheduledEvent,
)

__all__ = ["Backoff", "Retry", "RetryBudget"]

Jitter = Literal["full", "equal", "none", "decorrelated"]
_JITTERS = ("full", "equal", "none", "decorrelated")

# Set by buttress.testing.instant_retries(): retries skip their sleep.
_instant = False

_floor = math.floor

# RetryBudget's ring: ticks per ttl (ten), plus one: withdrawals are summed over all eleven
# (a span >= ttl), deposits over ten
_RING = 11


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """A delay schedule between attempts. Build one with the class methods.

    ``attempt`` counts retries from 1 (the delay before the second call is
    ``delay(1, ...)``).

    Example::

        Backoff.exponential(base=0.2, cap=5.0, jitter="full")   # 0-0.2, 0-0.4, 0-0.8 ... <= 5 s
        Backoff.constant(0.5, jitter="none")                     # 0.5, 0.5, ...
        Backoff.decorrelated(base=0.1, cap=10.0)                 # AWS decorrelated jitter
    """

    base: float = 0.2
    cap: float = 5.0
    multiplier: float = 2.0
    increment: float = 0.0
    jitter: Jitter = "full"

    def __post_init__(self) -> None:
        check_positive("Backoff", "base", self.base, allow_zero=True)
        check_positive("Backoff", "cap", self.cap, allow_zero=True)
        if self.cap < self.base:
            raise ConfigurationError(f"Backoff(cap={self.cap!r}): must be >= base ({self.base!r})")
        if (
            isinstance(self.multiplier, bool)
            or not isinstance(self.multiplier, int | float)
            or not (1.0 <= self.multiplier <= 100.0)
        ):
            raise ConfigurationError(
                f"Backoff(multiplier={self.multiplier!r}): must be a number in [1, 100]"
            )
        check_positive("Backoff", "increment", self.increment, allow_zero=True)
        if self.jitter not in _JITTERS:
            raise ConfigurationError(
                f"Backoff(jitter={self.jitter!r}): must be one of {', '.join(_JITTERS)}"
            )

    @classmethod
    def exponential(
        cls,
        base: float = 0.2,
        cap: float = 5.0,
        *,
        multiplier: float = 2.0,
        jitter: Jitter = "full",
    ) -> Backoff:
        """``base * multiplier ** (attempt - 1)``, capped, then jittered."""
        return cls(base=base, cap=cap, multiplier=multiplier, jitter=jitter)

    @classmethod
    def constant(cls, delay: float, *, jitter: Jitter = "none") -> Backoff:
        """The same delay every time."""
        return cls(base=delay, cap=delay, multiplier=1.0, jitter=jitter)

    @classmethod
    def linear(
        cls, base: float = 0.2, increment: float = 0.2, cap: float = 5.0, *, jitter: Jitter = "full"
    ) -> Backoff:
        """``base + increment * (attempt - 1)``, capped, then jittered."""
        return cls(base=base, cap=cap, multiplier=1.0, increment=increment, jitter=jitter)

    @classmethod
    def decorrelated(cls, base: float = 0.2, cap: float = 5.0) -> Backoff:
        """AWS decorrelated jitter: ``min(cap, uniform(base, previous * 3))``."""
        return cls(base=base, cap=cap, multiplier=3.0, jitter="decorrelated")

    def nominal(self, attempt: int) -> float:
        """The un-jittered delay before retry number ``attempt`` (the upper bound)."""
        if self.jitter == "decorrelated":
            return self.cap
        if self.multiplier == 1.0:
            value = self.base + self.increment * (attempt - 1)
        else:
            exponent = min(attempt - 1, 1024)
            try:
                value = self.base * self.multiplier**exponent + self.increment * (attempt - 1)
            except OverflowError:
                value = math.inf
        return min(value, self.cap)

    def minimum(self, attempt: int) -> float:
        """The smallest delay the schedule can produce before retry ``attempt``."""
        if self.jitter == "full":
            return 0.0
        if self.jitter == "equal":
            return self.nominal(attempt) / 2
        if self.jitter == "decorrelated":
            return self.base
        return self.nominal(attempt)

    def delay(self, attempt: int, previous: float, rng: random.Random | None = None) -> float:
        """The delay before retry ``attempt``; ``previous`` is the last delay (0 at first)."""
        uniform = (rng or random).uniform
        if self.jitter == "decorrelated":
            low = self.base
            high = max(low, (previous or low) * self.multiplier)
            return min(self.cap, uniform(low, high))
        nominal = self.nominal(attempt)
        if self.jitter == "full":
            return uniform(0.0, nominal)
        if self.jitter == "equal":
            half = nominal / 2
            return half + uniform(0.0, half)
        return nominal


class RetryBudget:
    """Cap retries to a share of recent requests, so a fleet cannot amplify an outage.

    Every call deposits ``ratio`` of a credit; every retry withdraws one. Credits expire
    after ``ttl`` seconds. ``min_per_second`` retries per second are always allowed, so
    low-traffic callers can still retry. (Finagle's ``RetryBudget``.) One budget may be
    shared by many `Retry` policies to cap a whole dependency.

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


def _is_local_rejection(exc: BaseException) -> bool:
    """A fail-fast rejection raised by a policy inside the pipeline (not a timeout)."""
    return (
        isinstance(exc, Rejected)
        and exc.policy is not None
        and not isinstance(exc, DeadlineExceeded)
    )


def _default_retry_on(exc: BaseException) -> bool:
    """Retry what the taxonomy calls retriable, except local fail-fast rejections.

    An open circuit, a full bulkhead or an exhausted local rate limit raised by a policy
    *inside* the retry exists to fail fast; waiting and retrying would defeat it. (Policies
    set ``policy`` on their rejections; a `RateLimited` raised by the called code itself,
    say from a 429, has none and is retried after its ``retry_after``.) Timeouts
    (`DeadlineExceeded` with code ``upstream_timeout``) are retried.
    """
    if _is_local_rejection(exc):
        return False
    info = classify(exc)
    return info is not None and info.retriable


class _GiveUp:
    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


_NOT_RETRIABLE = "not_retriable"


class Retry(Policy):
    """Call again after retriable failures, with backoff, inside the deadline and budget.

    Args:
        attempts: total attempts including the first (default 3).
        backoff: the delay schedule (default exponential 0.2 s base, 5 s cap, full jitter).
        budget: a `RetryBudget` limiting retries across calls. Default ``True``: this
            policy gets a budget of its own (20 % of requests + 10/s); pass one
            `RetryBudget` to several policies to cap a whole dependency, or ``None`` to
            retry without a budget.
        retry_on: which errors to retry: a predicate, an exception type or a tuple of
            types. Default: what `buttress.errors.classify` calls retriable, except the
            fail-fast rejections of inner policies (`CircuitOpen`, `BulkheadFull`,
            `RateLimited` raised inside the pipeline); timeouts are retried.
        retry_on_result: a predicate on results that should be retried too (for example
            ``lambda r: r.status_code in (429, 503)``); the result's ``Retry-After`` is
            honoured.
        max_retry_after: the longest server-requested wait to honour (default 60 s);
            beyond it, retrying stops.
        name: label for events and metrics.
        clock: time source.
        rng: random source for jitter (seed it for reproducible tests).

    Each failed attempt is classified once (`buttress.errors.classify`), and that one
    `Classification` decides whether to retry, the ``Retry-After`` hint and the code the
    `RetryScheduledEvent` reports.

    Example::

        retry = Retry(attempts=4, backoff=Backoff.exponential(base=0.1, cap=2.0))
        Pipeline(retry).call(flaky)
    """

    __slots__ = (
        "attempts",
        "backoff",
        "budget",
        "clock",
        "max_retry_after",
        "retry_on",
        "retry_on_result",
        "rng",
    )
    kind = "retry"

    def __init__(
        self,
        attempts: int = 3,
        *,
        backoff: Backoff | None = None,
        budget: RetryBudget | bool | None = True,
        retry_on: ErrorMatcher | None = None,
        retry_on_result: Callable[[Any], bool] | None = None,
        max_retry_after: float = 60.0,
        name: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(name)
        self.attempts = check_int("Retry", "attempts", attempts, minimum=1)
        if backoff is not None and not isinstance(backoff, Backoff):
            raise ConfigurationError(f"Retry(backoff={backoff!r}): must be a Backoff")
        self.backoff = backoff if backoff is not None else Backoff.exponential()
        if budget is True:
            budget = RetryBudget(clock=clock)
        elif budget is False:
            budget = None
        if budget is not None and not isinstance(budget, RetryBudget):
            raise ConfigurationError(
                f"Retry(budget={budget!r}): must be a RetryBudget, True (its own) or None"
            )
        self.budget: RetryBudget | None = budget
        self.retry_on: Callable[[BaseException], bool] = (
            _default_retry_on
            if retry_on is None
            else error_predicate("Retry", "retry_on", retry_on)
        )
        check_callable("Retry", "retry_on_result", retry_on_result)
        self.retry_on_result = retry_on_result
        self.max_retry_after = check_positive(
            "Retry", "max_retry_after", max_retry_after, allow_zero=True
        )
        self.clock = clock
        self.rng = rng

    def __repr__(self) -> str:
        return f"Retry(attempts={self.attempts}, backoff={self.backoff!r}, budget={self.budget!r})"

    @property
    def skip_sleeps(self) -> bool:
        """True while `buttress.testing.instant_retries` is on: drivers do not sleep."""
        return _instant

    # ------------------------------------------------------------ sans-I/O core
    def next_delay(
        self,
        attempt: int,
        error: BaseException | None,
        result: Any,
        previous: float,
        now: float,
    ) -> float | _GiveUp:
        """Decide after failed attempt number ``attempt``: a delay, or a reason to stop.

        ``error`` is the exception, or None when ``result`` was rejected by
        ``retry_on_result``.
        """
        if error is not None:
            if not self.retry_on(error):
                return _GiveUp(_NOT_RETRIABLE)
            info = classify(error)
        else:
            info = classify(result)
        decision = self._schedule(attempt, info, previous, now)
        return _GiveUp(decision) if isinstance(decision, str) else decision

    def _schedule(
        self, attempt: int, info: Classification | None, previous: float, now: float
    ) -> float | str:
        """The delay before the next attempt, or why there is none (the reason)."""
        if attempt >= self.attempts:
            return "attempts_exhausted"
        delay = self.backoff.delay(attempt, previous, self.rng)
        hint = info.retry_after if info is not None else None
        if hint is not None:
            if hint > self.max_retry_after:
                return "retry_after_too_long"
            delay = max(delay, hint)
        at = _DEADLINE.get()
        if at is not None and now + delay >= at:
            return "deadline"
        if self.budget is not None and not self.budget.try_withdraw(now):
            return "budget_exhausted"
        return delay

    def after_error(
        self,
        ctx: BuildContext,
        attempt: int,
        error: BaseException,
        previous: float,
        start: float,
    ) -> float | None:
        """After attempt ``attempt`` raised ``error``: the delay before the next, or None.

        None means stop: the driver re-raises ``error`` (with a note saying why, once
        something was retried). ``previous`` is the last delay (0 at first), ``start``
        the call's start on the policy's clock. Events go to ``ctx``'s hooks.
        """
        if self.retry_on is _default_retry_on:  # its work, inlined, on one classification
            if (  # a local fail-fast rejection (_is_local_rejection, inlined): not retried
                isinstance(error, Rejected)
                and error.policy is not None
                and not isinstance(error, DeadlineExceeded)
            ):
                if attempt > 1:
                    self._give_up(ctx, attempt, error, _NOT_RETRIABLE, start)
                return None  # at the first attempt nothing was retried: the error speaks
            info = classify(error)
            retriable = info is not None and info.retriable
        else:
            retriable = self.retry_on(error)
            info = classify(error) if retriable else None
        if not retriable:
            if attempt > 1:
                self._give_up(ctx, attempt, error, _NOT_RETRIABLE, start)
            return None
        return self._decide(ctx, attempt, error, info, previous, start)

    def after_result(
        self, ctx: BuildContext, attempt: int, result: Any, previous: float, start: float
    ) -> float | None:
        """After ``retry_on_result`` rejected ``result``: the delay before the next, or None.

        None means stop: the driver returns ``result``.
        """
        return self._decide(ctx, attempt, None, classify(result), previous, start)

    def _decide(
        self,
        ctx: BuildContext,
        attempt: int,
        error: BaseException | None,
        info: Classification | None,
        previous: float,
        start: float,
    ) -> float | None:
        now = self.clock.now()
        decision = self._schedule(attempt, info, previous, now)
        if isinstance(decision, str):
            self._give_up(ctx, attempt, error, decision, start, now)
            return None
        if ctx.listening:
            ctx.emit(
                RetryScheduledEvent(
                    pipeline=ctx.pipeline,
                    policy=self.name,
                    attempt=attempt,
                    delay=decision,
                    error=error,
                    code=info.code if info is not None else ErrorCode.INTERNAL_ERROR,
                )
            )
        return decision

    def _give_up(
        self,
        ctx: BuildContext,
        attempt: int,
        error: BaseException | None,
        reason: str,
        start: float,
        now: float | None = None,
    ) -> None:
        """Stop retrying: note why on the error, report it; always None."""
        elapsed = (self.clock.now() if now is None else now) - start
        if error is not None:
            error.add_note(
                f"buttress: gave up after {attempt} attempt{'s' if attempt > 1 else ''} "
                f"in {_seconds(elapsed)} ({reason.replace('_', ' ')})"
            )
        if ctx.listening:
            if reason == "budget_exhausted":
                ctx.emit(
                    RetryBudgetExhaustedEvent(
                        pipeline=ctx.pipeline, policy=self.name, attempt=attempt
                    )
                )
            ctx.emit(
                RetryGaveUpEvent(
                    pipeline=ctx.pipeline,
                    policy=self.name,
                    attempts=attempt,
                    elapsed=elapsed,
                    reason=reason,
                    error=error,
                )
            )

    # ------------------------------------------------------------ drivers
    def wrap(self, inner: SyncLink, ctx: BuildContext) -> SyncLink:
        """The thread link (generated from the asyncio one)."""
        return _drivers_sync.retry_link(self, inner, ctx)

    def awrap(self, inner: AsyncLink, ctx: BuildContext) -> AsyncLink:
        """The asyncio link (see ``_drivers_async.retry_link``)."""
        return _drivers_async.retry_link(self, inner, ctx)


def _seconds(value: float) -> str:
    """``1.2 s``, ``35 ms``, ``80 µs``: durations for people."""
    if value >= 1.0:
        return f"{value:.1f} s"
    if value >= 0.001:
        return f"{value * 1e3:.0f} ms"
    return f"{value * 1e6:.0f} µs"
