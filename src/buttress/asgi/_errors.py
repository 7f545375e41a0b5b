"""The error edge: every failure becomes RFC 9457 problem+json, logged once with context.

`ErrorMiddleware` catches what escapes the application: buttress errors answer with their
own status and ``Retry-After`` (every retriable answer has one; per-code overrides in
``retry_after``, see `buttress.asgi._problem.resolve_retry_after`); anything else is a 500
``internal_error`` with no internals in the body, logged with the request id, method and
path. `install_exception_handlers` teaches Starlette and FastAPI to answer their own errors
(404, 405, ``HTTPException``, request validation) in the same format.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Mapping
from typing import Any, Final

from buttress.asgi._context import current_request_id
from buttress.asgi._problem import (
    code_for_status,
    problem_body,
    problem_for_exception,
    reset_retry_after_overrides,
    resolve_retry_after,
    retry_after_overrides,
    send_problem,
)
from buttress.asgi._runner import Hooks, Stage
from buttress.asgi._types import ASGIApp, Scope
from buttress.errors import ButtressError, ConfigurationError, ErrorCode
from buttress.telemetry import RequestErrorEvent, emit

__all__ = ["ErrorMiddleware", "install_exception_handlers"]


_log = logging.getLogger("buttress.asgi")

# the codes a Retry-After override may name: the retriable ones, and the request deadline's
RETRY_AFTER_CODES: Final = frozenset(
    {code.wire for code in ErrorCode if code.retriable} | {ErrorCode.DEADLINE_EXCEEDED.wire}
)


def check_retry_after(owner: str, overrides: Mapping[str, float]) -> dict[str, float]:
    """Validated per-code ``Retry-After`` overrides (wire code -> seconds in (0, 86400])."""
    if not isinstance(overrides, Mapping):
        raise ConfigurationError(
            f"{owner}(retry_after={overrides!r}): a mapping of code to seconds, such as "
            "{'overloaded': 5}"
        )
    checked: dict[str, float] = {}
    for code, seconds in overrides.items():
        if code not in RETRY_AFTER_CODES:
            raise ConfigurationError(
                f"{owner}(retry_after={{{code!r}: ...}}): not a retriable code; one of "
                + ", ".join(sorted(RETRY_AFTER_CODES))
            )
        ok = isinstance(seconds, int | float) and not isinstance(seconds, bool)
        if not ok or not 0 < seconds <= 86400 or not math.isfinite(seconds):
            raise ConfigurationError(
                f"{owner}(retry_after={{{code!r}: {seconds!r}}}): seconds in (0, 86400]"
            )
        checked[code] = float(seconds)
    return checked


def _logger() -> Any:
    try:
        import structlog  # noqa: PLC0415 - optional

        return structlog.get_logger("buttress.asgi")
    except ImportError:  # pragma: no cover - structlog ships with the asgi extra
        return None


class ErrorMiddleware(Stage):
    """Turn exceptions that escape the application into problem+json responses.

    Args:
        app: the ASGI application.
        logger: a structlog or stdlib logger (default: structlog's ``buttress.asgi``).
        retry_after: seconds of ``Retry-After`` per retriable code
            (``{"overloaded": 5, "deadline_exceeded": 2}``) for every problem answered
            from this layer inwards, whoever answers it.

    An exception after the response has started cannot change the status any more: it is
    logged and the connection is left for the server to close.

    Example::

        app = ErrorMiddleware(app)
    """

    def __init__(
        self, app: ASGIApp, *, logger: Any = None, retry_after: Mapping[str, float] | None = None
    ) -> None:
        self.app = app
        self.logger = logger if logger is not None else (_logger() or _log)
        self.retry_after = check_retry_after("ErrorMiddleware", retry_after or {})

    def stage_hooks(self) -> Hooks:
        """Fail: an exception becomes problem+json (or is logged, once answering began).

        With ``retry_after`` overrides, also arrive and finish: they hold the overrides
        for the request.
        """
        if not self.retry_after:
            return Hooks(fail=self.fail)
        return Hooks(
            arrive=self._overrides_on,
            fail=self.fail,
            finish=self._overrides_off,
            fields=("retry_after_token",),
        )

    def _overrides_on(self, ex: Any) -> None:
        ex.retry_after_token = retry_after_overrides(self.retry_after)

    @staticmethod
    def _overrides_off(ex: Any) -> None:
        reset_retry_after_overrides(ex.retry_after_token)

    def fail(self, ex: Any, exc: BaseException) -> Awaitable[bool] | None:
        """Take every `Exception` (cancellations go on): log it, answer it if still possible."""
        if not isinstance(exc, Exception):
            return None
        return self._answer(ex, exc)

    async def _answer(self, ex: Any, exc: Exception) -> bool:
        scope = ex.scope
        code, retry_after, detail = problem_for_exception(exc)
        started = ex.status != 0
        emit(
            RequestErrorEvent(
                policy="error_middleware",
                error=exc,
                code=code,
                method=scope.get("method", ""),
                path=scope.get("path", ""),
                response_started=started,
            )
        )
        self._log(scope, exc, code, started)
        if not started:
            await send_problem(
                ex.send,
                code,
                detail=detail,
                request_id=current_request_id(),
                retry_after=retry_after,
                head=scope.get("method") == "HEAD",
            )
        return True

    def _log(self, scope: Scope, exc: Exception, code: ErrorCode, started: bool) -> None:
        fields = {
            "method": scope.get("method"),
            "path": scope.get("path"),
            "request_id": current_request_id(),
            "code": code.wire,
            "response_started": started,
        }
        if code is ErrorCode.INTERNAL_ERROR:
            if isinstance(self.logger, logging.Logger):
                self.logger.error("unhandled exception %s", fields, exc_info=exc)
            else:
                self.logger.error("unhandled_exception", exc_info=exc, **fields)
        elif isinstance(self.logger, logging.Logger):
            self.logger.warning("request failed %s: %s", fields, exc)
        else:
            self.logger.warning("request_failed", error=str(exc), **fields)


def _sanitize_validation_errors(errors: Any) -> list[dict[str, Any]]:
    """Pydantic errors without the rejected ``input`` (it may hold a password) or ``ctx``."""
    return [
        {
            "loc": list(error.get("loc", ())),
            "msg": str(error.get("msg", "")),
            "type": str(error.get("type", "")),
        }
        for error in (errors if isinstance(errors, list) else [])
        if isinstance(error, dict)
    ]


def install_exception_handlers(app: Any) -> bool:
    """Make a Starlette or FastAPI app answer its own errors as problem+json.

    Covers ``HTTPException`` (404, 405 and the ones handlers raise), FastAPI's request
    validation errors (422, with the field errors but never the rejected input), buttress
    errors and any other exception (500). Returns False for apps that are neither.
    """
    add = getattr(app, "add_exception_handler", None)
    if add is None:
        return False
    try:
        from starlette.exceptions import HTTPException  # noqa: PLC0415
        from starlette.responses import JSONResponse  # noqa: PLC0415
    except ImportError:  # pragma: no cover - an app with add_exception_handler has starlette
        return False

    def respond(
        code: ErrorCode,
        status: int,
        detail: str | None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Any:
        body = problem_body(
            code, status=status, detail=detail, request_id=current_request_id(), extra=extra
        )
        return JSONResponse(
            body, status_code=status, headers=headers, media_type="application/problem+json"
        )

    async def on_http_exception(request: Any, exc: Any) -> Any:
        status = int(getattr(exc, "status_code", 500))
        code = code_for_status(status)
        detail = exc.detail if isinstance(exc.detail, str) else None
        headers = dict(getattr(exc, "headers", None) or {})
        if detail and detail == _default_phrase(status):
            detail = None
        return respond(code, status, detail, headers or None)

    async def on_buttress_error(request: Any, exc: Any) -> Any:
        code, retry_after, detail = problem_for_exception(exc)
        retry_after = resolve_retry_after(code, retry_after)
        headers = {"Retry-After": str(max(1, math.ceil(retry_after)))} if retry_after else None
        return respond(code, code.http_status, detail, headers)

    async def on_exception(request: Any, exc: Exception) -> Any:
        return respond(ErrorCode.INTERNAL_ERROR, 500, None)

    add(HTTPException, on_http_exception)
    add(ButtressError, on_buttress_error)
    add(Exception, on_exception)
    try:
        from fastapi.exceptions import RequestValidationError  # noqa: PLC0415
    except ImportError:
        return True

    async def on_validation(request: Any, exc: Any) -> Any:
        return respond(
            ErrorCode.VALIDATION_FAILED,
            422,
            "the request does not match the schema",
            extra={"errors": _sanitize_validation_errors(exc.errors())},
        )

    add(RequestValidationError, on_validation)
    return True


def _default_phrase(status: int) -> str:
    from http import HTTPStatus  # noqa: PLC0415

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""
