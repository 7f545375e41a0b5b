"""Sentry for buttress: request tags, the error taxonomy as a filter, events as breadcrumbs.

`ButtressIntegration` is a ``sentry_sdk`` integration (install ``buttress[sentry]``; it
works with sentry-sdk 2 and 3, by feature detection)::

    import sentry_sdk
    from buttress.sentry import ButtressIntegration

    sentry_sdk.init(dsn=..., integrations=[ButtressIntegration()])

What it does, for every event the Sentry client sends:

* **tags** it with the request's ``request_id``, ``trace_id`` and ``route`` template (as
  buttress's access log names them) and a ``principal_hash`` (an HMAC of the caller's
  identity, never the identity), and sets the release when Sentry has none
  (``BUTTRESS_RELEASE``, else ``BUTTRESS_SERVICE_VERSION``);
* **filters** exceptions through the error taxonomy (`buttress.errors.classify`): server
  errors and unexpected exceptions are sent; client errors (4xx), rate limits, shed load
  (``overloaded``), open circuits, request deadlines (``deadline_exceeded``) and every
  `buttress.errors.Rejected` are not, unless ``capture=`` asks for them;
* sends **one event per exception**: an exception Sentry already reported (by its
  Starlette/FastAPI integration, its logging integration, or you) is not sent again;
* reports the 500s buttress's ``ErrorMiddleware`` answers (the ``request_error``
  telemetry event) when no Sentry integration saw them, a bare ASGI app's for instance;
* records buttress's resilience events (retries, breaker changes, fallbacks, the
  rate-limit store bypassed...) as **breadcrumbs**, through `buttress.telemetry.add_hook`.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import inspect
import os
import secrets
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

from buttress._startup import require_modules
from buttress.errors import ConfigurationError, ErrorCode, Rejected, classify
from buttress.telemetry import Event, add_hook

require_modules("buttress.sentry", ("sentry_sdk",), "sentry")

import sentry_sdk  # noqa: E402 - after the check that names the extra
from sentry_sdk.integrations import Integration  # noqa: E402
from sentry_sdk.scope import add_global_event_processor  # noqa: E402
from sentry_sdk.utils import event_from_exception  # noqa: E402

if TYPE_CHECKING:
    from sentry_sdk._types import Event as SentryEvent
    from sentry_sdk._types import Hint

__all__ = ["DEFAULT_IGNORED_CODES", "ButtressIntegration", "error_code"]

#: The codes not sent by default: the caller's fault, or buttress protecting the service
#: as designed (429, shed load, an open circuit, the request deadline).
DEFAULT_IGNORED_CODES: Final = frozenset(
    {code for code in ErrorCode if code.http_status < 500}
    | {ErrorCode.OVERLOADED, ErrorCode.CIRCUIT_OPEN, ErrorCode.DEADLINE_EXCEEDED}
)

Capture = Iterable[ErrorCode] | Callable[[BaseException, ErrorCode], bool]
"""``capture=``: codes sent in addition to the default, or a predicate that decides alone."""

_REPORTED = "_buttress_sentry_reported"  # set on an exception once an event carried it
_LEVELS: Final = {10: "debug", 20: "info", 30: "warning", 40: "error", 50: "fatal"}


def error_code(exc: BaseException) -> ErrorCode | None:
    """The taxonomy code of ``exc``, as the filter sees it (None: not a failure).

    A framework's HTTP exception (``status_code``, Starlette's and FastAPI's
    ``HTTPException``) is classified by its status; everything else by `classify`.

    Example::

        >>> error_code(TimeoutError()).wire
        'upstream_timeout'
    """
    info = classify(exc)
    if info is None:
        return None
    status = getattr(exc, "status_code", None)
    if info.code is ErrorCode.INTERNAL_ERROR and type(status) is int and status >= 400:
        by_status = classify(_Status(status))
        if by_status is not None:
            return by_status.code
    return info.code


class _Status:
    """A response-shaped object for `classify` (``status_code`` and no headers)."""

    __slots__ = ("status_code",)
    headers = None

    def __init__(self, status: int) -> None:
        self.status_code = status


class ButtressIntegration(Integration):
    """Tag, filter and enrich Sentry events with what buttress knows about the request.

    Args:
        capture: which failures reach Sentry. None (the default): server errors and
            unexpected exceptions, not `DEFAULT_IGNORED_CODES` nor any `Rejected`. A set
            of `ErrorCode`: those too (``{ErrorCode.DEADLINE_EXCEEDED}`` sends deadline
            504s). A callable ``(exception, code) -> bool``: it alone decides.
        principal: the caller's identity from the ASGI scope (default: the access log's,
            ``scope["state"]["principal"]``); only its HMAC reaches Sentry.
        principal_key: the HMAC key of ``principal_hash`` (at least 16 bytes; default
            ``BUTTRESS_KEY_SECRET``, the rate-limit key hashes' key, else a random key
            per process: hashes then match within one process only).
        release: the release when Sentry's own ``release`` option is unset (default
            ``BUTTRESS_RELEASE``, else ``BUTTRESS_SERVICE_VERSION``).
        breadcrumbs: record buttress's telemetry events as breadcrumbs: True (all), False,
            or a tuple of event classes.

    Example::

        sentry_sdk.init(
            dsn=os.environ["SENTRY_DSN"],
            integrations=[ButtressIntegration(capture={ErrorCode.DEADLINE_EXCEEDED})],
        )
    """

    identifier = "buttress"

    def __init__(
        self,
        *,
        capture: Capture | None = None,
        principal: Callable[[Mapping[str, Any]], str | None] | None = None,
        principal_key: bytes | str | None = None,
        release: str | None = None,
        breadcrumbs: bool | tuple[type[Event], ...] = True,
    ) -> None:
        self.extra_codes: frozenset[ErrorCode] = frozenset()
        self.predicate: Callable[[BaseException, ErrorCode], bool] | None = None
        if callable(capture):
            self.predicate = capture
        elif capture is not None:
            codes = frozenset(capture)
            if not all(isinstance(code, ErrorCode) for code in codes):
                raise ConfigurationError(
                    f"ButtressIntegration(capture={capture!r}): ErrorCode members or a callable"
                )
            self.extra_codes = codes
        self.principal = principal or _state_principal
        self.principal_key = _principal_key(principal_key)
        self.release = (
            release
            or os.environ.get("BUTTRESS_RELEASE")
            or os.environ.get("BUTTRESS_SERVICE_VERSION")
        )
        if breadcrumbs is True:
            self.breadcrumb_events: tuple[type[Event], ...] | None = (Event,)
        elif breadcrumbs is False:
            self.breadcrumb_events = None
        else:
            self.breadcrumb_events = tuple(breadcrumbs)
        add_hook(_on_event)  # idempotent; again on each init (clear_hooks may have run)

    @staticmethod
    def setup_once() -> None:
        """Register the event processor (once per process, as Sentry calls it)."""
        add_global_event_processor(_process)
        add_hook(_on_event)

    def wants(self, exc: BaseException) -> bool:
        """Whether an event carrying ``exc`` should reach Sentry (see ``capture``)."""
        code = error_code(exc)
        if code is None:
            return False
        if self.predicate is not None:
            return bool(self.predicate(exc, code))
        if code in self.extra_codes:
            return True
        return not isinstance(exc, Rejected) and code not in DEFAULT_IGNORED_CODES

    def principal_hash(self, principal: str) -> str:
        """The ``principal_hash`` tag of ``principal``: HMAC-SHA256, 64 bits, hex."""
        data = principal.encode("utf-8", "surrogatepass")
        return hmac.new(self.principal_key, data, hashlib.sha256).hexdigest()[:16]

    def tags(self) -> dict[str, str]:
        """The request's tags, from buttress's context (empty outside a request)."""
        found: dict[str, str] = {}
        context = _request_context()
        if context is None:
            return found
        request_id, trace, scope, route_template = context
        if request_id is not None:
            found["request_id"] = request_id
        if trace is not None:
            found["trace_id"] = trace.trace_id
        if scope is not None:
            found["route"] = route_template(scope)
            try:
                principal = self.principal(scope)
            # buttress: ignore[BTR303] naming the caller must never lose the event
            except Exception:
                principal = None
            if principal:
                found["principal_hash"] = self.principal_hash(principal)
        return found


def _principal_key(value: bytes | str | None) -> bytes:
    where = "ButtressIntegration(principal_key=...)"
    if value is None:
        env = os.environ.get("BUTTRESS_KEY_SECRET")
        if not env:
            return secrets.token_bytes(32)
        value, where = env, "BUTTRESS_KEY_SECRET"
    raw = value.encode("utf-8") if isinstance(value, str) else value
    if not isinstance(raw, bytes) or len(raw) < 16:
        raise ConfigurationError(f"{where}: at least 16 bytes of secret")
    return raw


def _state_principal(scope: Mapping[str, Any]) -> str | None:
    state = scope.get("state")
    if isinstance(state, dict):
        value = state.get("principal")
        return None if value is None else str(value)
    return None


_context_api: list[Any] = []  # [(current_request_id, current_trace, current_scope, route)]


def _request_context() -> tuple[str | None, Any, Mapping[str, Any] | None, Any] | None:
    """(request id, trace context, ASGI scope, route_template), or None without buttress.asgi."""
    if not _context_api:
        try:
            from buttress.asgi import _context, _logging  # noqa: PLC0415 - the asgi extra
        except ImportError:  # a worker without the asgi extra: no request context
            _context_api.append(None)
        else:
            _context_api.append(
                (
                    _context.current_request_id,
                    _context.current_trace,
                    getattr(_context, "current_scope", None),
                    _logging.route_template,
                )
            )
    api = _context_api[0]
    if api is None:
        return None
    request_id, trace = api[0](), api[1]()
    scope = api[2]() if api[2] is not None else None
    if request_id is None and trace is None and scope is None:
        return None
    return request_id, trace, scope, api[3]


def _integration() -> ButtressIntegration | None:
    return sentry_sdk.get_client().get_integration(ButtressIntegration)


def _process(event: SentryEvent, hint: Hint) -> SentryEvent | None:
    """The global event processor: one event per exception, the filter, tags, release."""
    integration = _integration()
    if integration is None:
        return event
    exc_info = hint.get("exc_info") if hint else None
    exc = exc_info[1] if exc_info else None
    if isinstance(exc, BaseException):
        if getattr(exc, _REPORTED, False):
            return None  # another integration (or the 500 path) already sent it
        with contextlib.suppress(AttributeError, TypeError):  # exceptions take attributes
            setattr(exc, _REPORTED, True)
        if not integration.wants(exc):
            return None
    tags = integration.tags()
    if tags:
        existing = event.get("tags")
        if not isinstance(existing, dict):
            existing = event["tags"] = {}
        for key, value in tags.items():
            existing.setdefault(key, value)
    if (
        integration.release
        and event.get("release") is None
        and sentry_sdk.get_client().options.get("release") is None
    ):
        event["release"] = integration.release
    return event


def _on_event(event: Event) -> None:
    """The telemetry hook: breadcrumbs, and the 500s ErrorMiddleware answered."""
    integration = _integration()
    if integration is None:
        return
    if event.kind == "request_error":
        error = getattr(event, "error", None)
        if isinstance(error, BaseException) and not getattr(error, _REPORTED, False):
            _capture(error)
        return
    wanted = integration.breadcrumb_events
    if wanted is None or not isinstance(event, wanted):
        return
    data = {k: v for k, v in event.as_dict().items() if v is not None and k != "event"}
    detail = " ".join(f"{k}={v}" for k, v in data.items())
    sentry_sdk.add_breadcrumb(
        category=f"buttress.{event.kind}",
        message=f"{event.kind} {detail}".strip(),
        level=_LEVELS.get(event.log_level(), "info"),
        data=data,
    )


_TAKES_CLIENT_OPTIONS = "client_options" in inspect.signature(event_from_exception).parameters


def _capture(error: BaseException) -> None:
    """Send ``error`` as an unhandled exception of the request (mechanism ``buttress``)."""
    # sentry-sdk 2 takes the client's options; 3 reads them from the current client itself
    options: dict[str, Any] = (
        {"client_options": sentry_sdk.get_client().options} if _TAKES_CLIENT_OPTIONS else {}
    )
    build: Any = event_from_exception
    event, hint = build(
        (type(error), error, error.__traceback__),
        mechanism={"type": "buttress", "handled": False},
        **options,
    )
    sentry_sdk.capture_event(event, hint=hint)
