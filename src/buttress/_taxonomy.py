"""The vocabulary the error hierarchy and the classifier share: `ErrorCode`, `ButtressError`.

`buttress.errors` (the exception hierarchy, `classify`) and `buttress._classify` (which
maps foreign failures to codes) both need these two names; they live here so that neither
of those modules imports the other back. Import them from `buttress.errors`, their
documented home (their ``__module__`` says so, for tracebacks and pickles).
"""

from __future__ import annotations

import enum
from typing import Any

__all__ = ["ButtressError", "ErrorCode"]


class ErrorCode(enum.Enum):
    """A kind of failure, with its retry semantics and HTTP status.

    Each member's value is its stable wire name (used in problem+json ``code`` and in
    metrics labels).

    Example::

        >>> ErrorCode.RATE_LIMITED.retriable, ErrorCode.RATE_LIMITED.http_status
        (True, 429)
    """

    # name = (wire name, retriable, default retry-after seconds or None, HTTP status)
    UPSTREAM_TIMEOUT = ("upstream_timeout", True, None, 504)
    UPSTREAM_UNAVAILABLE = ("upstream_unavailable", True, 1.0, 503)
    UPSTREAM_ERROR = ("upstream_error", True, None, 502)
    RATE_LIMITED = ("rate_limited", True, 1.0, 429)
    OVERLOADED = ("overloaded", True, 1.0, 503)
    CIRCUIT_OPEN = ("circuit_open", True, 5.0, 503)
    TRANSIENT_CONFLICT = ("transient_conflict", True, None, 409)
    DEADLINE_EXCEEDED = ("deadline_exceeded", False, None, 504)
    BAD_REQUEST = ("bad_request", False, None, 400)
    UNAUTHORIZED = ("unauthorized", False, None, 401)
    FORBIDDEN = ("forbidden", False, None, 403)
    NOT_FOUND = ("not_found", False, None, 404)
    METHOD_NOT_ALLOWED = ("method_not_allowed", False, None, 405)
    CONFLICT = ("conflict", False, None, 409)
    PAYLOAD_TOO_LARGE = ("payload_too_large", False, None, 413)
    VALIDATION_FAILED = ("validation_failed", False, None, 422)
    BACKEND_ERROR = ("backend_error", True, 1.0, 503)
    INTERNAL_ERROR = ("internal_error", False, None, 500)

    def __init__(
        self, wire: str, retriable: bool, retry_after: float | None, http_status: int
    ) -> None:
        self.wire = wire
        self.retriable = retriable
        self.default_retry_after = retry_after
        self.http_status = http_status

    @property
    def is_client_error(self) -> bool:
        """True when the caller, not the dependency, is at fault.

        That is every 4xx code except ``rate_limited`` (429) and ``transient_conflict``
        (a retriable 409); 408 maps to ``upstream_timeout`` (504) and is not one either.
        """
        return 400 <= self.http_status < 500 and self not in _NOT_CLIENT_FAULT

    def __str__(self) -> str:
        return self.wire


_NOT_CLIENT_FAULT = frozenset({ErrorCode.RATE_LIMITED, ErrorCode.TRANSIENT_CONFLICT})


class ButtressError(Exception):
    """Base class of every error buttress raises.

    Attributes:
        code: the `ErrorCode` of this failure.
        retry_after: seconds a caller should wait before trying again, when known.
    """

    default_code: ErrorCode = ErrorCode.INTERNAL_ERROR

    def __init__(
        self,
        message: str = "",
        *,
        code: ErrorCode | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code: ErrorCode = code if code is not None else self.default_code
        self.retry_after: float | None = retry_after

    @property
    def retriable(self) -> bool:
        """Whether trying again later may succeed."""
        return self.code.retriable

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), str(self), self.code, self.retry_after, self.__dict__))


def _rebuild(
    cls: type[ButtressError],
    message: str,
    code: ErrorCode,
    retry_after: float | None,
    state: dict[str, Any],
) -> ButtressError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    err.code = code
    err.retry_after = retry_after
    return err


# Documented, re-exported and pickled as buttress.errors.X (the classes are found there).
ErrorCode.__module__ = "buttress.errors"
ButtressError.__module__ = "buttress.errors"
