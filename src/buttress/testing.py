"""Helpers for testing code that uses buttress, and for chaos tests.

* `FakeClock`: a clock you drive; sleeps return at once and move time forward, timers
  fire when time passes them. Pass it as ``clock=`` to any policy.
* `instant_retries()`: make every `Retry` skip its sleeps inside your own test suite
  (decisions, budgets and events are unchanged).
* `FaultInjection`: a policy that adds latency and raises errors at given rates, seeded,
  for chaos tests of your own pipelines.
* `Clock`: the protocol `FakeClock` implements (re-exported from `buttress.clock`), to
  type your own ``clock=`` parameters.

Example::

    from buttress import Pipeline, Retry
    from buttress.testing import FakeClock, instant_retries

    clock = FakeClock()
    pipe = Pipeline(Retry(attempts=3, clock=clock))
    with instant_retries():
        pipe.call(flaky)
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from buttress.clock import SYSTEM_CLOCK, Clock
from buttress.errors import ConfigurationError
from buttress.resilience import _retry
from buttress.resilience._policy import (
    AsyncLink,
    BuildContext,
    Policy,
    SyncLink,
    check_positive,
    check_ratio,
)

__all__ = ["Clock", "FakeClock", "FaultInjection", "instant_retries", "set_instant_retries"]


class _FakeTimer:
    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], object]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """A deterministic clock: time moves only when you (or a sleep) move it.

    ``sleep``/``asleep`` return at once and advance time by the requested amount (and
    record it in ``sleeps``); ``call_later`` timers fire, in order, when time passes them.

    Args:
        start: the initial reading of `now`.

    Example::

        clock = FakeClock()
        breaker = CircuitBreaker(break_duration=5.0, clock=clock)
        ...
        clock.advance(5.0)      # the breaker may now probe
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._lock = threading.RLock()
        self._timers: list[tuple[float, int, _FakeTimer]] = []
        self._seq = itertools.count()
        self.sleeps: list[float] = []

    def now(self) -> float:
        """The current fake time."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward and fire the timers that come due, in order."""
        if seconds < 0:
            raise ConfigurationError(f"FakeClock.advance(seconds={seconds!r}): must be >= 0")
        with self._lock:
            target = self._now + seconds
            while self._timers and self._timers[0][0] <= target:
                when, _, timer = heapq.heappop(self._timers)
                self._now = max(self._now, when)
                if not timer.cancelled:
                    timer.callback()
            self._now = target

    def sleep(self, seconds: float) -> None:
        """Return at once, time advanced by ``seconds``."""
        self.sleeps.append(seconds)
        self.advance(max(seconds, 0.0))

    async def asleep(self, seconds: float) -> None:
        """Advance time by ``seconds`` and yield to the event loop once."""
        self.sleeps.append(seconds)
        self.advance(max(seconds, 0.0))
        await asyncio.sleep(0)

    def call_later(self, delay: float, callback: Callable[[], object]) -> _FakeTimer:
        """Run ``callback`` once time has advanced by ``delay``."""
        with self._lock:
            timer = _FakeTimer(self._now + max(delay, 0.0), callback)
            heapq.heappush(self._timers, (timer.when, next(self._seq), timer))
            return timer

    @property
    def pending_timers(self) -> int:
        """Timers armed and not yet fired or cancelled."""
        return sum(1 for _, _, t in self._timers if not t.cancelled)

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now!r})"


def set_instant_retries(enabled: bool) -> None:
    """Make every `Retry` skip (``True``) or perform (``False``) its sleeps, process-wide."""
    _retry.set_instant_retries(enabled)


@contextmanager
def instant_retries() -> Iterator[None]:
    """Inside the block, retries do not sleep (a pytest fixture can wrap every test in it).

    Example::

        @pytest.fixture(autouse=True)
        def _fast_retries():
            with instant_retries():
                yield
    """
    before = _retry.instant_retries_enabled()
    set_instant_retries(True)
    try:
        yield
    finally:
        set_instant_retries(before)


ErrorFactory = BaseException | type[BaseException] | Callable[[], BaseException]


class FaultInjection(Policy):
    """Inject latency and errors, at given rates, reproducibly (for chaos tests).

    Args:
        error_rate: share of calls that raise ``error`` (0 to 1).
        error: an exception type, a zero-argument factory, or an instance (copied per
            raise by calling its type with its args) (default `ConnectionError`).
        latency: seconds added to affected calls.
        latency_rate: share of calls that get ``latency`` added (0 to 1).
        seed: seed for the random source (same seed, same faults).
        enabled: switch the injection on and off at run time (``policy.enabled = False``).
        name: label.
        clock: time source for the added latency.

    Example::

        chaos = FaultInjection(error_rate=0.2, latency=0.5, latency_rate=0.1, seed=7)
        pipe = Pipeline(Retry(attempts=3), chaos)
    """

    __slots__ = (
        "_lock",
        "_make",
        "_rng",
        "clock",
        "enabled",
        "error_rate",
        "latency",
        "latency_rate",
    )
    kind = "fault_injection"

    def __init__(
        self,
        *,
        error_rate: float = 0.0,
        error: ErrorFactory = ConnectionError,
        latency: float = 0.0,
        latency_rate: float = 0.0,
        seed: int | None = None,
        enabled: bool = True,
        name: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__(name)
        self.error_rate = check_ratio("FaultInjection", "error_rate", error_rate, allow_zero=True)
        self.latency = check_positive("FaultInjection", "latency", latency, allow_zero=True)
        self.latency_rate = check_ratio(
            "FaultInjection", "latency_rate", latency_rate, allow_zero=True
        )
        self._make = _error_factory(error)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.enabled = enabled
        self.clock = clock

    def __repr__(self) -> str:
        return (
            f"FaultInjection(error_rate={self.error_rate!r}, latency={self.latency!r}, "
            f"latency_rate={self.latency_rate!r})"
        )

    def roll(self) -> tuple[float, BaseException | None]:
        """Decide the next call's fate: (added latency, error to raise or None)."""
        if not self.enabled:
            return 0.0, None
        with self._lock:
            slow = self._rng.random() < self.latency_rate
            fail = self._rng.random() < self.error_rate
        return (self.latency if slow else 0.0), (self._make() if fail else None)

    def wrap(self, inner: SyncLink, ctx: BuildContext) -> SyncLink:
        """The thread link: maybe sleep, maybe raise, then call."""

        def fault_link(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            delay, error = self.roll()
            if delay:
                self.clock.sleep(delay)
            if error is not None:
                raise error
            return inner(fn, args, kwargs)

        return fault_link

    def awrap(self, inner: AsyncLink, ctx: BuildContext) -> AsyncLink:
        """The asyncio link: maybe sleep, maybe raise, then call."""

        async def fault_link(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            delay, error = self.roll()
            if delay:
                await self.clock.asleep(delay)
            if error is not None:
                raise error
            return await inner(fn, args, kwargs)

        return fault_link


def _error_factory(error: ErrorFactory) -> Callable[[], BaseException]:
    if isinstance(error, BaseException):
        kind, args = type(error), error.args
        return lambda: kind(*args)
    if isinstance(error, type):
        if issubclass(error, BaseException):
            kind_ = error
            return lambda: kind_("injected fault")
    elif callable(error):
        return error
    raise ConfigurationError(
        f"FaultInjection(error={error!r}): must be an exception type, instance or factory"
    )
