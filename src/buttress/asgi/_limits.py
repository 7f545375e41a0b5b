"""Request body size limits (on the stream, chunked bodies included) and request deadlines."""

from __future__ import annotations

import contextlib

from buttress._clock import SYSTEM_CLOCK, Clock
from buttress.asgi._problem import send_problem
from buttress.asgi._types import ASGIApp, Message, Receive, Scope, Send
from buttress.errors import ConfigurationError, DeadlineExceeded, ErrorCode
from buttress.resilience import Pipeline, Timeout, deadline

__all__ = ["BodyLimitMiddleware", "DeadlineMiddleware"]


class _BodyTooLargeError(Exception):
    """Raised into the application when the body passes the limit."""


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413 problem+json.

    A ``Content-Length`` over the limit is refused before the application runs. A body
    without one (chunked) is counted as it streams: when it passes the limit the
    application's ``receive`` raises, and whatever response the application then tries to
    send is replaced by the 413 (frameworks that turn read errors into a 400 cannot mask it).

    Args:
        app: the ASGI application.
        max_bytes: the largest body accepted (default 1 MiB).
        routes: a different limit per path prefix (longest prefix wins), e.g. uploads.

    Example::

        app = BodyLimitMiddleware(app, max_bytes=1 << 20, routes={"/uploads": 50 << 20})
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int = 1 << 20,
        routes: dict[str, int] | None = None,
    ) -> None:
        for where, value in [
            ("max_bytes", max_bytes),
            *((f"routes[{k!r}]", v) for k, v in (routes or {}).items()),
        ]:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigurationError(
                    f"BodyLimitMiddleware({where}={value!r}): must be an integer >= 0 (bytes)"
                )
        self.app = app
        self.max_bytes = max_bytes
        self.routes = sorted((routes or {}).items(), key=lambda kv: len(kv[0]), reverse=True)

    def limit_for(self, path: str) -> int:
        """The body limit that applies to ``path``."""
        for prefix, limit in self.routes:
            if path.startswith(prefix):
                return limit
        return self.max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"]) if self.routes else self.max_bytes
        declared = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await send_problem(
                        send, ErrorCode.BAD_REQUEST, detail="Content-Length is not a number"
                    )
                    return
                if declared > limit:
                    await self._refuse(send, limit)
                    return
            elif name == b"transfer-encoding":
                chunked = True
        if not chunked and scope.get("http_version", "1.1").startswith("1"):
            # HTTP/1.x frames the body by Content-Length (checked above) or chunked encoding;
            # with neither there is no body. The server enforces the framing, so there is
            # nothing left to count: no wrappers on the common path.
            await self.app(scope, receive, send)
            return
        received = 0
        exceeded = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise _BodyTooLargeError
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                return  # the application's answer to a body it could not read is dropped
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        with contextlib.suppress(_BodyTooLargeError):
            await self.app(scope, limited_receive, guarded_send)
        if exceeded and not started:
            await self._refuse(send, limit)

    @staticmethod
    async def _refuse(send: Send, limit: int) -> None:
        await send_problem(
            send,
            ErrorCode.PAYLOAD_TOO_LARGE,
            detail=f"the request body is larger than {limit} bytes",
            headers=[(b"connection", b"close")],
        )


class DeadlineMiddleware:
    """A server-side deadline per request: 504 problem+json, handler cancelled.

    The deadline is also the `buttress.deadline` of everything the handler does: every
    `Timeout`, retry and `buttress.http` call inside takes ``min(own, remaining)``. A
    client may ask for a shorter one with a header (capped by ``timeout``).

    Args:
        app: the ASGI application.
        timeout: seconds per request (default 30).
        header: request header carrying a client deadline in seconds (default
            ``x-request-timeout``; None to ignore clients).
        exempt_paths: paths without a deadline (streaming endpoints, health).
        clock: time source of the deadline (tests pass a `buttress.testing.FakeClock`).

    Example::

        app = DeadlineMiddleware(app, timeout=10.0)
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        timeout: float = 30.0,
        header: str | None = "x-request-timeout",
        exempt_paths: tuple[str, ...] = (),
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.app = app
        self.policy = Timeout(timeout, name="request", clock=clock)
        self.timeout = self.policy.seconds
        self.pipeline = Pipeline(self.policy, name=None)
        self.header = header.lower().encode("latin-1") if header else None
        self.exempt = frozenset(exempt_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        asked = None
        if self.header is not None:
            for name, value in scope["headers"]:
                if name == self.header:
                    try:
                        asked = float(value)
                    except ValueError:
                        asked = None
                    if asked is not None and not 0 < asked < self.timeout:
                        asked = None  # nonsense or longer than ours: ours applies
                    break
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        # the pipeline's compiled link, called directly: one coroutine frame fewer than acall
        link = self.pipeline._async or self.pipeline._build_async()
        try:
            if asked is None:
                await link(self.app, (scope, receive, tracking_send), {})
            else:
                with deadline(asked):
                    await link(self.app, (scope, receive, tracking_send), {})
        except DeadlineExceeded as exc:
            if started:
                raise  # part of the response is out: the server must drop the connection
            await send_problem(
                send,
                ErrorCode.DEADLINE_EXCEEDED,
                detail=str(exc),
                headers=[(b"connection", b"close")],
            )
