"""The policy protocol every building block of a `Pipeline` follows, and how to write one.

A policy is two things:

* a small synchronous, non-blocking state machine (permission protocol:
  ``acquire -> permit or rejection(retry_after)``, ``record(outcome, elapsed)``,
  ``next_delay(attempt, error)``) that never sleeps and never holds a lock across an
  ``await``; it is shared by every call and by sync and async callers alike;
* two thin drivers, `Policy.wrap` (threads) and `Policy.awrap` (asyncio), that a
  `Pipeline` composes into one chain at build time. Only drivers sleep, wait or await.
  The drivers of `Retry`, `CircuitBreaker`, `Bulkhead` and `Fallback` are written once,
  for asyncio, and their thread twins generated (``_drivers_async.py`` ->
  ``_drivers_sync.py``); `Timeout` and `Hedge` differ by nature and keep their own.

A link in the chain has the signature ``link(fn, args, kwargs)``: the arguments are
packed once by the pipeline and unpacked once by the innermost link, so each policy costs
one frame and no re-packing.

A policy may also describe, with a `Passage`, what its link does with a call that a
policy inside it rejects before the call starts; a pipeline whose policies outside its
circuit breaker all have one answers an open breaker's rejection up front, without
entering their links (see `Policy.passage`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from buttress._clock import Clock
from buttress.errors import ConfigurationError
from buttress.telemetry import Event, Hook, emit, global_hooks

__all__ = ["AsyncLink", "BuildContext", "Passage", "Policy", "SyncLink", "call_terminal"]

SyncLink: TypeAlias = Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any]], Any]
"""A compiled thread link: ``link(fn, args, kwargs)`` returns what ``fn`` returned."""

AsyncLink: TypeAlias = Callable[
    [Callable[..., Any], tuple[Any, ...], dict[str, Any]], Awaitable[Any]
]
"""A compiled asyncio link: ``await link(fn, args, kwargs)`` returns what ``fn`` returned."""


@dataclass(frozen=True, slots=True)
class BuildContext:
    """What a driver knows about the pipeline it is compiled into.

    Attributes:
        pipeline: the pipeline's name (None when unnamed).
        hooks: the pipeline's own event hooks (the global ones are added by `emit`).
    """

    pipeline: str | None
    hooks: tuple[Hook, ...] = ()

    def emit(self, event: Event) -> None:
        """Deliver an event to this pipeline's hooks and the global ones."""
        emit(event, self.hooks)

    @property
    def listening(self) -> bool:
        """Whether any hook would receive an event now (skip building events otherwise)."""
        return bool(self.hooks or global_hooks())


@dataclass(frozen=True, slots=True)
class Passage:
    """What a policy's link does with a call that a policy inside it rejects at once.

    A policy returns one from `Policy.passage` when its link lets such a rejection (an
    open breaker's `CircuitOpen`) through unchanged, emits no event for it, and does
    nothing else that ``admits`` and ``count`` do not describe. A pipeline whose
    policies outside its first `CircuitBreaker` all have a passage checks that breaker
    before entering any link: when it is open and every ``admits(now)`` is true, it calls
    every ``count(now)``, outermost first, and raises the breaker's rejection, exactly
    what the chain would have done, at a fraction of the cost.

    Attributes:
        clock: the clock the link reads (the pipeline answers up front only when this is
            the breaker's clock).
        admits: ``admits(now)``: whether a call arriving at ``now`` would go straight to
            the inner link (no deadline passed, a free slot...); None: always.
        count: ``count(now)``: the bookkeeping the link does for such a call (a retry
            budget's deposit); None: nothing.
    """

    clock: Clock
    admits: Callable[[float], bool] | None = None
    count: Callable[[float], None] | None = None


