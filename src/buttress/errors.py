"""One error taxonomy for everything buttress does.

`ErrorCode` names a kind of failure and knows whether it is retriable, how long a
caller should wait before trying again by default, and which HTTP status it maps to.
The exception hierarchy carries those codes::

    ButtressError(Exception)
    ├── ConfigurationError(ButtressError, ValueError)   raised at build time
    ├── BackendError(ButtressError)                     __cause__ = driver error
    └── Rejected(ButtressError)                         the policy said no; carries retry_after
        ├── CircuitOpen  ├── BulkheadFull  ├── RateLimited
        └── DeadlineExceeded(Rejected, TimeoutError)

`classify()` maps any failure (ours, httpx, requests, redis-py, psycopg, the standard
library, or an HTTP response) to a `Classification`.

Example::

    from buttress.errors import classify, ErrorCode

    info = classify(TimeoutError())
    assert info.code is ErrorCode.UPSTREAM_TIMEOUT and info.retriable
"""

from __future__ import annotations

from typing import Self

from buttress._classify import Classification, classify, parse_retry_after
from buttress._taxonomy import ButtressError, ErrorCode

__all__ = [
    "BackendError",
    "BulkheadFull",
    "ButtressError",
    "CircuitOpen",
    "Classification",
    "ConfigurationError",
    "DeadlineExceeded",
    "ErrorCode",
    "RateLimited",
    "Rejected",
    "classify",
    "parse_retry_after",
]


class ConfigurationError(ButtressError, ValueError):
    """An option is invalid; raised when a policy, pipeline or setting is built.

    The message names the option, the value given and the allowed range.

    Example::

        >>> from buttress import Retry
        >>> Retry(attempts=0)
        Traceback (most recent call last):
        ...
        buttress.errors.ConfigurationError: Retry(attempts=0): must be an integer >= 1
    """

    default_code = ErrorCode.INTERNAL_ERROR


class BackendError(ButtressError):
    """A store or driver failed (Redis, PostgreSQL, SQLite); ``__cause__`` is the driver error."""

    default_code = ErrorCode.BACKEND_ERROR


class Rejected(ButtressError):
    """A policy refused the call without running it; ``retry_after`` says when to try again.

    Attributes:
        policy: the name of the policy that refused, when it has one.
    """

    default_code = ErrorCode.OVERLOADED

    def __init__(
        self,
        message: str = "",
        *,
        code: ErrorCode | None = None,
        retry_after: float | None = None,
        policy: str | None = None,
    ) -> None:
        super().__init__(message, code=code, retry_after=retry_after)
        self.policy = policy

    @classmethod
    def by_policy(cls, policy: str, message: str, retry_after: float | None = None) -> Self:
        """The rejection ``policy`` raises: ``cls(message, retry_after=..., policy=...)``.

        The same object, built without the keyword-argument ``__init__`` chain (a third of
        the cost): an open breaker raises one on every call it refuses.

        Example::

            raise CircuitOpen.by_policy("payments", "circuit 'payments' is open", 2.5)
        """
        exc = cls.__new__(cls, message)  # BaseException.__new__ sets args = (message,)
        exc.code = cls.default_code
        exc.retry_after = retry_after
        exc.policy = policy
        return exc


class CircuitOpen(Rejected):
    """The circuit breaker is open (or its half-open probes are all taken)."""

    default_code = ErrorCode.CIRCUIT_OPEN


class BulkheadFull(Rejected):
    """Every slot of the bulkhead and its queue is taken."""

    default_code = ErrorCode.OVERLOADED


class RateLimited(Rejected):
    """A rate limit is exhausted; ``retry_after`` is exact for GCRA limiters."""

    default_code = ErrorCode.RATE_LIMITED


class DeadlineExceeded(Rejected, TimeoutError):
    """A timeout or deadline ran out.

    ``code`` is `ErrorCode.UPSTREAM_TIMEOUT` (retriable) when a per-attempt timeout cut the
    call, and `ErrorCode.DEADLINE_EXCEEDED` (not retriable) when the overall deadline did.
    """

    default_code = ErrorCode.DEADLINE_EXCEEDED
