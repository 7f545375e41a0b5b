"""The concurrency limiter: admits requests while fewer than a limit are in flight.

After Netflix's `concurrency-limits`_: `ConcurrencyLimiter` counts requests in flight
against ``min(max_in_flight, limit)``, the limit coming from a limit algorithm
(`buttress.asgi._limit_algorithms`: `AIMDLimit`, `GradientLimit`), and hands out a
`ConcurrencyToken` per admitted request; the token's ``release(rtt)`` feeds the algorithm
(optionally averaged over a time window, Netflix's ``WindowedLimit``), ``ignore()`` frees
the slot without a sample (cancellation). A driver that keeps the count itself uses
`ConcurrencyLimiter.admit`, ``release`` and ``ignore`` without tokens; `ShedReason` names
why a request was refused.

The ASGI stage that drives it, `LoadSheddingMiddleware`, lives in
`buttress.asgi._shedding`. Nothing here does I/O or sleeps: the limiter's
`threading.Lock` guards a counter and one call into the algorithm, so one limiter can be
shared by threads and event loops. Time is always passed in (``now``), read from an
injected `Clock` by the driver.

Example::

    >>> limiter = ConcurrencyLimiter(GradientLimit(initial=50), max_in_flight=200)
    >>> token = limiter.try_acquire(now=0.0)
    >>> token.release(0.012)

.. _concurrency-limits: https://github.com/Netflix/concurrency-limits
"""

from __future__ import annotations

import sys
import threading
from typing import Final, Literal, TypeAlias

from buttress.asgi._limit_algorithms import (
    LimitAlgorithm,
    check_integer,
    check_number,
)
from buttress.errors import ConfigurationError

__all__ = ["ConcurrencyLimiter", "ConcurrencyToken", "ShedReason"]


ShedReason: TypeAlias = Literal["max_in_flight", "adaptive"]
"""Why a request was shed: the hard in-flight cap, or the adaptive limit."""


_UNBOUNDED: Final = sys.maxsize


# ----------------------------------------------------------------------------- limiter
class ConcurrencyToken:
    """One admitted request's slot; end it exactly once with `release` or `ignore`.

    Ending it again is a no-op, so a ``finally: token.ignore()`` after a ``release`` is
    safe (Netflix's gRPC interceptor guards its listener the same way).

    Attributes:
        started: the ``now`` the slot was taken at.
        in_flight: requests in flight at admission, this one included.
    """

    __slots__ = ("_limiter", "in_flight", "started")

    def __init__(self, limiter: ConcurrencyLimiter, started: float, in_flight: int) -> None:
        self._limiter: ConcurrencyLimiter | None = limiter
        self.started = started
        self.in_flight = in_flight

    @property
    def done(self) -> bool:
        """Whether the slot was released or ignored already."""
        return self._limiter is None

    def release(self, rtt: float, dropped: bool = False) -> None:
        """Free the slot and feed the sample (``rtt`` seconds) to the limit algorithm.

        ``dropped=True`` marks a failure that signals overload (a timeout, say); only
        loss-based algorithms (`AIMDLimit`) act on it.
        """
        limiter = self._limiter
        if limiter is not None:
            self._limiter = None
            rtt = rtt if rtt > 0.0 else 0.0  # noqa: FURB136 - hot path, no call
            limiter.release(self.in_flight, rtt, dropped, self.started + rtt)

    def ignore(self) -> None:
        """Free the slot without a sample (cancelled, or says nothing about capacity)."""
        limiter = self._limiter
        if limiter is not None:
            self._limiter = None
            limiter.ignore()

    def __repr__(self) -> str:
        state = "done" if self._limiter is None else "held"
        return f"ConcurrencyToken({state}, started={self.started}, in_flight={self.in_flight})"