def call_terminal(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The innermost link: call the function (for async, return its coroutine unawaited).

    A policy whose ``inner`` is this link may call ``fn(*args, **kwargs)`` itself and save
    a frame on every call (the hot policies do).
    """
    return fn(*args, **kwargs)


class Policy:
    """Base class of the resilience policies: the built-in ones and your own.

    A policy compiles into one link of a pipeline's chain: `wrap` for threads, `awrap`
    for asyncio. Each is called once per pipeline, when it is first used, with ``inner``,
    the rest of the chain, and returns a function ``link(fn, args, kwargs)`` that does the
    policy's work around ``inner(fn, args, kwargs)`` (which runs the policies inside this
    one, then ``fn(*args, **kwargs)``). Keep per-call state in the link's locals, never on
    the policy: one policy serves every call, in every thread and task. A policy that
    supports only one of the two leaves the other to this class, which refuses it with
    `ConfigurationError` when the pipeline is built.

    ``name`` labels events, metrics and the registry; it defaults to the policy's ``kind``
    (``retry``, ``circuit_breaker``...).

    Example (a policy that counts the calls it lets through)::

        from buttress import Pipeline, Retry
        from buttress.resilience import AsyncLink, BuildContext, Policy, SyncLink

        class Counted(Policy):
            kind = "counted"

            def __init__(self, name: str | None = None) -> None:
                super().__init__(name)
                self.calls = 0

            def wrap(self, inner: SyncLink, ctx: BuildContext) -> SyncLink:
                def link(fn, args, kwargs):
                    self.calls += 1
                    return inner(fn, args, kwargs)

                return link

            def awrap(self, inner: AsyncLink, ctx: BuildContext) -> AsyncLink:
                async def link(fn, args, kwargs):
                    self.calls += 1
                    return await inner(fn, args, kwargs)

                return link

        counted = Counted()
        Pipeline(Retry(attempts=3), counted).call(fetch)   # counts every attempt

    See "Writing your own policy" in docs/concepts.md.
    """

    __slots__ = ("name",)
    kind: str = "policy"

    def __init__(self, name: str | None = None) -> None:
        if name is not None and (not isinstance(name, str) or not name):
            raise ConfigurationError(
                f"{type(self).__name__}(name={name!r}): must be a non-empty string or None"
            )
        self.name: str = name or self.kind

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Policies written against the hooks' former, private names (`_wrap`, `_awrap`)
        # keep working: `wrap`/`awrap` call them.
        spaces = [vars(k) for k in cls.__mro__ if k is not Policy]
        cls._legacy_sync = any("_wrap" in space for space in spaces)
        cls._legacy_async = any("_awrap" in space for space in spaces)

    _legacy_sync: bool = False
    _legacy_async: bool = False

    def wrap(self, inner: SyncLink, ctx: BuildContext) -> SyncLink:
        """Compile this policy's link for threads around ``inner`` (override it)."""
        if self._legacy_sync:
            return self._wrap(inner, ctx)
        raise ConfigurationError(
            f"{type(self).__name__} has no driver for threads: use pipeline.acall(), or "
            "implement wrap()"
        )

    def awrap(self, inner: AsyncLink, ctx: BuildContext) -> AsyncLink:
        """Compile this policy's link for asyncio around ``inner`` (override it)."""
        if self._legacy_async:
            return self._awrap(inner, ctx)
        raise ConfigurationError(
            f"{type(self).__name__} has no driver for asyncio: use pipeline.call(), or "
            "implement awrap()"
        )

    def passage(self) -> Passage | None:
        """How this policy's link treats a call an inner policy rejects at once (`Passage`).

        None (the default) when the link does anything with it that a `Passage` cannot
        describe: catches it, retries it, reports it, spends a token... A pipeline then
        always runs such a call through the link.
        """
        return None

    # The hooks' former, private names: policies that override them keep working.
    def _wrap(self, inner: SyncLink, ctx: BuildContext) -> SyncLink:
        return self.wrap(inner, ctx)

    def _awrap(self, inner: AsyncLink, ctx: BuildContext) -> AsyncLink:
        return self.awrap(inner, ctx)


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
