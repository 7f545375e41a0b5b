"""Limit algorithms: small state machines that turn request samples into a concurrency limit.

After Netflix's `concurrency-limits`_: each is fed one sample at a time
(``update(rtt, in_flight, dropped, now) -> limit``) and fits the `LimitAlgorithm`
protocol: `AIMDLimit` (loss based: additive increase, multiplicative decrease) and
`GradientLimit` (delay based: Netflix's Gradient2, the ratio of a long-term to a
short-term RTT). `buttress.asgi._concurrency.ConcurrencyLimiter` admits requests under the
limit they give. Synchronous, no I/O, no clock: time is passed in.

.. _concurrency-limits: https://github.com/Netflix/concurrency-limits
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final, Protocol, runtime_checkable

from buttress.errors import ConfigurationError

__all__ = ["AIMDLimit", "GradientLimit", "LimitAlgorithm", "check_integer", "check_number"]

_TINY_RTT: Final = 1e-9  # a zero RTT (coarse or fake clocks) must not divide by zero
_GRADIENT_WARMUP: Final = 10  # Gradient2: the long RTT is a plain mean of the first 10


# ----------------------------------------------------------------------------- validation
def check_number(owner: str, option: str, value: object) -> float:
    """``value`` as a float, or `ConfigurationError` naming ``owner(option=value)``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigurationError(f"{owner}({option}={value!r}): must be a finite number")
    return float(value)


