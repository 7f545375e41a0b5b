"""`DeadlineMiddleware`: a deadline per request; past it the handler is cancelled (504).

A stage (see `buttress.asgi._runner`) that owns the "around the handler" position: the
handler runs under the public `buttress.resilience.Timeout`, and a timeout becomes a 504
problem+json. A client may ask for a shorter deadline with a header.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from buttress._clock import SYSTEM_CLOCK, Clock
from buttress.asgi._problem import send_problem
from buttress.asgi._runner import Hooks, Stage
from buttress.asgi._types import ASGIApp, Receive, Scope, Send
from buttress.errors import DeadlineExceeded, ErrorCode
from buttress.resilience import Pipeline, Timeout, deadline

__all__ = ["DeadlineMiddleware"]

_CLOSE = (b"connection", b"close")


def _asked(raw: bytes, timeout: float) -> float | None:
    """A client's deadline in seconds, when it is a number shorter than ``timeout``."""
    try:
        asked = float(raw)
    except ValueError:
        return None
    return asked if 0 < asked < timeout else None  # nonsense or longer: ours applies


class _RequestDeadline(Timeout):
    """The request's own deadline: running out is ``deadline_exceeded``, not ``upstream_timeout``.

    ``upstream_timeout`` says a dependency was slow (an outbound call's own `Timeout`);
    the inbound deadline says the request took too long, whatever it waited on. Its
    `TimeoutEvent` and its `DeadlineExceeded` carry ``deadline_exceeded``.
    """

    __slots__ = ()

    def expired(self, elapsed: float, own: bool) -> tuple[ErrorCode, str]:
        """``deadline_exceeded``, whichever deadline ran out."""
        return (
            ErrorCode.DEADLINE_EXCEEDED,
            f"the request timed out after {elapsed:.3g} s (its deadline passed)",
        )


class DeadlineMiddleware(Stage):
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
        self.policy = _RequestDeadline(timeout, name="request_deadline", clock=clock)
        self.timeout = self.policy.seconds
        # no span of its own: the request's server span is the one (buttress.otel)
        self.pipeline = Pipeline(self.policy, name="inbound", traced=False)
        self.header = header.lower().encode("latin-1") if header else None
        self.exempt = frozenset(exempt_paths)

    def stage_hooks(self) -> Hooks:
        """Around: the handler runs under the deadline; fail: a timeout answers 504."""
        return Hooks(
            around=self.around,
            fail=self.fail,
            reads=frozenset() if self.header is None else frozenset({self.header}),
        )

    def around(self, ex: Any, app: ASGIApp) -> Awaitable[None]:
        """Run ``app`` under the request's deadline (a client's shorter one if it asks)."""
        scope = ex.scope
        if scope["path"] in self.exempt:
            return app(scope, ex.receive, ex.send)
        asked = None
        if self.header is not None:
            values = ex.found.get(self.header)
            if values:  # the first one counts
                asked = _asked(values[0], self.timeout)
        if asked is None:
            return self.pipeline.acall(app, scope, ex.receive, ex.send)
        return self._within(asked, app, scope, ex.receive, ex.send)

    async def _within(
        self, asked: float, app: ASGIApp, scope: Scope, receive: Receive, send: Send
    ) -> None:
        with deadline(asked):
            await self.pipeline.acall(app, scope, receive, send)

    def fail(self, ex: Any, exc: BaseException) -> Awaitable[bool] | None:
        """The deadline passed: 504, unless part of the response is out.

        (Then the server must drop the connection.)
        """
        if not isinstance(exc, DeadlineExceeded) or ex.scope["path"] in self.exempt or ex.status:
            return None
        return self._timed_out(ex.send, exc)

    @staticmethod
    async def _timed_out(send: Send, exc: DeadlineExceeded) -> bool:
        # retriable for the client: the service was slow this time (Retry-After, 1 s)
        await send_problem(
            send,
            ErrorCode.DEADLINE_EXCEEDED,
            detail=str(exc),
            headers=[_CLOSE],
            retriable=True,
        )
        return True
