"""`Fallback`: answer something useful when the call fails.

Put it first (outermost) so it sees what every other policy gave up on: an open circuit,
a full bulkhead, retries exhausted, a timeout.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from buttress.errors import ConfigurationError
from buttress.resilience import _drivers_async, _drivers_sync
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

    def replace(self, ctx: BuildContext, error: BaseException) -> Any:
        """The result that replaces ``error`` (for a coroutine handler: its coroutine).

        Reports a `FallbackUsedEvent` to ``ctx``'s hooks.
        """
        if ctx.listening:
            ctx.emit(FallbackUsedEvent(pipeline=ctx.pipeline, policy=self.name, error=error))
        return self.value if self.handler is None else self.handler(error)

    async def areplace(self, ctx: BuildContext, error: BaseException) -> Any:
        """`replace`, awaiting a coroutine handler's answer."""
        result = self.replace(ctx, error)
        return (await result) if self._is_async else result

    def wrap(self, inner: SyncLink, ctx: BuildContext) -> SyncLink:
        """The thread link (generated from the asyncio one); refuses a coroutine handler."""
        if self._is_async:
            raise ConfigurationError(
                "Fallback(handler=<coroutine function>) needs an async pipeline: use acall()"
            )
        return _drivers_sync.fallback_link(self, inner, ctx)

    def awrap(self, inner: AsyncLink, ctx: BuildContext) -> AsyncLink:
        """The asyncio link (see ``_drivers_async.fallback_link``)."""
        return _drivers_async.fallback_link(self, inner, ctx)


def _any_exception(exc: BaseException) -> bool:
    return True