class ConcurrencyLimiter:
    """Admit a request while fewer than ``min(max_in_flight, algorithm.limit)`` are in flight.

    Netflix's ``SimpleLimiter``: no queue, a request over the limit is refused at once. The
    sample of a request is its RTT, the number in flight when it was admitted, and whether
    it was dropped. By default every sample goes to the algorithm. With ``window`` > 0 or
    ``min_window_samples`` > 1, samples are aggregated as in Netflix's ``WindowedLimit``
    (the mean RTT, the largest in-flight count, "any drop") and the algorithm sees one
    sample per window; a window closes once it spans ``window`` seconds *and* holds
    ``min_window_samples`` samples. (Netflix discards a window that ends short of samples;
    here it stays open until it has them, so a slow, low-traffic service still adapts.)

    Thread-safe: a `threading.Lock` guards the counters and the call into the algorithm,
    and is never held across an ``await``.

    Args:
        limit_algorithm: an `AIMDLimit`, `GradientLimit` or any `LimitAlgorithm`; None for
            a fixed limit of ``max_in_flight``.
        max_in_flight: a hard cap whatever the algorithm says (None: the algorithm alone).
        window: the shortest window, in seconds (default 0).
        min_window_samples: the fewest samples in a window (default 1: with ``window=0``,
            every sample is its own window).

    Example::

        >>> limiter = ConcurrencyLimiter(AIMDLimit(initial=2), max_in_flight=10)
        >>> a, b = limiter.try_acquire(now=0.0), limiter.try_acquire(now=0.0)
        >>> limiter.try_acquire(now=0.0) is None          # the limit is 2
        True
        >>> a.release(0.010)                               # in use: the limit grows
        >>> b.ignore()                                     # cancelled: no sample
        >>> (limiter.limit, limiter.in_flight)
        (3, 0)
    """

    __slots__ = (
        "_algorithm",
        "_cap",
        "_hard",
        "_in_flight",
        "_lock",
        "_per_sample",
        "_w_count",
        "_w_dropped",
        "_w_in_flight",
        "_w_start",
        "_w_sum",
        "max_in_flight",
        "min_window_samples",
        "window",
    )

    def __init__(
        self,
        limit_algorithm: LimitAlgorithm | None = None,
        max_in_flight: int | None = None,
        *,
        window: float = 0.0,
        min_window_samples: int = 1,
    ) -> None:
        owner = "ConcurrencyLimiter"
        if limit_algorithm is not None and not isinstance(limit_algorithm, LimitAlgorithm):
            raise ConfigurationError(
                f"{owner}(limit_algorithm={limit_algorithm!r}): must be a LimitAlgorithm "
                "(AIMDLimit, GradientLimit, or an object with .limit and .update()) or None"
            )
        if max_in_flight is not None:
            check_integer(owner, "max_in_flight", max_in_flight, 1)
        elif limit_algorithm is None:
            raise ConfigurationError(
                f"{owner}(limit_algorithm=None, max_in_flight=None): nothing to limit; give "
                "an algorithm, a max_in_flight >= 1, or both"
            )
        self.window = check_number(owner, "window", window)
        if self.window < 0:
            raise ConfigurationError(f"{owner}(window={window!r}): must be seconds >= 0")
        self.min_window_samples = check_integer(owner, "min_window_samples", min_window_samples, 1)
        self._algorithm = limit_algorithm
        self.max_in_flight = max_in_flight
        self._hard = _UNBOUNDED if max_in_flight is None else max_in_flight
        self._cap = self._hard
        if limit_algorithm is not None:
            self._cap = min(
                self._hard, check_integer(owner, "limit_algorithm.limit", limit_algorithm.limit, 1)
            )
        self._in_flight = 0
        self._lock = threading.Lock()
        self._per_sample = self.window == 0.0 and self.min_window_samples == 1
        self._w_start = 0.0
        self._w_sum = 0.0
        self._w_count = 0
        self._w_in_flight = 0
        self._w_dropped = False

    # ------------------------------------------------------------------ state
    @property
    def algorithm(self) -> LimitAlgorithm | None:
        """The limit algorithm (None for a fixed limit)."""
        return self._algorithm

    @property
    def limit(self) -> int:
        """The limit in force: ``min(max_in_flight, algorithm.limit)``."""
        return self._cap

    @property
    def in_flight(self) -> int:
        """Requests admitted and not yet released or ignored."""
        return self._in_flight

    def __repr__(self) -> str:
        return (
            f"ConcurrencyLimiter(limit={self._cap}, in_flight={self._in_flight}, "
            f"max_in_flight={self.max_in_flight}, algorithm={self._algorithm!r})"
        )

    # ------------------------------------------------------------------ permission protocol
    def try_acquire(self, now: float) -> ConcurrencyToken | None:
        """A token if a slot is free under the current limit, else None (shed)."""
        in_flight = self.admit()
        return ConcurrencyToken(self, now, in_flight) if in_flight > 0 else None

    def decide(self, now: float) -> ConcurrencyToken | ShedReason:
        """Like `try_acquire`, but say why when refusing: ``"max_in_flight"`` or ``"adaptive"``.

        The hard cap wins when both are reached.
        """
        in_flight = self.admit()
        if in_flight > 0:
            return ConcurrencyToken(self, now, in_flight)
        return "max_in_flight" if in_flight == 0 else "adaptive"

    # ------------------------------------------------------------------ without tokens
    # What `try_acquire` / `ConcurrencyToken` do, for a driver that keeps the count itself
    # (the middleware: no token object per request).
    def admit(self) -> int:
        """Take a slot: in flight after admission (> 0), or 0 (hard cap) / -1 (adaptive) refused.

        End an admitted request with `release` or `ignore`.
        """
        lock = self._lock
        lock.acquire()
        n = self._in_flight
        if n < self._cap:
            self._in_flight = n = n + 1
            lock.release()
            return n
        lock.release()
        return 0 if n >= self._hard else -1

    def ignore(self) -> None:
        """Free an admitted request's slot without a sample."""
        lock = self._lock
        lock.acquire()
        self._in_flight -= 1
        lock.release()

    def release(self, in_flight: int, rtt: float, dropped: bool, now: float) -> None:
        """Free an admitted request's slot and feed its sample to the algorithm.

        ``in_flight`` is what `admit` returned, ``rtt`` the request's seconds, ``now`` the
        clock at its end.
        """
        lock = self._lock
        lock.acquire()
        try:
            self._in_flight -= 1
            algorithm = self._algorithm
            if algorithm is None:
                return
            if self._per_sample:
                limit = algorithm.update(rtt, in_flight, dropped, now)
            else:
                count = self._w_count + 1
                if count == 1:
                    self._w_start = now
                    total = rtt
                else:
                    total = self._w_sum + rtt
                    if in_flight < self._w_in_flight:  # noqa: PLR1730 - hot path, no call
                        in_flight = self._w_in_flight
                    dropped = dropped or self._w_dropped
                if count < self.min_window_samples or now - self._w_start < self.window:
                    self._w_count, self._w_sum = count, total
                    self._w_in_flight, self._w_dropped = in_flight, dropped
                    return
                self._w_count = 0
                limit = algorithm.update(total / count, in_flight, dropped, now)
            hard = self._hard
            if limit < 1:  # noqa: PLR1730 - hot path; a custom algorithm must not shut us
                limit = 1
            self._cap = limit if limit < hard else hard  # noqa: FURB136 - hot path
        finally:
            lock.release()
