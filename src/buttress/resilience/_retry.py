"""`Retry`: call again after retriable failures.

Semantics (DESIGN.md):

* only errors the taxonomy calls retriable are retried (or your own predicate);
* the delays come from a `Backoff` schedule, full jitter by default;
* a ``Retry-After`` / ``RateLimit`` hint carried by the error is honoured: the delay is
  ``max(backoff, hint)``; a hint longer than ``max_retry_after`` stops retrying rather
  than hammering a server that asked for patience;
* no retry whose backoff would outlast the deadline in force;
* a `RetryBudget` (by default one per policy) caps retries to a share of recent requests,
  so a fleet cannot amplify an outage;
* all per-call state (attempt, previous delay) lives in the call, never on the policy;
* when retries run out the last real exception is re-raised, with a note such as
  ``buttress: gave up after 3 attempts in 1.2 s (attempts exhausted)``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

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
from buttress.resilience._backoff import Backoff
from buttress.resilience._deadline import _DEADLINE
from buttress.resilience._policy import (
    AsyncLink,
    BuildContext,
    ErrorMatcher,
    Passage,
    Policy,
    SyncLink,
    check_callable,
    check_int,
    check_positive,
    error_predicate,
)
from buttress.resilience._retry_budget import RetryBudget
from buttress.telemetry import (
    RetryBudgetExhaustedEvent,
    RetryGaveUpEvent,
    RetryScheduledEvent,
)

__all__ = ["Retry", "instant_retries_enabled", "set_instant_retries"]

# Switched by buttress.testing.instant_retries(): retries skip their sleep.
_instant = False


def set_instant_retries(enabled: bool) -> None:
    """Make every `Retry` skip (``True``) or perform (``False``) its sleeps, process-wide."""
    global _instant
    _instant = bool(enabled)


def instant_retries_enabled() -> bool:
    """Whether retries currently skip their sleeps (see `set_instant_retries`)."""
    return _instant


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

    def passage(self) -> Passage | None:
        """With the default ``retry_on``, a local rejection crosses the link untouched.

        The call still counts as a request in the budget (`RetryBudget.deposit`), as it
        does when it runs through the link. A custom ``retry_on`` might retry it: None.
        """
        if self.retry_on is not _default_retry_on:
            return None
        return Passage(
            clock=self.clock, count=self.budget.deposit if self.budget is not None else None
        )

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