def check_integer(owner: str, option: str, value: object, low: int, high: int | None = None) -> int:
    """``value`` if an integer in ``[low, high]``, else `ConfigurationError`."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ConfigurationError(f"{owner}({option}={value!r}): must be an integer {bound}")
    return value


def _limits(owner: str, initial: object, min_limit: object, max_limit: object) -> int:
    low = check_integer(owner, "min_limit", min_limit, 1)
    high = check_integer(owner, "max_limit", max_limit, low)
    return check_integer(owner, "initial", initial, low, high)


# ----------------------------------------------------------------------------- algorithms
@runtime_checkable
class LimitAlgorithm(Protocol):
    """A concurrency limit that follows samples; what `ConcurrencyLimiter` drives.

    Implementations are plain state machines: no locks, no clock, no I/O. The limiter
    serializes calls to `update`, so give each limiter its own instance.
    """

    @property
    def limit(self) -> int:
        """The current limit (at least 1)."""

    def update(self, rtt: float, in_flight: int, dropped: bool, now: float) -> int:
        """Take one sample and return the new limit.

        Args:
            rtt: seconds from admission to the end of the response (or a window's mean).
            in_flight: requests in flight when this one was admitted, itself included (or
                a window's maximum).
            dropped: the request failed in a way that signals overload.
            now: the clock at the end of the request (seconds, monotonic).
        """


class AIMDLimit:
    """Loss-based limit: +1 per good sample, times ``backoff_ratio`` per drop.

    Netflix's ``AIMDLimit``: a sample that was dropped, or slower than ``timeout``, cuts the
    limit to ``int(limit * backoff_ratio)``; any other sample adds 1, but only while the
    limit is in use (``in_flight * 2 >= limit``), so an idle service does not grow a limit
    it never tested. The result is clamped to ``[min_limit, max_limit]``.

    Args:
        initial: the starting limit (default 20).
        min_limit: the floor (default 1).
        max_limit: the ceiling (default 1000).
        backoff_ratio: the multiplicative decrease, in [0.5, 1) (default 0.9).
        timeout: seconds after which a sample counts as a drop (default 5).

    Example::

        >>> aimd = AIMDLimit(initial=10)
        >>> aimd.update(0.05, in_flight=8, dropped=False, now=1.0)
        11
        >>> aimd.update(0.05, in_flight=8, dropped=True, now=2.0)
        9
    """

    __slots__ = ("_limit", "backoff_ratio", "max_limit", "min_limit", "timeout")

    def __init__(
        self,
        *,
        initial: int = 20,
        min_limit: int = 1,
        max_limit: int = 1000,
        backoff_ratio: float = 0.9,
        timeout: float = 5.0,
    ) -> None:
        self._limit = _limits("AIMDLimit", initial, min_limit, max_limit)
        self.min_limit = min_limit
        self.max_limit = max_limit
        ratio = check_number("AIMDLimit", "backoff_ratio", backoff_ratio)
        if not 0.5 <= ratio < 1.0:
            raise ConfigurationError(
                f"AIMDLimit(backoff_ratio={backoff_ratio!r}): must be a number in [0.5, 1)"
            )
        self.backoff_ratio = ratio
        self.timeout = check_number("AIMDLimit", "timeout", timeout)
        if self.timeout <= 0:
            raise ConfigurationError(
                f"AIMDLimit(timeout={timeout!r}): must be a number of seconds > 0"
            )

    @property
    def limit(self) -> int:
        """The current limit."""
        return self._limit

    def update(self, rtt: float, in_flight: int, dropped: bool, now: float) -> int:
        """One sample: multiplicative decrease on a drop or timeout, else additive increase."""
        limit = self._limit
        if dropped or rtt > self.timeout:
            limit = int(limit * self.backoff_ratio)
        elif in_flight * 2 >= limit:
            limit += 1
        else:
            return limit
        if limit < self.min_limit:
            limit = self.min_limit
        elif limit > self.max_limit:
            limit = self.max_limit
        self._limit = limit
        return limit

    def __repr__(self) -> str:
        return (
            f"AIMDLimit(limit={self._limit}, min_limit={self.min_limit}, "
            f"max_limit={self.max_limit})"
        )


class GradientLimit:
    """Delay-based limit: Netflix's Gradient2, the long-term RTT against the current one.

    Each sample is a short-term RTT (one request, or the mean of a `ConcurrencyLimiter`
    window). The long-term RTT is an exponential average over ``long_window`` samples (a
    plain mean of the first 10). Then, as in ``Gradient2Limit``::

        gradient = clamp(rtt_tolerance * long_rtt / short_rtt, 0.5, 1.0)
        new      = limit * gradient + queue_size
        limit    = clamp(limit * (1 - smoothing) + new * smoothing, min_limit, max_limit)

    So while latency stays within ``rtt_tolerance`` of its long-term level the limit grows
    by ``smoothing * queue_size`` per sample; when queues build up and the short RTT rises
    above it, the limit shrinks by up to ``smoothing / 2`` of itself per sample. It moves
    only while it is in use (``in_flight >= limit / 2``: an app-limited service learns
    nothing).
    When the long RTT is more than twice the short one (load has gone), it decays by 5 %
    per sample so the service returns to its steady state sooner. Drops are ignored: this
    algorithm reads latency only.

    Args:
        initial: the starting limit (default 100; Netflix starts thread-pool servers at
            20, but an asyncio worker often serves more at once, and a limit that starts
            low sheds a healthy service while it learns).
        min_limit: the floor (default 20, Netflix's).
        max_limit: the ceiling (default 1000; Netflix's is 200).
        smoothing: weight of each new estimate, in (0, 1] (default 0.2).
        queue_size: how much the limit may exceed the estimate (the growth step): an
            integer >= 0 or a function of the current limit (default 4).
        long_window: samples in the long-term RTT average, >= 1 (default 600).
        rtt_tolerance: how much slower than the long-term RTT a sample may be before the
            limit shrinks, >= 1 (default 1.5).

    Example::

        >>> g = GradientLimit(initial=50, min_limit=10)
        >>> for t in range(20):
        ...     _ = g.update(0.010, in_flight=50, dropped=False, now=t)   # steady: grows
        >>> g.limit
        66
        >>> for t in range(5):
        ...     _ = g.update(0.080, in_flight=60, dropped=False, now=t)   # queueing: shrinks
        >>> g.limit
        42
    """

    __slots__ = (
        "_count",
        "_estimate",
        "_factor",
        "_limit",
        "_long_rtt",
        "_long_sum",
        "_queue_fn",
        "_queue_size",
        "long_window",
        "max_limit",
        "min_limit",
        "rtt_tolerance",
        "smoothing",
    )

    def __init__(
        self,
        *,
        initial: int = 100,
        min_limit: int = 20,
        max_limit: int = 1000,
        smoothing: float = 0.2,
        queue_size: int | Callable[[int], int] = 4,
        long_window: int = 600,
        rtt_tolerance: float = 1.5,
    ) -> None:
        self._limit = _limits("GradientLimit", initial, min_limit, max_limit)
        self._estimate = float(self._limit)
        self.min_limit = min_limit
        self.max_limit = max_limit
        self.smoothing = check_number("GradientLimit", "smoothing", smoothing)
        if not 0 < self.smoothing <= 1:
            raise ConfigurationError(
                f"GradientLimit(smoothing={smoothing!r}): must be a number in (0, 1]"
            )
        self._queue_fn: Callable[[int], int] | None
        if callable(queue_size):
            self._queue_fn, self._queue_size = queue_size, 0.0
        else:
            size = check_integer("GradientLimit", "queue_size", queue_size, 0)
            self._queue_fn, self._queue_size = None, float(size)
        self.long_window = check_integer("GradientLimit", "long_window", long_window, 1)
        self._factor = 2.0 / (self.long_window + 1)
        self.rtt_tolerance = check_number("GradientLimit", "rtt_tolerance", rtt_tolerance)
        if self.rtt_tolerance < 1:
            raise ConfigurationError(
                f"GradientLimit(rtt_tolerance={rtt_tolerance!r}): must be a number >= 1"
            )
        self._long_rtt = 0.0
        self._long_sum = 0.0
        self._count = 0

    @property
    def limit(self) -> int:
        """The current limit."""
        return self._limit

    @property
    def long_rtt(self) -> float:
        """The long-term (baseline) RTT in seconds; 0 before the first sample."""
        return self._long_rtt

    def update(self, rtt: float, in_flight: int, dropped: bool, now: float) -> int:
        """One sample: move the limit by the gradient of long-term to short-term RTT."""
        estimate = self._estimate
        queue = self._queue_size if self._queue_fn is None else self._queue_fn(int(estimate))
        short = rtt if rtt > _TINY_RTT else _TINY_RTT  # noqa: FURB136 - hot path, no call
        # the arithmetic below is Gradient2Limit's and ExpAvgMeasurement's, operation for
        # operation, so that both compute the same limits
        if self._count < _GRADIENT_WARMUP:
            self._count += 1
            self._long_sum += short
            long_rtt = self._long_sum / self._count
        else:
            factor = self._factor
            long_rtt = self._long_rtt * (1 - factor) + short * factor
        # load has gone: pull the baseline down faster than the average would
        self._long_rtt = long_rtt * 0.95 if long_rtt / short > 2 else long_rtt
        if in_flight * 2 < estimate:
            return self._limit  # app-limited: this sample says nothing about capacity
        gradient = self.rtt_tolerance * long_rtt / short
        if gradient > 1.0:
            gradient = 1.0
        elif gradient < 0.5:
            gradient = 0.5
        smoothing = self.smoothing
        new = estimate * (1 - smoothing) + (estimate * gradient + queue) * smoothing
        if new < self.min_limit:
            new = float(self.min_limit)
        elif new > self.max_limit:
            new = float(self.max_limit)
        self._estimate = new
        self._limit = limit = int(new)
        return limit

    def __repr__(self) -> str:
        return (
            f"GradientLimit(limit={self._limit}, long_rtt={self._long_rtt:.6f}, "
            f"min_limit={self.min_limit}, max_limit={self.max_limit})"
        )
