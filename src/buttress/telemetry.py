"""One event vocabulary for every decision buttress makes, and hooks that consume it.

Policies emit frozen ``...Event`` dataclasses (a retry scheduled, a retry budget exhausted,
a breaker changing state, a call rejected, a timeout, a fallback used, a hedge launched)
to hooks: callables taking one event. Hooks are registered globally with `add_hook` or per
pipeline with ``Pipeline(..., hooks=[...])``. Events are only built off the happy path, so
a pipeline whose calls succeed pays nothing for telemetry.

Two hooks ship: `LoggingHook` (structlog when installed, the standard library otherwise)
and `PrometheusHook` (prometheus-client).

Example::

    from buttress.telemetry import LoggingHook, add_hook

    add_hook(LoggingHook())
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from buttress.errors import ErrorCode

__all__ = [
    "CallRejectedEvent",
    "CircuitStateChangedEvent",
    "Event",
    "FallbackUsedEvent",
    "HedgeLaunchedEvent",
    "Hook",
    "LoggingHook",
    "PrometheusHook",
    "QuotaWarningEvent",
    "RateLimitFallbackEvent",
    "RateLimitedEvent",
    "RetryBudgetExhaustedEvent",
    "RetryGaveUpEvent",
    "RetryScheduledEvent",
    "TimeoutEvent",
    "add_hook",
    "clear_hooks",
    "emit",
    "global_hooks",
    "remove_hook",
]

_log = logging.getLogger("buttress")


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of every event: which pipeline and policy decided."""

    kind: ClassVar[str] = "event"
    level: ClassVar[int] = logging.INFO
    pipeline: str | None = None
    policy: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The event as plain data for a log line (exceptions become their type name)."""
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, BaseException):
                data[key] = type(value).__name__
            elif isinstance(value, ErrorCode):
                data[key] = value.wire
        data["event"] = self.kind
        return data


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryScheduledEvent(Event):
    """A call failed with a retriable error; another attempt will run after ``delay``."""

    kind: ClassVar[str] = "retry_scheduled"
    level: ClassVar[int] = logging.WARNING
    attempt: int
    delay: float
    error: BaseException | None = None
    code: ErrorCode | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryGaveUpEvent(Event):
    """Retrying stopped; ``reason`` says why (attempts, deadline, retry_after_too_long...)."""

    kind: ClassVar[str] = "retry_gave_up"
    level: ClassVar[int] = logging.WARNING
    attempts: int
    elapsed: float
    reason: str
    error: BaseException | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryBudgetExhaustedEvent(Event):
    """A retry was refused because the fleet-protecting retry budget is spent."""

    kind: ClassVar[str] = "retry_budget_exhausted"
    level: ClassVar[int] = logging.WARNING
    attempt: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitStateChangedEvent(Event):
    """A circuit breaker moved between ``closed``, ``open`` and ``half_open``."""

    kind: ClassVar[str] = "circuit_state_changed"
    level: ClassVar[int] = logging.WARNING
    from_state: str
    to_state: str
    generation: int
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class CallRejectedEvent(Event):
    """A policy refused a call without running it (open circuit, full bulkhead, limit)."""

    kind: ClassVar[str] = "call_rejected"
    level: ClassVar[int] = logging.INFO
    code: ErrorCode
    retry_after: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeoutEvent(Event):
    """A timeout cut a call off (async) or a call overran its timeout (sync)."""

    kind: ClassVar[str] = "timeout"
    level: ClassVar[int] = logging.WARNING
    timeout: float
    elapsed: float
    code: ErrorCode = ErrorCode.UPSTREAM_TIMEOUT


@dataclass(frozen=True, slots=True, kw_only=True)
class FallbackUsedEvent(Event):
    """A fallback answered in place of a failed call."""

    kind: ClassVar[str] = "fallback_used"
    level: ClassVar[int] = logging.INFO
    error: BaseException | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HedgeLaunchedEvent(Event):
    """A hedged (parallel) attempt started because the first was slow or failed."""

    kind: ClassVar[str] = "hedge_launched"
    level: ClassVar[int] = logging.INFO
    attempt: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitedEvent(Event):
    """An inbound request was refused (429) by the rate limit named ``policy``.

    ``key_hash`` is an HMAC of the key (never the raw API key, address or user id), so one
    client's refusals can be correlated without logging who it is.
    """

    kind: ClassVar[str] = "rate_limited"
    level: ClassVar[int] = logging.INFO
    route: str
    method: str = ""
    key_hash: str
    retry_after: float


@dataclass(frozen=True, slots=True, kw_only=True)
class QuotaWarningEvent(Event):
    """A key crossed the warning share of the rate limit ``policy`` (once per crossing)."""

    kind: ClassVar[str] = "quota_warning"
    level: ClassVar[int] = logging.INFO
    route: str = ""
    key_hash: str
    used_ratio: float
    remaining: int
    limit: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitFallbackEvent(Event):
    """The shared rate-limit store failed (``engaged``) or answers again (not ``engaged``).

    ``mode`` is ``open`` (decided by a local in-memory limiter meanwhile) or ``closed``
    (requests answered 503 meanwhile); ``error`` is the failure that engaged it, if any.
    """

    kind: ClassVar[str] = "rate_limit_fallback"
    level: ClassVar[int] = logging.WARNING
    engaged: bool
    mode: str
    reason: str = ""
    error: BaseException | None = None


# events LoggingHook marks as audit records (``audit=True``): who was throttled, and when
# the limits were not enforced as configured
_AUDIT_EVENTS = (RateLimitedEvent, QuotaWarningEvent, RateLimitFallbackEvent)


Hook = Callable[[Event], object]

_hooks_lock = threading.Lock()
_global_hooks: tuple[Hook, ...] = ()


def add_hook(hook: Hook) -> None:
    """Send every event from every pipeline to ``hook`` as well."""
    global _global_hooks
    with _hooks_lock:
        if hook not in _global_hooks:
            _global_hooks = (*_global_hooks, hook)


def remove_hook(hook: Hook) -> None:
    """Stop sending events to ``hook`` (no-op when it was not registered)."""
    global _global_hooks
    with _hooks_lock:
        _global_hooks = tuple(h for h in _global_hooks if h != hook)


def clear_hooks() -> None:
    """Remove every global hook."""
    global _global_hooks
    with _hooks_lock:
        _global_hooks = ()


def global_hooks() -> tuple[Hook, ...]:
    """The hooks registered with `add_hook`."""
    return _global_hooks


def emit(event: Event, hooks: Iterable[Hook] = ()) -> None:
    """Deliver ``event`` to ``hooks`` and the global ones; a failing hook is logged, not raised."""
    for hook in (*hooks, *_global_hooks):
        try:
            hook(event)
        except Exception:
            _log.exception("buttress telemetry hook %r failed on %s", hook, event.kind)


@dataclass(slots=True)
class LoggingHook:
    """Log every event as one structured line.

    Uses structlog when it is installed (key-value pairs), the standard ``logging``
    module otherwise (message plus ``extra``).

    Example::

        add_hook(LoggingHook(logger_name="myservice.resilience"))
    """

    logger_name: str = "buttress"
    _logger: Any = field(init=False, repr=False, default=None)
    _structured: bool = field(init=False, repr=False, default=False)

    def __post_init__(self) -> None:
        try:
            import structlog  # noqa: PLC0415 - optional dependency

            self._logger = structlog.get_logger(self.logger_name)
            self._structured = True
        except ImportError:
            self._logger = logging.getLogger(self.logger_name)

    def __call__(self, event: Event) -> None:
        """Log ``event``."""
        data = event.as_dict()
        name = data.pop("event")
        if isinstance(event, _AUDIT_EVENTS):
            data["audit"] = True
        if self._structured:
            self._logger.log(event.level, name, **data)
        else:
            detail = " ".join(f"{k}={v}" for k, v in data.items() if v is not None)
            self._logger.log(event.level, "%s %s", name, detail, extra={"buttress": data})


_STATE_VALUE = {"closed": 0, "open": 1, "half_open": 2}


class PrometheusHook:
    """Count events in Prometheus metrics (needs ``prometheus-client``).

    Metrics (prefix configurable):
    ``buttress_retries_total{pipeline,policy,code}``,
    ``buttress_retry_gave_up_total{pipeline,policy,reason}``,
    ``buttress_retry_budget_exhausted_total{pipeline,policy}``,
    ``buttress_rejections_total{pipeline,policy,code}``,
    ``buttress_timeouts_total{pipeline,policy,code}``,
    ``buttress_fallbacks_total{pipeline,policy}``, ``buttress_hedges_total{pipeline,policy}``,
    ``buttress_circuit_state{breaker}`` (0 closed, 1 open, 2 half-open) and
    ``buttress_circuit_transitions_total{breaker,to_state}``; for inbound rate limits
    ``buttress_rate_limited_total{policy}``, ``buttress_quota_warnings_total{policy}``,
    ``buttress_rate_limit_fallbacks_total{policy,mode}`` and
    ``buttress_rate_limit_fallback_engaged{policy}`` (1 while the store is bypassed). Keys
    are never labels.

    Example::

        from prometheus_client import CollectorRegistry
        add_hook(PrometheusHook(registry=CollectorRegistry()))
    """

    def __init__(self, *, registry: Any = None, prefix: str = "buttress") -> None:
        try:
            import prometheus_client as prom  # noqa: PLC0415 - optional dependency
        except ImportError as exc:  # pragma: no cover - exercised without the extra
            from buttress.errors import ConfigurationError  # noqa: PLC0415

            raise ConfigurationError(
                "PrometheusHook needs prometheus-client: pip install 'buttress[metrics]'"
            ) from exc
        reg = registry if registry is not None else prom.REGISTRY
        p = prefix

        def counter(name: str, doc: str, labels: list[str]) -> Any:
            return prom.Counter(f"{p}_{name}", doc, labels, registry=reg)

        self.retries = counter("retries", "Retries scheduled", ["pipeline", "policy", "code"])
        self.gave_up = counter(
            "retry_gave_up", "Calls that stopped retrying", ["pipeline", "policy", "reason"]
        )
        self.budget = counter(
            "retry_budget_exhausted", "Retries refused by the retry budget", ["pipeline", "policy"]
        )
        self.rejections = counter(
            "rejections", "Calls rejected by a policy", ["pipeline", "policy", "code"]
        )
        self.timeouts = counter(
            "timeouts", "Calls cut by a timeout", ["pipeline", "policy", "code"]
        )
        self.fallbacks = counter("fallbacks", "Fallbacks used", ["pipeline", "policy"])
        self.hedges = counter("hedges", "Hedged attempts launched", ["pipeline", "policy"])
        self.transitions = counter(
            "circuit_transitions", "Circuit breaker state changes", ["breaker", "to_state"]
        )
        self.state = prom.Gauge(
            f"{p}_circuit_state",
            "Circuit breaker state (0 closed, 1 open, 2 half-open)",
            ["breaker"],
            registry=reg,
        )
        self.rate_limited = counter(
            "rate_limited", "Requests refused by an inbound rate limit", ["policy"]
        )
        self.quota_warnings = counter(
            "quota_warnings", "Keys that crossed a rate limit's warning share", ["policy"]
        )
        self.rate_limit_fallbacks = counter(
            "rate_limit_fallbacks", "Times the rate-limit store was bypassed", ["policy", "mode"]
        )
        self.rate_limit_fallback = prom.Gauge(
            f"{p}_rate_limit_fallback_engaged",
            "1 while rate limits are decided without the shared store",
            ["policy"],
            registry=reg,
        )

    def __call__(self, event: Event) -> None:
        """Record ``event``."""
        pipeline = event.pipeline or ""
        if isinstance(event, RetryScheduledEvent):
            code = event.code.wire if event.code else ""
            self.retries.labels(pipeline, event.policy, code).inc()
        elif isinstance(event, RetryGaveUpEvent):
            self.gave_up.labels(pipeline, event.policy, event.reason).inc()
        elif isinstance(event, RetryBudgetExhaustedEvent):
            self.budget.labels(pipeline, event.policy).inc()
        elif isinstance(event, CallRejectedEvent):
            self.rejections.labels(pipeline, event.policy, event.code.wire).inc()
        elif isinstance(event, TimeoutEvent):
            self.timeouts.labels(pipeline, event.policy, event.code.wire).inc()
        elif isinstance(event, FallbackUsedEvent):
            self.fallbacks.labels(pipeline, event.policy).inc()
        elif isinstance(event, HedgeLaunchedEvent):
            self.hedges.labels(pipeline, event.policy).inc()
        elif isinstance(event, CircuitStateChangedEvent):
            self.transitions.labels(event.policy, event.to_state).inc()
            self.state.labels(event.policy).set(_STATE_VALUE.get(event.to_state, -1))
        elif isinstance(event, RateLimitedEvent):
            self.rate_limited.labels(event.policy).inc()
        elif isinstance(event, QuotaWarningEvent):
            self.quota_warnings.labels(event.policy).inc()
        elif isinstance(event, RateLimitFallbackEvent):
            if event.engaged:
                self.rate_limit_fallbacks.labels(event.policy, event.mode).inc()
            self.rate_limit_fallback.labels(event.policy).set(1 if event.engaged else 0)
