"""Django under `buttress.asgi.harden`: its own errors as problem+json, its logs at your level.

`harden(get_asgi_application())` gives a Django project request ids, trace context,
security headers, the access log, metrics, limits and the rest, as for any ASGI app. Three
things live inside Django, and this module provides them:

**Errors.** Django answers its own 400, 403, 404 and 500 with HTML pages. Name buttress's
views in your root URLconf (``urls.py``)::

    from buttress.django import handler400, handler403, handler404, handler500  # noqa: F401

and, in ``settings.py``, put `ProblemDetailsMiddleware` first and the CSRF failure view::

    MIDDLEWARE = ["buttress.django.ProblemDetailsMiddleware", ...]
    CSRF_FAILURE_VIEW = "buttress.django.csrf_failure"

The views answer RFC 9457 problem+json with the same ``type``, ``code`` and
``request_id`` as the rest of buttress (a buttress error raised by a view, such as
`buttress.errors.CircuitOpen`, keeps its own status and ``Retry-After``); Django still logs
each error as it always does. The middleware turns every other error response that is not
JSON already (HTML, plain text, or no body at all, like the 405 of a class-based view)
into problem+json, keeping its status and headers (``Allow``...); a short plain-text body
becomes the ``detail``. It also names the matched route for the metrics and the access log
(``/orders/{order_id}`` rather than ``<unmatched>``). With ``DEBUG = True`` the
middleware leaves Django's debug pages alone (Django shows them instead of the views
anyway). A site that serves HTML pages of its own should use the views only.

**Logs.** `harden` routes the standard library's logging through buttress's JSON lines at
``log_level``; Django's default ``LOGGING`` pins its ``django`` logger at INFO with
handlers of its own, so ``log_level`` does not govern ``django.request``: its warnings are
written even at ``log_level="ERROR"``, its debug records never. In ``settings.py``::

    from buttress.django import logging_config

    LOGGING = logging_config()

hands every ``django.*`` logger to buttress's handler at ``log_level`` (``Not Found: /x``
is a WARNING, ``Internal Server Error: /boom`` an ERROR with its traceback, both with the
request id). Extend the returned dict for handlers of your own (``mail_admins``...).

**ASGI.** Serve ``harden(get_asgi_application())`` with uvicorn (``asgi.py``)::

    from django.core.asgi import get_asgi_application
    from buttress.asgi import harden

    application = harden(get_asgi_application())

Django's WSGI handler works too (through a2wsgi, see `buttress.asgi._wsgi`), with the same
views, middleware and logging settings.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable
from typing import Any

from buttress.asgi._context import current_request_id
from buttress.asgi._problem import (
    code_for_status,
    problem_body,
    problem_for_exception,
    retry_after_header,
)
from buttress.errors import ButtressError, ErrorCode

__all__ = [
    "ProblemDetailsMiddleware",
    "csrf_failure",
    "handler400",
    "handler403",
    "handler404",
    "handler500",
    "logging_config",
    "problem_response",
]

_CONTENT_TYPE = "application/problem+json"
_MAX_DETAIL = 300  # a plain-text error body at most this long becomes the problem's detail


def _django(module: str) -> Any:
    """A Django module (imported lazily: buttress does not depend on Django)."""
    return importlib.import_module(module)


def problem_response(
    code: ErrorCode,
    *,
    status: int | None = None,
    detail: str | None = None,
    retry_after: float | None = None,
) -> Any:
    """A Django ``HttpResponse`` holding the problem document of ``code``.

    Example::

        from buttress.errors import ErrorCode

        def view(request):
            return problem_response(ErrorCode.CONFLICT, detail="the order is already paid")
    """
    body = problem_body(code, status=status, detail=detail, request_id=current_request_id())
    response = _django("django.http").HttpResponse(
        json.dumps(body, separators=(",", ":"), ensure_ascii=False),
        status=body["status"],
        content_type=_CONTENT_TYPE,
    )
    response["Cache-Control"] = "no-store"
    if retry_after is not None:
        response["Retry-After"] = retry_after_header(retry_after).decode("ascii")
    return response


def _message(exception: BaseException | None) -> str | None:
    """The message a view gave ``Http404``/``PermissionDenied`` (not a resolver's report)."""
    if exception is None or not exception.args or not isinstance(exception.args[0], str):
        return None
    return exception.args[0] or None


def handler400(request: Any, exception: BaseException | None = None) -> Any:
    """Django's 400 view as problem+json (``bad_request``; the reason is not shown)."""
    return problem_response(ErrorCode.BAD_REQUEST, status=400)


def handler403(request: Any, exception: BaseException | None = None) -> Any:
    """Django's 403 view as problem+json (``forbidden``, with ``PermissionDenied``'s message)."""
    return problem_response(ErrorCode.FORBIDDEN, status=403, detail=_message(exception))


def handler404(request: Any, exception: BaseException | None = None) -> Any:
    """Django's 404 view as problem+json (``not_found``, with ``Http404``'s message)."""
    return problem_response(ErrorCode.NOT_FOUND, status=404, detail=_message(exception))


def handler500(request: Any) -> Any:
    """Django's 500 view as problem+json: ``internal_error``, no internals.

    A buttress error that escaped the view (`buttress.errors.CircuitOpen`, `RateLimited`...)
    answers with its own code, status and ``Retry-After``, as `harden`'s error stage does.
    """
    exc = sys.exc_info()[1]  # Django calls this view while it handles the exception
    if isinstance(exc, ButtressError):
        code, retry_after, detail = problem_for_exception(exc)
        return problem_response(code, detail=detail, retry_after=retry_after)
    return problem_response(ErrorCode.INTERNAL_ERROR, status=500)


def csrf_failure(request: Any, reason: str = "") -> Any:
    """``CSRF_FAILURE_VIEW``: 403 problem+json, with Django's reason as the detail."""
    return problem_response(
        ErrorCode.FORBIDDEN, status=403, detail=f"CSRF verification failed: {reason}".rstrip(": ")
    )


def logging_config() -> dict[str, Any]:
    """A ``LOGGING`` setting that hands Django's loggers to buttress's logging.

    The ``django`` loggers keep no handlers and no level of their own: their records reach
    the root handler `harden` installs, filtered at ``log_level``.

    Example::

        # settings.py
        from buttress.django import logging_config

        LOGGING = logging_config()
    """
    handed = {"handlers": [], "level": "NOTSET", "propagate": True}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "loggers": {"django": dict(handed), "django.server": dict(handed)},
    }


