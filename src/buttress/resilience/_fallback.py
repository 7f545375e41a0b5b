"""`Fallback`: answer something useful when the call fails.

Put it first (outermost) so it sees what every other policy gave up on: an open circuit,
a full bulkhead, retries exhausted, a timeout.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from buttress.errors import ConfigurationError
from buttress.resilience._policy import (
    AsyncLink,
    BuildContext,
    ErrorMatcher,
    Policy,
    SyncLink,
    check_callable,
    error_predicate,
)
from buttress.telemetry import FallbackUsedEvent

__all__ = ["Fallback"]

_MISSING: Any = object()


class Fallback(Policy):
    """Replace a failure by a value or by what ``handler(error)`` returns.

    Args:
        handler: called with the exception; its return value is the call's result. In an
            async pipeline it may be a coroutine function.
        value: a constant result instead of a handler.
        on: which errors to replace: a predicate, an exception type or a tuple of types
            (default: every `Exception`; cancellation is never replaced).
        name: label for events and metrics.

    Example::

        pipe = Pipeline(Fallback(lambda exc: cache.get(key)), CircuitBreaker(), Timeout(1.0))
        pipe = Pipeline(Fallback(value=[]), Retry())
    """

    __slots__ = ("_is_async", "handler", "on", "value")
    kind = "fallback"

    def __init__(
        self,
        handler: Callable[[BaseException], Any] | None = None,
        *,
        value: Any = _MISSING,
        on: ErrorMatcher | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if (handler is None) == (value is _MISSING):
            raise ConfigurationError(
                "Fallback(handler=..., value=...): give exactly one of handler or value"
            )
        check_callable("Fallback", "handler", handler)
        self.handler = handler
        self.value = value
        self._is_async = handler is not None and inspect.iscoroutinefunction(handler)
        self.on: Callable[[BaseException], bool] = (
            _any_exception if on is None else error_predicate("Fallback", "on", on)
        )

    def __repr__(self) -> str:
        return (
            f"Fallback(handler={self.handler!r})"
            if self.handler
            else f"Fallback(value={self.value!r})"
        )

    def _used(self, ctx: BuildContext, exc: BaseException) -> None:
        ctx.emit(FallbackUsedEvent(pipeline=ctx.pipeline, policy=self.name, error=exc))

    def _wrap(self, inner: SyncLink, ctx: BuildContext) -> SyncLink:
        if self._is_async:
            raise ConfigurationError(
                "Fallback(handler=<coroutine function>) needs an async pipeline: use acall()"
            )
        on = self.on
        handler = self.handler
        value = self.value

        def fallback_link(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            try:
                return inner(fn, args, kwargs)
            except Exception as exc:
                if not on(exc):
                    raise
                self._used(ctx, exc)
                return value if handler is None else handler(exc)

        return fallback_link

    def _awrap(self, inner: AsyncLink, ctx: BuildContext) -> AsyncLink:
        on = self.on
        handler = self.handler
        value = self.value
        is_async = self._is_async

        async def fallback_link(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            try:
                return await inner(fn, args, kwargs)
            except Exception as exc:
                if not on(exc):
                    raise
                self._used(ctx, exc)
                if handler is None:
                    return value
                return (await handler(exc)) if is_async else handler(exc)

        return fallback_link


def _any_exception(exc: BaseException) -> bool:
    return True
