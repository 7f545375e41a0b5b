"""RFC 9457 problem details (``application/problem+json``) for every error buttress answers.

One renderer serves every middleware: a body with ``type``, ``title``, ``status``,
``detail``, ``code`` (the `buttress.errors.ErrorCode` wire name), ``retriable`` and
``request_id``; ``Retry-After`` when the problem is retriable. No stack traces, no
exception messages unless the caller passes them as ``detail`` on purpose.

One convention, everywhere:

* ``type`` is ``https://buttress.dev/problems/<slug>``, the slug being the ``code`` with
  ``-`` for ``_`` (``rate_limited`` → ``rate-limited``): knowing one gives the other;
* members are snake_case: RFC 9457's own (``type``, ``title``, ``status``, ``detail``,
  ``instance``) and buttress's extensions (``code``, ``retriable``, ``request_id``,
  ``retry_after``, ``policy``, ``violated_policies``, ``errors``, ``idempotency_error``,
  ``original_status``); values that name a reason (``idempotency_error``) are snake_case.

====================  ====================  ======  ==============================================
code                  type slug             status  answered by
====================  ====================  ======  ==============================================
bad_request           bad-request           400     body limit (bad length); idempotency (bad key)
unauthorized          unauthorized          401     /metrics without a valid token
forbidden             forbidden             403     /metrics from elsewhere; CORS preflight
not_found             not-found             404     the framework: no route
method_not_allowed    method-not-allowed    405     the framework; /metrics, health
conflict              conflict              409     idempotency: outcome unknown
transient_conflict    transient-conflict    409     idempotency: key in flight
payload_too_large     payload-too-large     413     body limit; idempotency
validation_failed     validation-failed     422     FastAPI validation; key reused
rate_limited          rate-limited          429     rate limits
internal_error        internal-error        500     the error edge (unhandled)
upstream_error        upstream-error        502     a dependency's error escaped
overloaded            overloaded            503     load shedding; shutdown
backend_error         backend-error         503     a store is down
upstream_unavailable  upstream-unavailable  503     a dependency unreachable
circuit_open          circuit-open          503     an open breaker refused
deadline_exceeded     deadline-exceeded     504     the request deadline
upstream_timeout      upstream-timeout      504     an outbound call's timeout
====================  ====================  ======  ==============================================

So ``rate_limited`` is ``https://buttress.dev/problems/rate-limited``. The
idempotency answers also carry ``idempotency_error`` (``key_reused``, ``in_flight``,
``outcome_unknown``, ``response_not_stored``, ``body_too_large``...).

**Retry-After.** Every retriable problem carries ``Retry-After`` (`resolve_retry_after`):
the wait the answer knows (a rate limit's exact one, a shed request's setting), else the
code's default (`ErrorCode.default_retry_after`), else `DEFAULT_RETRY_AFTER` (1 s). The
request deadline's 504 is retriable *for the client* (the service was slow this time, as
an upstream 504 is ``upstream_timeout`` to buttress's own clients), so it carries one too.
`retry_after_overrides` sets a per-code value for the requests inside it
(``HardenSettings.retry_after``): it replaces the default and the configured waits; a
rate limit's exact wait is kept when it is longer, so an override never invites a retry
that would be refused.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from contextvars import ContextVar, Token
from typing import Any, Final

from buttress._classify import classify_status
from buttress.asgi._context import current_request_id
from buttress.asgi._types import Send
from buttress.errors import ButtressError, ErrorCode

__all__ = [
    "DEFAULT_RETRY_AFTER",
    "PROBLEM_BASE",
    "PROBLEM_CONTENT_TYPE",
    "problem_body",
    "problem_for_exception",
    "problem_type",
    "reset_retry_after_overrides",
    "resolve_retry_after",
    "retry_after_overrides",
    "send_problem",
]


PROBLEM_CONTENT_TYPE = b"application/problem+json"
PROBLEM_BASE = "https://buttress.dev/problems/"
DEFAULT_RETRY_AFTER: Final = 1.0
"""Seconds in ``Retry-After`` for a retriable code without a default of its own."""

# per request, set by the error layer (ErrorMiddleware): wire code -> seconds
_OVERRIDES: ContextVar[Mapping[str, float] | None] = ContextVar(
    "buttress_retry_after_overrides", default=None
)


def retry_after_overrides(
    overrides: Mapping[str, float] | None,
) -> Token[Mapping[str, float] | None]:
    """Use ``overrides`` (wire code -> seconds) for the problems answered from here on.

    Returns the token to reset (``_OVERRIDES.reset``) when the request is over; the
    error layer does both per request.
    """
    return _OVERRIDES.set(overrides)


def reset_retry_after_overrides(token: Token[Mapping[str, float] | None]) -> None:
    """Undo `retry_after_overrides`."""
    _OVERRIDES.reset(token)


def resolve_retry_after(
    code: ErrorCode, retry_after: float | None, *, retriable: bool | None = None
) -> float | None:
    """The ``Retry-After`` seconds of a problem with ``code`` (None: no header).

    ``retry_after`` is what the answer knows; ``retriable`` overrides the code's own flag.
    See the module docstring for the order.

    Example::

        >>> resolve_retry_after(ErrorCode.TRANSIENT_CONFLICT, None)
        1.0
        >>> resolve_retry_after(ErrorCode.NOT_FOUND, None) is None
        True
    """
    if not (code.retriable if retriable is None else retriable):
        return retry_after
    overrides = _OVERRIDES.get()
    wanted = overrides.get(code.wire) if overrides else None
    if wanted is not None:
        if code is ErrorCode.RATE_LIMITED and retry_after is not None:
            return max(wanted, retry_after)  # the exact wait: an earlier retry is refused
        return wanted
    if retry_after is not None:
        return retry_after
    default = code.default_retry_after
    return DEFAULT_RETRY_AFTER if default is None else default


# Titles per code: short, stable, human (RFC 9457 3.1.3: the title does not change per
# occurrence). Types are URIs under PROBLEM_BASE: the code, "-" for "_".
_TITLES: dict[ErrorCode, str] = {
    ErrorCode.UPSTREAM_TIMEOUT: "A dependency did not answer in time",
    ErrorCode.UPSTREAM_UNAVAILABLE: "A dependency is unavailable",
    ErrorCode.UPSTREAM_ERROR: "A dependency failed",
    ErrorCode.RATE_LIMITED: "Too many requests",
    ErrorCode.OVERLOADED: "The service is overloaded",
    ErrorCode.CIRCUIT_OPEN: "A dependency is failing; the call was not attempted",
    ErrorCode.TRANSIENT_CONFLICT: "A concurrent change conflicted; try again",
    ErrorCode.DEADLINE_EXCEEDED: "The request took too long",
    ErrorCode.BAD_REQUEST: "The request is malformed",
    ErrorCode.UNAUTHORIZED: "Authentication is required",
    ErrorCode.FORBIDDEN: "The request is not allowed",
    ErrorCode.NOT_FOUND: "Not found",
    ErrorCode.METHOD_NOT_ALLOWED: "Method not allowed",
    ErrorCode.CONFLICT: "The request conflicts with the current state",
    ErrorCode.PAYLOAD_TOO_LARGE: "The request body is too large",
    ErrorCode.VALIDATION_FAILED: "The request is invalid",
    ErrorCode.BACKEND_ERROR: "A storage backend is unavailable",
    ErrorCode.INTERNAL_ERROR: "Internal server error",
}


def code_for_status(status: int) -> ErrorCode:
    """The code of an error the application itself answered with ``status``.

    As for an upstream's answer (`classify_status`: 404 ``not_found``, 429
    ``rate_limited``...), except that the application's own 500 is ``internal_error``, not
    an upstream's error; a status outside the taxonomy is ``internal_error`` too.
    """
    if status == 500:
        return ErrorCode.INTERNAL_ERROR
    info = classify_status(status)
    return info.code if info is not None else ErrorCode.INTERNAL_ERROR


def problem_type(code: ErrorCode) -> str:
    """The problem ``type`` URI of a code: its wire name, ``-`` for ``_``.

    Example::

        >>> problem_type(ErrorCode.RATE_LIMITED)
        'https://buttress.dev/problems/rate-limited'
    """
    return PROBLEM_BASE + code.wire.replace("_", "-")


def problem_body(
    code: ErrorCode,
    *,
    status: int | None = None,
    detail: str | None = None,
    request_id: str | None = None,
    title: str | None = None,
    extra: dict[str, Any] | None = None,
    retriable: bool | None = None,
) -> dict[str, Any]:
    """The problem document for ``code`` as a dict (``retriable`` overrides the code's).

    Example::

        >>> problem_body(ErrorCode.NOT_FOUND, request_id="r1")["status"]
        404
    """
    body: dict[str, Any] = {
        "type": problem_type(code),
        "title": title or _TITLES.get(code, code.wire),
        "status": status or code.http_status,
        "code": code.wire,
        "retriable": code.retriable if retriable is None else retriable,
    }
    if detail:
        body["detail"] = detail
    if request_id:
        body["request_id"] = request_id
    if extra:
        for key, value in extra.items():
            body.setdefault(key, value)
    return body


def problem_for_exception(exc: BaseException) -> tuple[ErrorCode, float | None, str | None]:
    """(code, retry_after, detail) to answer for an exception that reached the edge.

    buttress errors answer with their own code and ``retry_after`` and their message as
    detail (they are written for people); anything else is a 500 ``internal_error`` with
    no detail: internals never reach clients.
    """
    if isinstance(exc, ButtressError):
        retry_after = exc.retry_after
        if retry_after is None and exc.code.retriable:
            retry_after = exc.code.default_retry_after
        return exc.code, retry_after, str(exc) or None
    return ErrorCode.INTERNAL_ERROR, None, None


def retry_after_header(seconds: float) -> bytes:
    """``Retry-After`` delta-seconds: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds))).encode("ascii")