def _route_template(route: str) -> str:
    """Django's ``orders/<int:order_id>`` as ``/orders/{order_id}``."""
    out, rest = [], route.removeprefix("^").removesuffix("$")
    while "<" in rest and ">" in rest:
        head, _, tail = rest.partition("<")
        name, _, rest = tail.partition(">")
        out.append(f"{head}{{{name.rpartition(':')[2]}}}")
    out.append(rest)
    return "/" + "".join(out).lstrip("/")


class _Route:
    """A Django route as ``scope["route"]``: metrics and the access log read ``path_format``."""

    __slots__ = ("path_format",)

    def __init__(self, path_format: str) -> None:
        self.path_format = path_format


_ROUTES: dict[str, _Route] = {}  # one object per route: the metrics cache by identity
_MAX_ROUTES = 4096


class ProblemDetailsMiddleware:
    """Django middleware: every error response problem+json, and the route for the metrics.

    An error response (status 400 or more) that is not JSON already becomes the problem
    document of its status, keeping its status, headers and cookies; a short plain-text
    body (``HttpResponseBadRequest("no sku")``) becomes ``detail``, HTML never does. Left
    alone: 1xx-3xx responses, JSON bodies, streaming responses, and everything while
    ``settings.DEBUG`` is on. Works in sync and async stacks. Put it first in
    ``MIDDLEWARE``, so that it sees the answers of every middleware below it.

    Example::

        MIDDLEWARE = [
            "buttress.django.ProblemDetailsMiddleware",
            "django.middleware.security.SecurityMiddleware",
            ...
        ]
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        sync = _django("asgiref.sync")
        self.get_response = get_response
        self.is_async = bool(sync.iscoroutinefunction(get_response))
        if self.is_async:
            sync.markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        """Answer ``request``; an error response comes back as problem+json."""
        if self.is_async:
            return self._acall(request)
        return self._convert(request, self.get_response(request))

    async def _acall(self, request: Any) -> Any:
        return self._convert(request, await self.get_response(request))

    @staticmethod
    def _name_route(request: Any) -> None:
        """Name the matched route in the ASGI scope (``scope["route"]``) for the metrics."""
        match = getattr(request, "resolver_match", None)
        route = getattr(match, "route", None)
        scope = getattr(request, "scope", None)
        if scope is None:  # Django's WSGI handler under a2wsgi
            scope = getattr(request, "META", {}).get("asgi.scope")
        if not isinstance(route, str) or not isinstance(scope, dict):
            return
        named = _ROUTES.get(route)
        if named is None:
            if len(_ROUTES) >= _MAX_ROUTES:
                _ROUTES.clear()
            named = _ROUTES.setdefault(route, _Route(_route_template(route)))
        scope["route"] = named

    def _convert(self, request: Any, response: Any) -> Any:
        self._name_route(request)  # read when the request is over: logs and metrics
        status = response.status_code
        if status < 400 or getattr(response, "streaming", False):
            return response
        if "json" in response.get("Content-Type", "").lower():
            return response
        if _django("django.conf").settings.DEBUG:
            return response
        body = problem_body(
            code_for_status(status),
            status=status,
            detail=_plain_detail(response),
            request_id=current_request_id(),
        )
        payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        response.content = payload
        response["Content-Type"] = _CONTENT_TYPE
        if response.has_header("Content-Length"):
            response["Content-Length"] = str(len(payload))
        if not response.has_header("Cache-Control"):
            response["Cache-Control"] = "no-store"
        return response


def _plain_detail(response: Any) -> str | None:
    """A short plain-text error body as the problem's detail; never HTML or a long page."""
    try:
        text = bytes(response.content).decode(response.charset or "utf-8").strip()
    except (UnicodeDecodeError, LookupError, AttributeError):
        return None
    if not text or len(text) > _MAX_DETAIL or "<" in text or "\n" in text:
        return None
    return text
