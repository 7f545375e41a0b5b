"""`Pipeline`: compose policies, first listed = outermost, validated when built.

The pipeline compiles its policies into one chain of links for threads and one for
asyncio, once, on first use; a call then costs one frame per policy and no dispatch.

When every policy outside its first `CircuitBreaker` has a `Passage` (a `Timeout`, a
`Retry` with the default ``retry_on``, a `Bulkhead`), the pipeline also answers that
breaker's rejection up front: while the breaker is open, a call is rejected before any
link is entered, with the same exception, the same events and the same retry-budget
deposit as the chain would have produced. A closed breaker costs the check one read.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ParamSpec, TypeVar, overload

from buttress._clock import SYSTEM_CLOCK, Clock
from buttress.errors import ConfigurationError
from buttress.resilience._breaker import CircuitBreaker
from buttress.resilience._hedge import Hedge
from buttress.resilience._metering import metered_async, metered_sync
from buttress.resilience._policy import (
    AsyncLink,
    BuildContext,
    Passage,
    Policy,
    SyncLink,
    call_terminal,
)
from buttress.resilience._registry import registry
from buttress.resilience._retry import Retry
from buttress.resilience._timeout import Timeout
from buttress.telemetry import Hook, meters

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
        traced: record a span per call (and per attempt) when OpenTelemetry is on
            (`buttress.otel`); decided when the pipeline first runs. Default True.

    A named pipeline built while a meter is added (`buttress.telemetry.add_meter`;
    ``harden(metrics_detail=True)`` adds Prometheus') reports every call's duration and
    outcome: ``buttress_pipeline_calls_total{pipeline,outcome}`` and
    ``buttress_pipeline_call_duration_seconds{pipeline}``.

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

    __slots__ = (
        "__weakref__",
        "_async",
        "_ctx",
        "_gate",
        "_gate_admits",
        "_gate_counts",
        "_sync",
        "_traced",
        "hooks",
        "name",
        "policies",
    )

    def __init__(
        self,
        *policies: Policy,
        name: str | None = None,
        hooks: Sequence[Hook] = (),
        traced: bool = True,
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
        self._traced = traced
        _validate(self.policies)
        self._ctx = BuildContext(name, self.hooks)
        self._sync: SyncLink | None = None
        self._async: AsyncLink | None = None
        self._gate: CircuitBreaker | None = None
        self._gate_admits: tuple[Callable[[float], bool], ...] = ()
        self._gate_counts: tuple[Callable[[float], None], ...] = ()
        self._find_gate()
        if name is not None:
            registry.add_pipeline(self)

    def __repr__(self) -> str:
        inner = ", ".join(repr(p) for p in self.policies)
        label = f", name={self.name!r}" if self.name else ""
        return f"Pipeline({inner}{label})"

    # ------------------------------------------------------------ compilation
    def _find_gate(self) -> None:
        """Find the breaker whose rejections can be answered up front (see the module)."""
        passages: list[Passage] = []
        for policy in self.policies:
            if type(policy) is CircuitBreaker:  # a subclass may drive calls its own way
                if all(p.clock is policy.clock for p in passages):
                    self._gate = policy
                    self._gate_admits = tuple(p.admits for p in passages if p.admits)
                    self._gate_counts = tuple(p.count for p in passages if p.count)
                return
            passage = policy.passage()
            if passage is None:
                return
            passages.append(passage)

    def _reject_if_open(self, gate: CircuitBreaker) -> None:
        """Raise ``gate``'s rejection now if the chain would raise it; else return."""
        now = gate.clock.now()
        left = gate.open_for(now)
        if not left:
            return
        for admits in self._gate_admits:
            if not admits(now):
                return
        for count in self._gate_counts:
            count(now)
        raise gate.rejection(self._ctx, left)

    def _tracing(self) -> Any:
        """OpenTelemetry's links for this pipeline when tracing is on, else None (once)."""
        if not self._traced or (
            "opentelemetry.trace" not in sys.modules and not os.environ.get("BUTTRESS_OTEL")
        ):
            return None
        from buttress.otel import pipeline_tracing  # noqa: PLC0415 - only with OpenTelemetry

        tracing = pipeline_tracing(self)
        if tracing is not None:
            self._gate = None  # an open breaker's rejection goes through the spans too
        return tracing

    def _metering(self) -> Clock | None:
        """The clock to measure calls on when meters are added and the pipeline is named."""
        if self.name is None or not meters():
            return None
        self._gate = None  # an open breaker's rejection is a measured call too
        clocks = (getattr(p, "clock", None) for p in self.policies)
        return next((c for c in clocks if isinstance(c, Clock)), SYSTEM_CLOCK)

    def _build_sync(self) -> SyncLink:
        tracing = self._tracing()
        metering = self._metering()
        link: SyncLink = call_terminal
        for policy in reversed(self.policies):
            if tracing is not None:
                link = tracing.inside(policy, link, sync=True)
            link = policy.wrap(link, self._ctx)
            if tracing is not None:
                link = tracing.outside(policy, link, sync=True)
        if metering is not None:
            link = metered_sync(link, self.name or "", metering)
        if tracing is not None:
            link = tracing.span(link, sync=True)
        self._sync = link
        return link

    def _build_async(self) -> AsyncLink:
        # The innermost link returns the coroutine itself; the next link awaits it, which
        # saves one coroutine frame per call.
        tracing = self._tracing()
        metering = self._metering()
        link: AsyncLink = call_terminal
        for policy in reversed(self.policies):
            if tracing is not None:
                link = tracing.inside(policy, link, sync=False)
            link = policy.awrap(link, self._ctx)
            if tracing is not None:
                link = tracing.outside(policy, link, sync=False)
        if metering is not None:
            link = metered_async(link, self.name or "", metering)
        if tracing is not None:
            link = tracing.span(link, sync=False)
        self._async = link
        return link

    # ------------------------------------------------------------ calling
    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call ``fn(*args, **kwargs)`` through the pipeline (threads)."""
        link = self._sync or self._build_sync()
        gate = self._gate
        if gate is not None and gate.closed_permit < 0:
            self._reject_if_open(gate)
        result: R = link(fn, args, kwargs)
        return result

    async def acall(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await ``fn(*args, **kwargs)`` through the pipeline (asyncio)."""
        link = self._async or self._build_async()
        gate = self._gate
        if gate is not None and gate.closed_permit < 0:
            self._reject_if_open(gate)
        result: R = await link(fn, args, kwargs)
        return result

    @overload
    def __call__(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]: ...
    @overload
    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]: ...

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate a function (sync or async) so that every call goes through the pipeline."""
        gate = self._gate
        if inspect.iscoroutinefunction(fn):
            pipeline = self
            if gate is None:

                @functools.wraps(fn)
                async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                    link = pipeline._async or pipeline._build_async()
                    return await link(fn, args, kwargs)

                return async_wrapper

            @functools.wraps(fn)
            async def gated_async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                link = pipeline._async or pipeline._build_async()
                # spans or meters, decided when the chain was built, see every rejection
                if gate.closed_permit < 0 and pipeline._gate is not None:
                    pipeline._reject_if_open(gate)
                return await link(fn, args, kwargs)

            return gated_async_wrapper
        # build now, so that a sync-only mistake (a Hedge) surfaces at decoration time
        link = self._sync or self._build_sync()
        sync_gate = self._gate  # the build may have given it up (spans, meters)
        if sync_gate is None:

            @functools.wraps(fn)
            def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                return link(fn, args, kwargs)

            return wrapper
        reject_if_open = self._reject_if_open

        @functools.wraps(fn)
        def gated_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            if sync_gate.closed_permit < 0:
                reject_if_open(sync_gate)
            return link(fn, args, kwargs)

        return gated_wrapper


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
