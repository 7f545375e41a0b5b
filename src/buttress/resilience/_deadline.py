"""Deadlines that propagate through `contextvars`.

A deadline is an absolute point on the monotonic clock. `Timeout` policies, the inbound
request timeout and `deadline()` all narrow it; nothing ever widens it. Everything that
waits (retry backoff, bulkhead queues, outbound HTTP timeouts) reads it and takes
``min(own timeout, remaining)``.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from types import TracebackType

from buttress._clock import SYSTEM_CLOCK, Clock
from buttress.errors import DeadlineExceeded, ErrorCode
from buttress.resilience._policy import check_positive

__all__ = ["current_deadline", "deadline", "remaining"]

_DEADLINE: ContextVar[float | None] = ContextVar("buttress_deadline", default=None)


def current_deadline() -> float | None:
    """The absolute deadline in force (monotonic seconds), or None."""
    return _DEADLINE.get()


def remaining(clock: Clock = SYSTEM_CLOCK) -> float | None:
    """Seconds left before the deadline in force (may be negative), or None.

    Example::

        with deadline(2.0):
            assert 0 < remaining() <= 2.0
    """
    at = _DEADLINE.get()
    return None if at is None else at - clock.now()


class deadline:  # noqa: N801 - used like a function, as in the DESIGN contract
    """Bound everything inside the block by ``seconds`` from now.

    Every buttress timeout inside takes ``min(own, remaining)``; retries never sleep past
    it; `buttress.http` clients shrink their timeouts to fit. A deadline only narrows: a
    longer inner deadline keeps the outer one. It is a budget, not a cancellation: use
    `Timeout` in an async pipeline to cut a call off.

    Example::

        from buttress import deadline

        with deadline(2.0):
            client.get("https://example.invalid/")   # at most 2 s, all retries included
            deadline.check()                          # raises DeadlineExceeded if spent
    """

    __slots__ = ("_at", "_clock", "_seconds", "_token")

    def __init__(self, seconds: float, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self._seconds = check_positive("deadline", "seconds", seconds)
        self._clock = clock
        self._token: Token[float | None] | None = None
        self._at: float | None = None

    @property
    def at(self) -> float | None:
        """The absolute deadline this block set (or inherited), once entered."""
        return self._at

    def __enter__(self) -> deadline:
        at = self._clock.now() + self._seconds
        outer = _DEADLINE.get()
        if outer is not None and outer < at:
            at = outer
        self._at = at
        self._token = _DEADLINE.set(at)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None:
            _DEADLINE.reset(self._token)
            self._token = None

    async def __aenter__(self) -> deadline:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    @staticmethod
    def remaining(clock: Clock = SYSTEM_CLOCK) -> float | None:
        """Seconds left before the deadline in force, or None when there is none."""
        return remaining(clock)

    @staticmethod
    def current() -> float | None:
        """The absolute deadline in force, or None."""
        return _DEADLINE.get()

    @staticmethod
    def check(clock: Clock = SYSTEM_CLOCK) -> None:
        """Raise `DeadlineExceeded` when the deadline in force has passed."""
        at = _DEADLINE.get()
        if at is not None and clock.now() >= at:
            raise DeadlineExceeded(
                "the deadline for this operation has passed",
                code=ErrorCode.DEADLINE_EXCEEDED,
            )
