"""`BodyLimitMiddleware`: request bodies over a size are refused (413), chunked ones included.

A stage (see `buttress.asgi._runner`): a declared body over the limit is refused when the
request arrives; a streamed one is counted as the handler reads it, and when it passes the
limit the handler's own answer is dropped for the 413.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from buttress.asgi._problem import send_problem
from buttress.asgi._runner import Hooks, Stage
from buttress.asgi._types import ASGIApp, Message, Send
from buttress.errors import ConfigurationError, ErrorCode

__all__ = ["BodyLimitMiddleware"]

_CLOSE = (b"connection", b"close")


class _BodyTooLargeError(Exception):
    """Raised into the application when the body passes the limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than {limit} bytes")
        self.limit = limit


class BodyLimitMiddleware(Stage):
    """Refuse request bodies over ``max_bytes`` with 413 problem+json.

    A ``Content-Length`` over the limit is refused before the application runs. A body
    without one (chunked) is counted as it streams: when it passes the limit the
    application's ``receive`` raises, and whatever response the application then tries to
    send is replaced by the 413 (frameworks that turn read errors into a 400 cannot mask it).

    Args:
        app: the ASGI application.
        max_bytes: the largest body accepted (default 1 MiB); None: no limit but the
            ``routes``' ones.
        routes: a different limit per path prefix (longest prefix wins), e.g. uploads. A
            prefix matches whole path segments: ``/uploads`` covers ``/uploads`` and
            ``/uploads/a``, not ``/uploadsX``.

    Example::

        app = BodyLimitMiddleware(app, max_bytes=1 << 20, routes={"/uploads": 50 << 20})
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int | None = 1 << 20,
        routes: dict[str, int] | None = None,
    ) -> None:
        for where, value in [
            *([] if max_bytes is None else [("max_bytes", max_bytes)]),
            *((f"routes[{k!r}]", v) for k, v in (routes or {}).items()),
        ]:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigurationError(
                    f"BodyLimitMiddleware({where}={value!r}): must be an integer >= 0 (bytes)"
                )
        self.app = app
        self.max_bytes = max_bytes
        for prefix in routes or {}:
            if not isinstance(prefix, str) or not prefix.startswith("/"):
                raise ConfigurationError(
                    f"BodyLimitMiddleware(routes={{{prefix!r}: ...}}): a path prefix starting "
                    "with '/'"
                )
        # (prefix without its trailing '/', the same with one, limit), longest first
        self.routes = sorted(
            ((p.rstrip("/"), p.rstrip("/") + "/", limit) for p, limit in (routes or {}).items()),
            key=lambda route: len(route[0]),
            reverse=True,
        )

    def limit_for(self, path: str) -> int | None:
        """The body limit that applies to ``path`` (None: none)."""
        for prefix, below, limit in self.routes:
            if path == prefix or path.startswith(below):
                return limit
        return self.max_bytes

    def stage_hooks(self) -> Hooks:
        """Arrive: a declared body over the limit refused, a streamed one counted."""
        return Hooks(
            arrive=self.arrive,
            fail=self.fail,
            reads=frozenset({b"content-length", b"transfer-encoding"}),
        )

    def arrive(self, ex: Any) -> Awaitable[bool] | None:
        """Refuse a ``Content-Length`` over the limit; count a body that has none."""
        scope = ex.scope
        limit = self.limit_for(scope["path"]) if self.routes else self.max_bytes
        if limit is None:
            return None
        found = ex.found
        for value in found.get(b"content-length", ()):
            try:
                declared = int(value)
            except ValueError:
                return self._malformed(ex.send)
            if declared > limit:
                return self._refuse(ex.send, limit)
        if b"transfer-encoding" not in found and scope.get("http_version", "1.1").startswith("1"):
            # HTTP/1.x frames the body by Content-Length (checked above) or chunked encoding;
            # with neither there is no body. The server enforces the framing, so there is
            # nothing left to count: no wrappers on the common path.
            return None
        return self._count(ex, limit)

    async def _count(self, ex: Any, limit: int) -> bool:
        """Count the body as the application reads it; past the limit, refuse it."""
        receive = ex.receive
        level = ex.depth  # this stage's place: what is sent from inside it is dropped
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message: Message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # the application's answer to a body it could not read is dropped
                    ex.silence(level, _BodyTooLargeError(limit))
                    raise _BodyTooLargeError(limit)
            return message

        ex.receive = limited_receive
        return False

    def fail(self, ex: Any, exc: BaseException) -> Awaitable[bool] | None:
        """The body passed the limit while the application read it: 413 if still possible."""
        if not isinstance(exc, _BodyTooLargeError):
            return None
        return self._too_large(ex, exc.limit)

    async def _too_large(self, ex: Any, limit: int) -> bool:
        if not ex.status:
            await self._refuse(ex.send, limit)
        return True

    @staticmethod
    async def _malformed(send: Send) -> bool:
        await send_problem(send, ErrorCode.BAD_REQUEST, detail="Content-Length is not a number")
        return True

    @staticmethod
    async def _refuse(send: Send, limit: int) -> bool:
        await send_problem(
            send,
            ErrorCode.PAYLOAD_TOO_LARGE,
            detail=f"the request body is larger than {limit} bytes",
            headers=[_CLOSE],
        )
        return True
