"""Map foreign failures (and HTTP responses) to the buttress taxonomy.

Drivers are never imported here: exception types are recognised by the module and
name of the classes in their MRO, so classifying costs nothing when httpx, requests,
redis-py or psycopg are not installed.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from buttress._taxonomy import ButtressError, ErrorCode

__all__ = ["Classification", "classify", "parse_retry_after"]

MAX_RETRY_AFTER_HEADER = 86_400.0 * 7  # values beyond a week are nonsense; clamp


@dataclass(frozen=True, slots=True)
class Classification:
    """What a failure means: its code, whether to retry, and when.

    Attributes:
        code: the taxonomy code.
        retry_after: seconds to wait before retrying, when the failure said so
            (``Retry-After``, ``RateLimit``, a buttress error's ``retry_after``); None
            otherwise (``code.default_retry_after`` is the code's generic hint).
        status: the HTTP status, when the failure was a response.
        detail: a short human-readable reason.
    """

    code: ErrorCode
    retry_after: float | None = None
    status: int | None = None
    detail: str = ""

    @property
    def retriable(self) -> bool:
        """Whether trying again may succeed."""
        return self.code.retriable


# (module prefix, class name) -> code; the first match in the exception's MRO wins.
_BY_NAME: dict[tuple[str, str], ErrorCode] = {
    # httpx
    ("httpx", "TimeoutException"): ErrorCode.UPSTREAM_TIMEOUT,
    ("httpx", "PoolTimeout"): ErrorCode.OVERLOADED,
    ("httpx", "ConnectError"): ErrorCode.UPSTREAM_UNAVAILABLE,
    ("httpx", "ReadError"): ErrorCode.UPSTREAM_UNAVAILABLE,
    ("httpx", "WriteError"): ErrorCode.UPSTREAM_UNAVAILABLE,
    ("httpx", "CloseError"): ErrorCode.UPSTREAM_UNAVAILABLE,
    ("httpx", "RemoteProtocolError"): ErrorCode.UPSTREAM_UNAVAILABLE,
    ("httpx", "NetworkError"): ErrorCode.UPSTREAM_UNAVAILABLE,
    ("httpx", "ProxyError"): ErrorCode.UPSTREAM_UNAVAILABLE,
    ("httpx", "LocalProtocolError"): ErrorCode.INTERNAL_ERROR,
    ("httpx", "UnsupportedProtocol"): ErrorCode.INTERNAL_ERROR,
    ("httpx", "InvalidURL"): ErrorCode.INTERNAL_ERROR,
    ("httpx", "DecodingError"): ErrorCode.UPSTREAM_ERROR,
    ("httpx", "TooManyRedirects"): ErrorCode.UPSTREAM_ERROR,
    # requests / urllib3
    ("requests", "ConnectTimeout"): ErrorCode.UPSTREAM_TIMEOUT,
    ("requests", "ReadTimeout"): ErrorCode.UPSTREAM_TIMEOUT,
    ("requests", "Timeout"): ErrorCode.UPSTREAM_TIMEOUT,
    ("requests", "SSLError"): ErrorCode.UPSTREAM_UNAVAILABLE,
    ("requests", "ProxyError"): ErrorCode.UPSTREAM_UNAVAILABLE,
    ("requests", "ConnectionError"): ErrorCode.UPSTREAM_UNAVAILABLE,
    ("requests", "ChunkedEncodingError"): ErrorCode.UPSTREAM_UNAVAILABLE,
    ("requests", "ContentDecodingError"): ErrorCode.UPSTREAM_ERROR,
    ("requests", "TooManyRedirects"): ErrorCode.UPSTREAM_ERROR,
    ("requests", "InvalidURL"): ErrorCode.INTERNAL_ERROR,
    ("requests", "MissingSchema"): ErrorCode.INTERNAL_ERROR,
    ("urllib3", "TimeoutError"): ErrorCode.UPSTREAM_TIMEOUT,
    ("urllib3", "ProtocolError"): ErrorCode.UPSTREAM_UNAVAILABLE,
    ("urllib3", "NewConnectionError"): ErrorCode.UPSTREAM_UNAVAILABLE,
    ("urllib3", "MaxRetryError"): ErrorCode.UPSTREAM_UNAVAILABLE,
    # redis-py (shadows built-in names: match them before the stdlib ones)
    ("redis", "BusyLoadingError"): ErrorCode.UPSTREAM_UNAVAILABLE,
    ("redis", "TimeoutError"): ErrorCode.UPSTREAM_TIMEOUT,
    ("redis", "ConnectionError"): ErrorCode.UPSTREAM_UNAVAILABLE,
    ("redis", "ClusterDownError"): ErrorCode.UPSTREAM_UNAVAILABLE,
    ("redis", "TryAgainError"): ErrorCode.UPSTREAM_UNAVAILABLE,
    ("redis", "ReadOnlyError"): ErrorCode.UPSTREAM_UNAVAILABLE,
    ("redis", "MaxConnectionsError"): ErrorCode.OVERLOADED,
    ("redis", "ResponseError"): ErrorCode.INTERNAL_ERROR,
    # psycopg 3 and psycopg_pool
    ("psycopg_pool", "PoolTimeout"): ErrorCode.OVERLOADED,
    ("psycopg_pool", "TooManyRequests"): ErrorCode.OVERLOADED,
    ("psycopg_pool", "PoolClosed"): ErrorCode.UPSTREAM_UNAVAILABLE,
    ("psycopg", "SerializationFailure"): ErrorCode.TRANSIENT_CONFLICT,
    ("psycopg", "DeadlockDetected"): ErrorCode.TRANSIENT_CONFLICT,
    ("psycopg", "LockNotAvailable"): ErrorCode.TRANSIENT_CONFLICT,
    ("psycopg", "QueryCanceled"): ErrorCode.UPSTREAM_TIMEOUT,
    ("psycopg", "ConnectionTimeout"): ErrorCode.UPSTREAM_TIMEOUT,
    ("psycopg", "CancellationTimeout"): ErrorCode.UPSTREAM_TIMEOUT,
    ("psycopg", "AdminShutdown"): ErrorCode.UPSTREAM_UNAVAILABLE,
    ("psycopg", "CannotConnectNow"): ErrorCode.UPSTREAM_UNAVAILABLE,
    ("psycopg", "TooManyConnections"): ErrorCode.OVERLOADED,
    ("psycopg", "UniqueViolation"): ErrorCode.CONFLICT,
    ("psycopg", "IntegrityError"): ErrorCode.CONFLICT,
    ("psycopg", "DataError"): ErrorCode.VALIDATION_FAILED,
    ("psycopg", "OperationalError"): ErrorCode.UPSTREAM_UNAVAILABLE,
    ("psycopg", "InterfaceError"): ErrorCode.UPSTREAM_UNAVAILABLE,
    ("psycopg", "ProgrammingError"): ErrorCode.INTERNAL_ERROR,
    # sqlite3 (OperationalError is transient only when the database is locked or busy)
    ("sqlite3", "IntegrityError"): ErrorCode.CONFLICT,
}

# PostgreSQL SQLSTATE classes, for psycopg errors not matched by name.
_SQLSTATE_CLASS: dict[str, ErrorCode] = {
    "08": ErrorCode.UPSTREAM_UNAVAILABLE,  # connection exception
    "53": ErrorCode.OVERLOADED,  # insufficient resources
    "57": ErrorCode.UPSTREAM_UNAVAILABLE,  # operator intervention
    "40": ErrorCode.TRANSIENT_CONFLICT,  # transaction rollback
    "23": ErrorCode.CONFLICT,  # integrity constraint violation
    "22": ErrorCode.VALIDATION_FAILED,  # data exception
}

_STDLIB: tuple[tuple[type[BaseException], ErrorCode], ...] = (
    (TimeoutError, ErrorCode.UPSTREAM_TIMEOUT),
    # local file-system errors are bugs or configuration, not a dependency having a bad day
    (FileNotFoundError, ErrorCode.INTERNAL_ERROR),
    (FileExistsError, ErrorCode.INTERNAL_ERROR),
    (PermissionError, ErrorCode.INTERNAL_ERROR),
    (IsADirectoryError, ErrorCode.INTERNAL_ERROR),
    (NotADirectoryError, ErrorCode.INTERNAL_ERROR),
    (ConnectionRefusedError, ErrorCode.UPSTREAM_UNAVAILABLE),
    (ConnectionError, ErrorCode.UPSTREAM_UNAVAILABLE),
    (OSError, ErrorCode.UPSTREAM_UNAVAILABLE),
)

_STATUS: dict[int, ErrorCode] = {
    400: ErrorCode.BAD_REQUEST,
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    408: ErrorCode.UPSTREAM_TIMEOUT,
    409: ErrorCode.CONFLICT,
    410: ErrorCode.NOT_FOUND,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    422: ErrorCode.VALIDATION_FAILED,
    425: ErrorCode.UPSTREAM_UNAVAILABLE,
    429: ErrorCode.RATE_LIMITED,
    500: ErrorCode.UPSTREAM_ERROR,
    501: ErrorCode.INTERNAL_ERROR,
    502: ErrorCode.UPSTREAM_ERROR,
    503: ErrorCode.UPSTREAM_UNAVAILABLE,
    504: ErrorCode.UPSTREAM_TIMEOUT,
    505: ErrorCode.INTERNAL_ERROR,
}


def parse_retry_after(value: str | bytes | None, *, now: float | None = None) -> float | None:
    """Parse a ``Retry-After`` value: delta-seconds or an HTTP-date.

    Returns seconds from now (never negative, at most a week), or None when the value is
    missing or malformed.

    Args:
        value: the header value.
        now: the current wall-clock time (``time.time()``), for HTTP-dates.

    Example::

        >>> parse_retry_after("120")
        120.0
        >>> parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0)
        0.0
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("latin-1")
        except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
            return None
    text = value.strip()
    if not text:
        return None
    if text.isdigit():
        return min(float(int(text[:12])), MAX_RETRY_AFTER_HEADER)
    try:
        seconds = float(text)  # lenient: "1.5" is common in the wild
    except ValueError:
        seconds = math.nan
    if math.isfinite(seconds):
        return min(max(seconds, 0.0), MAX_RETRY_AFTER_HEADER)
    if math.isnan(seconds) and text.lower() in {"nan", "+nan", "-nan"}:
        return None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        return None
    wall = time.time() if now is None else now
    return min(max(when.timestamp() - wall, 0.0), MAX_RETRY_AFTER_HEADER)


def _ratelimit_reset(value: str) -> float | None:
    """Seconds until reset from an IETF ``RateLimit`` field whose remaining quota is 0.

    Understands the structured-field form (``"default";r=0;t=10``) and the older
    ``limit=10, remaining=0, reset=5`` form.
    """
    remaining: int | None = None
    reset: float | None = None
    for item in value.replace(",", ";").split(";"):
        name, _, raw = item.strip().partition("=")
        name = name.strip().lower()
        try:
            number = float(raw.strip())
        except ValueError:
            continue
        if not math.isfinite(number) or number < 0:
            continue
        if name in {"r", "remaining"}:
            remaining = int(number)
        elif name in {"t", "reset"}:
            reset = number
    if remaining == 0 and reset is not None:
        return min(reset, MAX_RETRY_AFTER_HEADER)
    return None


def _header(headers: Any, name: str) -> str | None:
    if headers is None:
        return None
    getter = getattr(headers, "get", None)
    if getter is None:
        return None
    try:
        found = getter(name)
    # buttress: ignore[BTR303] probing a foreign exception: an unreadable attribute is absent
    except Exception:
        return None
    if isinstance(found, bytes):
        return found.decode("latin-1")
    return found if isinstance(found, str) else None


def classify_status(status: int, headers: Mapping[str, str] | Any = None) -> Classification | None:
    """Classify an HTTP status (with its headers, for ``Retry-After`` and ``RateLimit``).

    Returns None for statuses below 400.
    """
    if status < 400:
        return None
    code = _STATUS.get(status)
    if code is None:
        code = ErrorCode.UPSTREAM_ERROR if status >= 500 else ErrorCode.BAD_REQUEST
    retry_after = parse_retry_after(_header(headers, "retry-after"))
    if retry_after is None and status in (429, 503):
        field = _header(headers, "ratelimit")
        if field:
            retry_after = _ratelimit_reset(field)
    return Classification(code, retry_after, status, f"HTTP {status}")


def _mro_names(exc: BaseException) -> Iterable[tuple[str, str]]:
    for cls in type(exc).__mro__:
        module = cls.__module__
        yield module.partition(".")[0], cls.__name__


_NOT_FAILURES = (asyncio.CancelledError, KeyboardInterrupt, SystemExit, GeneratorExit)

# Exception type -> its classification, for the types whose classification depends on the
# type alone (not sqlite3's OperationalError, not psycopg's SQLSTATE, not a response): a
# failing dependency raises the same few types again and again. Bounded; cleared when full.
_BY_TYPE: dict[type[BaseException], Classification] = {}
_BY_TYPE_MAX = 512


def classify(error_or_response: BaseException | Any) -> Classification | None:
    """Map an exception or an HTTP response to the taxonomy.

    * buttress errors keep their own code and ``retry_after``;
    * httpx, requests, redis-py, psycopg and sqlite3 errors by their type;
    * ``TimeoutError``, ``ConnectionError`` and other ``OSError``;
    * responses (anything with ``status_code`` or ``status`` and ``headers``) by status,
      with ``Retry-After`` (delta-seconds or HTTP-date) or a ``RateLimit`` field;
    * ``httpx.HTTPStatusError`` and ``requests.HTTPError`` by their response.

    Cancellation is never a failure: `asyncio.CancelledError`, `KeyboardInterrupt` and
    `SystemExit` give None, as do successful responses. Unknown errors are
    `ErrorCode.INTERNAL_ERROR`, not retriable.

    Example::

        >>> import httpx
        >>> classify(httpx.Response(503, headers={"Retry-After": "7"})).retry_after
        7.0
    """
    obj = error_or_response
    if isinstance(obj, ButtressError):
        return Classification(obj.code, obj.retry_after, None, str(obj) or type(obj).__name__)
    if isinstance(obj, BaseException):
        if isinstance(obj, _NOT_FAILURES):
            return None
        response = getattr(obj, "response", None)
        if response is not None and _status_of(response) is not None:
            found = classify(response)
            if found is not None:
                return found
        known = _BY_TYPE.get(type(obj))
        if known is not None:
            return known
        return _classify_exception(obj)
    status = _status_of(obj)
    if status is None:
        return None
    return classify_status(status, getattr(obj, "headers", None))


def _classify_exception(exc: BaseException) -> Classification:
    """`classify` for an exception without a response, remembered per type when it can be."""
    kind = type(exc)
    if kind.__module__ == "sqlite3" and kind.__name__ == "OperationalError":
        text = str(exc).lower()
        if "locked" in text or "busy" in text:
            return Classification(ErrorCode.TRANSIENT_CONFLICT, None, None, str(exc))
        return Classification(ErrorCode.INTERNAL_ERROR, None, None, "sqlite3.OperationalError")
    by_state = any(cls.__module__.startswith("psycopg") for cls in kind.__mro__)
    if by_state:  # psycopg: the SQLSTATE of each error may decide
        for key in _mro_names(exc):
            code = _BY_NAME.get(key)
            if code is not None:
                if key[0] == "psycopg" and key[1] in {"OperationalError", "DatabaseError"}:
                    code = _sqlstate(exc) or code
                return Classification(code, None, None, kind.__name__)
        if kind.__module__.startswith("psycopg"):
            code_from_state = _sqlstate(exc)
            if code_from_state is not None:
                return Classification(code_from_state, None, None, kind.__name__)
    info = Classification(_code_of_type(kind), None, None, kind.__name__)
    if not by_state:
        if len(_BY_TYPE) >= _BY_TYPE_MAX:
            _BY_TYPE.clear()
        _BY_TYPE[kind] = info
    return info


def _code_of_type(kind: type[BaseException]) -> ErrorCode:
    for cls in kind.__mro__:
        code = _BY_NAME.get((cls.__module__.partition(".")[0], cls.__name__))
        if code is not None:
            return code
    for base, code in _STDLIB:
        if issubclass(kind, base):
            return code
    return ErrorCode.INTERNAL_ERROR


def _status_of(obj: Any) -> int | None:
    for attr in ("status_code", "status"):
        value = getattr(obj, attr, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _sqlstate(exc: BaseException) -> ErrorCode | None:
    state = getattr(exc, "sqlstate", None)
    if isinstance(state, str) and len(state) == 5:
        return _SQLSTATE_CLASS.get(state[:2])
    return None
