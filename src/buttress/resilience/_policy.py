"""The policy protocol every building block of a `Pipeline` follows.

A policy is two things:

* a small synchronous, non-blocking state machine (permission protocol:
  ``acquire -> permit or rejection(retry_after)``, ``record(outcome, elapsed)``,
  ``next_delay(attempt, error)``) that never sleeps and never holds a lock across an
  ``await``; it is shared by every call and by sync and async callers alike;
* two thin drivers, ``_wrap`` (threads) and ``_awrap`` (asyncio), that a `Pipeline`
  composes into one chain at build time. Only drivers sleep, wait or await.

A link in the chain has the signature ``link(fn, args, kwargs)``: the arguments are
packed once by the pipeline and unpacked once by the innermost link, so each policy costs
one frame and no re-packing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from buttress.errors import ConfigurationError
from buttress.telemetry import Event, Hook, emit

__all__ = ["AsyncLink", "BuildContext", "Policy", "SyncLink", "call_terminal"]

SyncLink: TypeAlias = Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any]], Any]
AsyncLink: TypeAlias = Callable[
    [Callable[..., Any], tuple[Any, ...], dict[str, Any]], Awaitable[Any]
]


@dataclass(frozen=True, slots=True)
class BuildContext:
    """What a driver knows about the pipeline it is compiled into."""

    pipeline: str | None
    hooks: tuple[Hook, ...] = ()

    def emit(self, event: Event) -> None:
        """Deliver an event to this pipeline's hooks and the global ones."""
        emit(event, self.hooks)


def call_terminal(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The innermost link: call the function (for async, return its coroutine unawaited).

    A policy whose ``inner`` is this link may call ``fn(*args, **kwargs)`` itself and save
    a frame on every call (the hot policies do).
    """
    return fn(*args, **kwargs)


class Policy:
    """Base class of the resilience policies.

    Subclasses implement `_wrap` and `_awrap`. ``name`` labels events, metrics and the
    registry; it defaults to the policy's kind (``retry``, ``circuit_breaker``...).
    """

    __slots__ = ("name",)
    kind: str = "policy"

    def __init__(self, name: str | None) -> None:
        if name is not None and (not isinstance(name, str) or not name):
            raise ConfigurationError(
                f"{type(self).__name__}(name={name!r}): must be a non-empty string or None"
            )
        self.name: str = name or self.kind

    def _wrap(self, inner: SyncLink, ctx: BuildContext) -> SyncLink:
        raise NotImplementedError  # pragma: no cover - every policy overrides it

    def _awrap(self, inner: AsyncLink, ctx: BuildContext) -> AsyncLink:
        raise NotImplementedError  # pragma: no cover - every policy overrides it


# ---------------------------------------------------------------- option validation
def check_positive(owner: str, option: str, value: object, *, allow_zero: bool = False) -> float:
    """Return ``value`` as a float, or raise `ConfigurationError` naming the option."""
    bound = ">= 0" if allow_zero else "> 0"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(
            f"{owner}({option}={value!r}): must be a number of seconds {bound}"
        )
    number = float(value)
    ok = number >= 0 if allow_zero else number > 0
    if not ok or number != number or number == float("inf"):  # noqa: PLR0124 - NaN check
        raise ConfigurationError(f"{owner}({option}={value!r}): must be a finite number {bound}")
    return number


def check_int(owner: str, option: str, value: object, *, minimum: int) -> int:
    """Return ``value`` as an int >= ``minimum``, or raise `ConfigurationError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{owner}({option}={value!r}): must be an integer >= {minimum}")
    return value


def check_ratio(owner: str, option: str, value: object, *, allow_zero: bool = False) -> float:
    """Return ``value`` as a float in (0, 1] (or [0, 1]), or raise `ConfigurationError`."""
    low = "[0" if allow_zero else "(0"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{owner}({option}={value!r}): must be a number in {low}, 1]")
    number = float(value)
    if not (number >= 0 if allow_zero else number > 0) or number > 1:
        raise ConfigurationError(f"{owner}({option}={value!r}): must be a number in {low}, 1]")
    return number


def check_callable(owner: str, option: str, value: object) -> None:
    """Raise `ConfigurationError` unless ``value`` is None or callable."""
    if value is not None and not callable(value):
        raise ConfigurationError(f"{owner}({option}={value!r}): must be a callable or None")


ErrorMatcher: TypeAlias = (
    Callable[[BaseException], bool] | type[BaseException] | tuple[type[BaseException], ...]
)


def error_predicate(
    owner: str, option: str, value: ErrorMatcher
) -> Callable[[BaseException], bool]:
    """Turn an exception type, a tuple of types or a predicate into a predicate."""
    if isinstance(value, type):
        if issubclass(value, BaseException):
            kind: type[BaseException] = value
            return lambda exc: isinstance(exc, kind)
    elif isinstance(value, tuple):
        if value and all(isinstance(k, type) and issubclass(k, BaseException) for k in value):
            kinds: tuple[type[BaseException], ...] = value
            return lambda exc: isinstance(exc, kinds)
    elif callable(value):
        return value
    raise ConfigurationError(
        f"{owner}({option}={value!r}): must be a predicate, an exception type or a tuple of "
        "exception types"
    )


def names(policies: Sequence[Policy]) -> str:
    """``Timeout, Retry, ...`` for messages."""
    return ", ".join(type(p).__name__ for p in policies)
