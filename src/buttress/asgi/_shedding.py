"""Load shedding: the stage that answers 503 before the service tips over.

`LoadSheddingMiddleware` is the stage (`buttress.asgi._runner`) that drives a
`ConcurrencyLimiter` (`buttress.asgi._concurrency`: the limit algorithms and the limiter).
It refuses a request with 503 problem+json (type ``overloaded``) and
``Retry-After`` *before* the application runs, and samples each admitted request from its
start to the last byte of its response body. Time is read from an injected `Clock`.

Example::

    from buttress.asgi.middleware import LoadSheddingMiddleware

    app = LoadSheddingMiddleware(app, max_in_flight=200, adaptive="gradient")
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, Literal

from buttress._clock import SYSTEM_CLOCK, Clock
from buttress.asgi._concurrency import ConcurrencyLimiter, ShedReason
from buttress.asgi._limit_algorithms import (
    AIMDLimit,
    GradientLimit,
    LimitAlgorithm,
    check_integer,
    check_number,
)
from buttress.asgi._problem import problem_for_exception, send_problem
from buttress.asgi._runner import Hooks, Stage
from buttress.asgi._types import ASGIApp, Scope, Send
from buttress.errors import ConfigurationError, ErrorCode

__all__ = ["LoadSheddingMiddleware"]

_log = logging.getLogger("buttress")

_GRADIENT_WINDOW: Final = 0.1  # Netflix's shortest window time (its default is 1 s)
_WINDOW_SAMPLES: Final = 10  # Netflix's WindowedLimit default window size
_DEFAULT_EXEMPT: Final = ("/health", "/health/live", "/health/ready", "/metrics")
_DETAIL: Final = "The service is at its concurrency limit; retry after the indicated delay."
_GONE_NAMES: Final = frozenset({"ClientDisconnect", "ClientDisconnected"})


def _client_gone(exc: Exception) -> bool:
    """Whether an exception means the client went away (a cancellation, not a failure).

    A `ConnectionError` (reset, broken pipe), uvicorn's ``ClientDisconnected`` or
    Starlette's ``ClientDisconnect`` (matched by name: buttress imports neither).
    """
    return isinstance(exc, ConnectionError) or any(
        kind.__name__ in _GONE_NAMES for kind in type(exc).__mro__
    )


class LoadSheddingMiddleware(Stage):
    """Answer 503 + ``Retry-After`` before the application runs when the service is full.

    A request is shed (problem+json, code ``overloaded``, type
    ``.../overloaded``) when ``max_in_flight`` requests are already in
    flight, or when the adaptive limit is reached. A request is in flight from admission
    until the application returns (background tasks included). With an adaptive limit,
    every admitted request is also a sample: its RTT runs from admission to the end of the
    response body (``http.response.body`` without ``more_body``, or
    ``http.response.pathsend``) or to the exception that ended it.

    What counts as *dropped* (only `AIMDLimit` acts on it): a response whose status is in
    ``drop_statuses`` (default: 504 only, a request that ran out of time, as Netflix's
    gRPC interceptor counts ``DEADLINE_EXCEEDED``), or an exception the error layer will
    answer with such a status (`buttress.errors.DeadlineExceeded`). Other 5xx responses
    and exceptions are ordinary samples: a bug or a failing dependency that answers fast
    must not shrink the capacity of every other route, and a dependency down behind an
    open circuit is not overload. A request cancelled (task cancelled, or the client
    gone: a `ConnectionError`, uvicorn's ``ClientDisconnected``, Starlette's
    ``ClientDisconnect``) or one whose response never ended gives no sample, only its slot
    back.

    Exempt paths (health, metrics) are never shed and do not count.

    Args:
        app: the ASGI application.
        max_in_flight: a hard cap on requests in flight (None: no hard cap).
        adaptive: ``"gradient"`` (default: `GradientLimit`, samples averaged over windows
            of at least 0.1 s and 10 samples, the ``WindowedLimit`` Netflix recommends for
            servers), ``"aimd"`` (`AIMDLimit`, every sample), a `LimitAlgorithm`
            instance (a `GradientLimit` is windowed like ``"gradient"``, others see every
            sample unless ``window`` says otherwise), or None (the hard cap alone).
        exempt_paths: exact paths never shed.
        retry_after: seconds sent in ``Retry-After`` (rounded up, at least 1).
        on_shed: called with the reason (``"max_in_flight"`` or ``"adaptive"``) for every
            shed request, e.g. to count them; errors it raises are logged and swallowed.
        clock: time source (inject a `FakeClock` in tests).
        window: the shortest sampling window in seconds (windows also hold at least 10
            samples); 0 feeds every sample; None picks 0.1 for a gradient limit and 0
            otherwise.
        drop_statuses: response statuses that count as drops (default ``(504,)``).

    With neither ``max_in_flight`` nor ``adaptive`` the middleware passes everything
    through (the feature is switched off).

    Example::

        from starlette.applications import Starlette
        from buttress.asgi.middleware import LoadSheddingMiddleware

        app = Starlette(routes=routes)
        app = LoadSheddingMiddleware(app, max_in_flight=500, adaptive="gradient",
                                     on_shed=lambda reason: SHED.labels(reason).inc())
        # or: app.add_middleware(LoadSheddingMiddleware, max_in_flight=500)
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_in_flight: int | None = None,
        adaptive: Literal["gradient", "aimd"] | LimitAlgorithm | None = "gradient",
        exempt_paths: Iterable[str] = _DEFAULT_EXEMPT,
        retry_after: float = 1.0,
        on_shed: Callable[[ShedReason], object] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        window: float | None = None,
        drop_statuses: Iterable[int] = (504,),
    ) -> None:
        owner = "LoadSheddingMiddleware"
        algorithm: LimitAlgorithm | None
        if adaptive == "gradient":
            algorithm, default_window = GradientLimit(), _GRADIENT_WINDOW
        elif adaptive == "aimd":
            algorithm, default_window = AIMDLimit(), 0.0
        elif isinstance(adaptive, GradientLimit):
            algorithm, default_window = adaptive, _GRADIENT_WINDOW
        elif adaptive is None or isinstance(adaptive, LimitAlgorithm):
            algorithm, default_window = adaptive, 0.0
        else:
            raise ConfigurationError(
                f"{owner}(adaptive={adaptive!r}): must be 'gradient', 'aimd', None or a "
                "LimitAlgorithm instance (AIMDLimit, GradientLimit)"
            )
        if max_in_flight is not None:
            check_integer(owner, "max_in_flight", max_in_flight, 1)
        if isinstance(exempt_paths, str | bytes):
            raise ConfigurationError(
                f"{owner}(exempt_paths={exempt_paths!r}): must be a collection of paths, "
                "not one string"
            )
        paths = tuple(exempt_paths)
        for path in paths:
            if not isinstance(path, str) or not path.startswith("/"):
                raise ConfigurationError(
                    f"{owner}(exempt_paths=[..., {path!r}, ...]): each must be a path "
                    "starting with '/'"
                )
        seconds = check_number(owner, "retry_after", retry_after)
        if seconds <= 0:
            raise ConfigurationError(
                f"{owner}(retry_after={retry_after!r}): must be a number of seconds > 0"
            )
        if on_shed is not None and not callable(on_shed):
            raise ConfigurationError(f"{owner}(on_shed={on_shed!r}): must be a callable or None")
        statuses = tuple(drop_statuses)
        for status in statuses:
            check_integer(owner, "drop_statuses[]", status, 100, 599)
        if not callable(getattr(clock, "now", None)):
            raise ConfigurationError(f"{owner}(clock={clock!r}): must be a Clock (with now())")
        self.app = app
        self.exempt_paths = frozenset(paths)
        self.retry_after = seconds
        self.on_shed = on_shed
        self.clock = clock
        self._now = clock.now
        self.drop_statuses = frozenset(statuses)
        self.limiter: ConcurrencyLimiter | None = None
        if algorithm is not None or max_in_flight is not None:
            chosen = default_window if window is None else window
            if isinstance(chosen, bool) or not isinstance(chosen, int | float) or not chosen >= 0:
                raise ConfigurationError(
                    f"{owner}(window={window!r}): must be seconds >= 0, or None"
                )
            self.limiter = ConcurrencyLimiter(
                algorithm,
                max_in_flight,
                window=chosen,
                min_window_samples=_WINDOW_SAMPLES if chosen > 0 else 1,
            )

    def __repr__(self) -> str:
        return f"LoadSheddingMiddleware(limiter={self.limiter!r})"

    def stage_hooks(self) -> Hooks:
        """Arrive: admitted or shed; end and fail: the sample; finish: the slot freed."""
        if self.limiter is None:  # switched off
            return Hooks()
        sampled = self.limiter.algorithm is not None
        return Hooks(
            arrive=self.arrive,
            end=self.end if sampled else None,
            fail=self.fail if sampled else None,
            finish=self.finish,
            fields=("shed_in_flight", "shed_started", "shed_end", "shed_dropped"),
        )

    def arrive(self, ex: Any) -> Awaitable[bool] | None:
        """Admit the request, or shed it (503) when the service is at its limit."""
        limiter = self.limiter
        if limiter is None or ex.scope["path"] in self.exempt_paths:
            ex.shed_in_flight = 0
            return None
        in_flight = limiter.admit()
        if in_flight <= 0:
            ex.shed_in_flight = 0
            reason: ShedReason = "max_in_flight" if in_flight == 0 else "adaptive"
            return self._shed(ex.scope, ex.send, reason)
        ex.shed_in_flight = in_flight
        ex.shed_started = self._now()
        ex.shed_end = None
        return None

    def end(self, ex: Any) -> None:
        """The response ended: the sample's end, dropped when its status says so."""
        if ex.shed_in_flight:
            ex.shed_end = self._now()
            ex.shed_dropped = ex.status in self.drop_statuses

    def fail(self, ex: Any, exc: BaseException) -> None:
        """An exception before the end: the sample ends, dropped if it means a timeout."""
        if (
            ex.shed_in_flight
            and ex.shed_end is None
            and isinstance(exc, Exception)
            and not _client_gone(exc)
        ):
            ex.shed_end = self._now()
            ex.shed_dropped = problem_for_exception(exc)[0].http_status in self.drop_statuses

    def finish(self, ex: Any) -> None:
        """Free the slot, with the sample or without one (cancelled, client gone, no end).

        The slot is held until the application returned (background tasks included).
        """
        in_flight = ex.shed_in_flight
        limiter = self.limiter
        if in_flight and limiter is not None:
            end = ex.shed_end  # None with a fixed cap: nothing is sampled
            if end is None:
                limiter.ignore()
            else:
                limiter.release(in_flight, end - ex.shed_started, ex.shed_dropped, end)

    async def _shed(self, scope: Scope, send: Send, reason: ShedReason) -> bool:
        state = scope.get("state")
        if state is not None:  # for the server span (buttress.asgi._tracing)
            state["buttress.shed"] = reason
        if self.on_shed is not None:
            try:
                self.on_shed(reason)
            except Exception:
                _log.exception("LoadSheddingMiddleware on_shed hook failed")
        await send_problem(
            send,
            ErrorCode.OVERLOADED,
            detail=_DETAIL,
            retry_after=self.retry_after,
            head=scope.get("method") == "HEAD",
        )
        return True