async def send_problem(
    send: Send,
    code: ErrorCode,
    *,
    status: int | None = None,
    detail: str | None = None,
    request_id: str | None = None,
    retry_after: float | None = None,
    headers: Iterable[tuple[bytes, bytes]] = (),
    extra: dict[str, Any] | None = None,
    head: bool = False,
    retriable: bool | None = None,
) -> None:
    """Send a complete problem+json response on a raw ASGI ``send``.

    Args:
        send: the ASGI send callable (wrapped sends that add headers work too).
        code: the taxonomy code: sets type, title and the default status.
        status: override the status (for example 413 from a body limit).
        detail: a human explanation specific to this occurrence.
        request_id: echoed in the body (default: the current request's id, when the
            request-context middleware runs outside; it also adds the header).
        retry_after: seconds; sent as ``Retry-After`` (rounded up, at least 1). A
            retriable problem gets one anyway (`resolve_retry_after`).
        headers: extra response headers.
        extra: extra members of the problem document.
        head: answer a HEAD request (headers only).
        retriable: override the code's ``retriable`` (the request deadline's 504).
    """
    if request_id is None:
        request_id = current_request_id()
    retry_after = resolve_retry_after(code, retry_after, retriable=retriable)
    body = problem_body(
        code,
        status=status,
        detail=detail,
        request_id=request_id,
        extra=extra,
        retriable=retriable,
    )
    payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw_headers = [
        (b"content-type", PROBLEM_CONTENT_TYPE),
        (b"content-length", str(len(payload)).encode("ascii")),
        (b"cache-control", b"no-store"),
        *headers,
    ]
    if retry_after is not None:
        raw_headers.append((b"retry-after", retry_after_header(retry_after)))
    await send({"type": "http.response.start", "status": body["status"], "headers": raw_headers})
    await send({"type": "http.response.body", "body": b"" if head else payload})
