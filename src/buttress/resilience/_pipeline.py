"""`Pipeline`: compose policies, first listed = outermost, validated when built.

The pipeline compiles its policies into one chain of links for threads and one for
asyncio, once, on first use; a call then costs one frame per policy and no dispatch.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ParamSpec, TypeVar, overload

from buttress.errors import ConfigurationError
from buttress.resilience._breaker import CircuitBreaker
from buttress.resilience._hedge import Hedge
from buttress.resilience._policy import AsyncLink, BuildContext, Policy, SyncLink, call_terminal
from buttress.resilience._registry import registry
from buttress.resilience._retry import Retry
from buttress.resilience._timeout import Timeout
from buttress.telemetry import Hook

__all__ = ["Pipeline"]

P = ParamSpec("P")
R = TypeVar("R")


class Pipeline:
    """A composition of resilience policies; the first listed is the outermost.

    Args:
        *policies: `Timeout`, `Retry`, `CircuitBreaker`, `Bulkhead`, `RateLimiter`,
            `Fallback`, `Hedge` (or any `Policy`), outermost first.
        name: label for events and metrics; named pipelines are listed by
            `buttress.resilience.registry`.
        hooks: event hooks for this pipeline (in addition to the global ones).

    The whole pipeline is validated when it is built: an attempt timeout (a `Timeout`
    inside a `Retry`) must be shorter than the total timeout (one outside it); a breaker's
    time window must be at least twice the attempt timeout; the retry delays must fit in
    the total timeout. A violation raises `ConfigurationError` naming the option and the
    allowed range.

    Example::

        pipe = Pipeline(
            Timeout(30.0),                                   # total budget
            Retry(attempts=3, budget=RetryBudget()),
            CircuitBreaker(failure_rate=0.5, window=30.0),
            Timeout(10.0),                                   # per attempt
            Bulkhead(max_concurrent=25),
            name="payments",
        )
        pipe.call(charge, order)          # threads
        await pipe.acall(acharge, order)  # asyncio

        @pipe
        async def fetch(url: str) -> bytes: ...
    """

    __slots__ = ("__weakref__", "_async", "_ctx", "_sync", "hooks", "name", "policies")

    def __init__(
        self, *policies: Policy, name: str | None = None, hooks: Sequence[Hook] = ()
    ) -> None:
        for i, policy in enumerate(policies):
            if not isinstance(policy, Policy):
                raise ConfigurationError(
                    f"Pipeline(policy #{i + 1} = {policy!r}): must be a buttress Policy "
                    "(Timeout, Retry, CircuitBreaker, Bulkhead, RateLimiter, Fallback, Hedge)"
                )
        if name is not None and (not isinstance(name, str) or not name):
            raise ConfigurationError(f"Pipeline(name={name!r}): must be a non-empty string")
        for hook in hooks:
            if not callable(hook):
                raise ConfigurationError(f"Pipeline(hooks=[{hook!r}]): every hook must be callable")
        self.policies: tuple[Policy, ...] = tuple(policies)
        self.name = name
        self.hooks: tuple[Hook, ...] = tuple(hooks)
        _validate(self.policies)
        self._ctx = BuildContext(name, self.hooks)
        self._sync: SyncLink | None = None
        self._async: AsyncLink | None = None
        if name is not None:
            registry.add_pipeline(self)

    def __repr__(self) -> str:
        inner = ", ".join(repr(p) for p in self.policies)
        label = f", name={self.name!r}" if self.name else ""
        return f"Pipeline({inner}{label})"

    # ------------------------------------------------------------ compilation
    def _build_sync(self) -> SyncLink:
        link: SyncLink = call_terminal
        for policy in reversed(self.policies):
            link = policy.wrap(link, self._ctx)
        self._sync = link
        return link

    def _build_async(self) -> AsyncLink:
        # The innermost link returns the coroutine itself; the next link awaits it, which
        # saves one coroutine frame per call.
        link: AsyncLink = call_terminal
        for policy in reversed(self.policies):
            link = policy.awrap(link, self._ctx)
        self._async = link
        return link

    # ------------------------------------------------------------ calling
    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call ``fn(*args, **kwargs)`` through the pipeline (threads)."""
        link = self._sync or self._build_sync()
        result: R = link(fn, args, kwargs)
        return result

    async def acall(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await ``fn(*args, **kwargs)`` through the pipeline (asyncio)."""
        link = self._async or self._build_async()
        result: R = await link(fn, args, kwargs)
        return result

    @overload
    def __call__(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]: ...
    @overload
    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]: ...

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate a function (sync or async) so that every call goes through the pipeline."""
        if inspect.iscoroutinefunction(fn):
            pipeline = self

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                link = pipeline._async or pipeline._build_async()
                return await link(fn, args, kwargs)

            return async_wrapper
        # build now, so that a sync-only mistake (a Hedge) surfaces at decoration time
        link = self._sync or self._build_sync()

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            return link(fn, args, kwargs)

        return wrapper


def _validate(policies: tuple[Policy, ...]) -> None:
    """Cross-policy checks (Polly's standard-handler validator, extended)."""
    retry_at = next((i for i, p in enumerate(policies) if isinstance(p, Retry)), None)
    timeouts = [(i, p) for i, p in enumerate(policies) if isinstance(p, Timeout)]
    total: Timeout | None = None
    attempt: Timeout | None = None
    if retry_at is not None:
        outer = [p for i, p in timeouts if i < retry_at]
        inner = [p for i, p in timeouts if i > retry_at]
        total = min(outer, key=lambda t: t.seconds) if outer else None
        attempt = min(inner, key=lambda t: t.seconds) if inner else None
    elif timeouts:
        total = min((p for _, p in timeouts), key=lambda t: t.seconds)
    if total is not None and attempt is not None and attempt.seconds >= total.seconds:
        raise ConfigurationError(
            f"Pipeline: the attempt Timeout({attempt.seconds:g}) must be shorter than the total "
            f"Timeout({total.seconds:g}); allowed: 0 < attempt timeout < {total.seconds:g} s"
        )
    for i, policy in enumerate(policies):
        if not isinstance(policy, CircuitBreaker) or policy.window_calls is not None:
            continue
        inside = [p.seconds for j, p in timeouts if j > i]
        cut = min(inside) if inside else (attempt.seconds if attempt is not None else None)
        if cut is not None and policy.window < 2 * cut:
            raise ConfigurationError(
                f"Pipeline: CircuitBreaker(window={policy.window:g}) must be at least twice the "
                f"attempt timeout ({cut:g} s), or one slow call fills the window; allowed: "
                f"window >= {2 * cut:g} s"
            )
    if retry_at is not None and total is not None:
        retry = policies[retry_at]
        assert isinstance(retry, Retry)  # noqa: S101 - narrowed by retry_at
        retries = retry.attempts - 1
        if retries:
            floor = sum(retry.backoff.minimum(n) for n in range(1, retries + 1))
            first = retry.backoff.nominal(1)
            if floor >= total.seconds or (
                retry.backoff.jitter == "none" and first >= total.seconds
            ):
                raise ConfigurationError(
                    f"Pipeline: Retry(attempts={retry.attempts}) with {retry.backoff!r} waits at "
                    f"least {floor:g} s between attempts, which cannot fit in the total "
                    f"Timeout({total.seconds:g}); allowed: fewer attempts, a shorter backoff, or "
                    f"a total timeout > {max(floor, first):g} s"
                )
    hedges = [p for p in policies if isinstance(p, Hedge)]
    if len(hedges) > 1:
        raise ConfigurationError("Pipeline: at most one Hedge per pipeline")
